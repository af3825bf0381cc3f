"""Orders sized for the store: default block geometry local vs remote, states interchangeable between them, and
the warning a global shuffle over an object store gives. A real S3 server (moto) on 127.0.0.1."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("obstore")
pytest.importorskip("moto")

import npyfeed
from npyfeed.errors import ConfigError
from servers import MotoS3, environment

BUCKET = "npyfeed-order"
ROWS, COLS = 20_000, 64  # 256-byte rows, 5 MiB: several local blocks, one remote block


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    with MotoS3() as server, environment(server.env):
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture(scope="module")
def same_files(s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((ROWS, COLS)).astype(np.float32)
    x[:, 0] = np.arange(ROWS)  # the row id
    path = tmp_path_factory.mktemp("local") / "x.npy"
    np.save(path, x)
    s3.client().put_object(Bucket=BUCKET, Key="x.npy", Body=path.read_bytes())
    return str(path), f"s3://{BUCKET}/x.npy", x


def test_default_block_geometry_is_sized_for_the_store(same_files: tuple[str, str, np.ndarray]) -> None:
    path, url, _ = same_files
    row = COLS * 4
    local = npyfeed.Loader(path, 512, shuffle="block", seed=0)
    assert local._block_geometry() == ((1 << 20) // row, 16)  # unchanged: 1 MiB blocks, 16 per window
    remote = npyfeed.Loader(url, 512, shuffle="block", seed=0)
    block, window = remote._block_geometry()
    assert block == (8 << 20) // row and window == 6
    assert 2 * block * window * row <= 96 << 20  # two windows fit the default read-ahead pool
    bigger = npyfeed.Loader(url, 512, shuffle="block", seed=0, storage_options={"prefetch_bytes": 1 << 30})
    assert bigger._block_geometry() == (block, 16)
    tiny = npyfeed.Loader(url, 512, shuffle="block", seed=0, storage_options={"prefetch_bytes": 1 << 20})
    assert tiny._block_geometry() == (block, 2)
    given = npyfeed.Loader(url, 512, shuffle="block", seed=0, block_rows=100)
    assert given._block_geometry() == (100, 6)  # what the user gives is kept


@pytest.mark.parametrize("direction", ["local->remote", "remote->local"])
def test_block_shuffle_state_resumes_across_local_and_remote(
    same_files: tuple[str, str, np.ndarray], direction: str
) -> None:
    path, url, x = same_files
    saver, loader = (path, url) if direction == "local->remote" else (url, path)
    first = npyfeed.Loader(saver, 512, shuffle="block", seed=3)
    it = iter(first)
    for _ in range(7):
        next(it)
    state = first.get_state()
    expected = list(it)
    second = npyfeed.Loader(loader, 512, shuffle="block", seed=3)
    assert second._block_geometry() != first._block_geometry()  # the defaults differ, and so would the orders
    second.set_state(state)
    assert second._block_geometry() == first._block_geometry()  # the saved geometry was adopted
    got = list(second)
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected, strict=True):
        assert np.array_equal(a, b)
    ids = np.concatenate([b[:, 0] for b in got]).astype(np.int64)
    assert np.unique(ids).size == ids.size == ROWS - 7 * 512  # the rest of the epoch, every row once
    assert np.array_equal(got[0], x[got[0][:, 0].astype(np.int64)])
    assert second.get_state()["order"] == state["order"]
    # A geometry given explicitly is the user's: a state with another one is refused, and nothing changes.
    explicit = npyfeed.Loader(loader, 512, shuffle="block", seed=3, block_rows=999)
    with pytest.raises(ConfigError, match=re.escape("block geometry")):
        explicit.set_state(state)
    assert explicit._block_geometry()[0] == 999


def test_a_failed_set_state_keeps_the_default_geometry(same_files: tuple[str, str, np.ndarray], tmp_path: Path) -> None:
    path, url, _ = same_files
    state = npyfeed.Loader(path, 512, shuffle="block", seed=3).get_state()
    remote = npyfeed.Loader(url, 512, shuffle="block", seed=3)
    before = remote._block_geometry()
    with pytest.raises(ConfigError, match="other data"):
        remote.set_state({**state, "fingerprint": "0" * 16})
    assert remote._block_geometry() == before
