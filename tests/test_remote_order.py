"""Orders sized for the store: default block geometry local vs remote, states interchangeable between them, and
the warning a global shuffle over an object store gives. A real S3 server (moto) on 127.0.0.1."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("obstore")
pytest.importorskip("moto")

import npyfeed
from npyfeed.errors import ConfigError
from npyfeed.order.orders import block_geometry
from servers import MotoS3

BUCKET = "npyfeed-order"
ROWS, COLS = 20_000, 64  # 256-byte rows, 5 MiB: several local blocks, one remote block


@pytest.fixture(scope="module", autouse=True)
def bucket(s3: MotoS3) -> None:
    s3.client().create_bucket(Bucket=BUCKET)


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
    assert block_geometry(local.order) == ((1 << 20) // row, 16)  # unchanged: 1 MiB blocks, 16 per window
    remote = npyfeed.Loader(url, 512, shuffle="block", seed=0)
    block, window = block_geometry(remote.order)
    assert block == (8 << 20) // row and window == 4
    assert 3 * block * window * row <= 96 << 20  # three windows fit the default read-ahead pool
    bigger = npyfeed.Loader(url, 512, shuffle="block", seed=0, storage_options={"prefetch_bytes": 1 << 30})
    assert block_geometry(bigger.order) == (block, 16)
    tiny = npyfeed.Loader(url, 512, shuffle="block", seed=0, storage_options={"prefetch_bytes": 6 << 20})
    assert block_geometry(tiny.order) == ((1 << 20) // row, 2)  # smaller blocks: three windows of two still fit
    given = npyfeed.Loader(url, 512, shuffle="block", seed=0, block_rows=100)
    assert block_geometry(given.order) == (100, 4)  # what the user gives is kept


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
    assert block_geometry(second.order) != block_geometry(first.order)  # the defaults differ, and so would the orders
    second.set_state(state)
    assert block_geometry(second.order) == block_geometry(first.order)  # the saved geometry was adopted
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
    assert block_geometry(explicit.order)[0] == 999


def test_a_failed_set_state_keeps_the_default_geometry(same_files: tuple[str, str, np.ndarray], tmp_path: Path) -> None:
    path, url, _ = same_files
    state = npyfeed.Loader(path, 512, shuffle="block", seed=3).get_state()
    remote = npyfeed.Loader(url, 512, shuffle="block", seed=3)
    before = block_geometry(remote.order)
    with pytest.raises(ConfigError, match="other data"):
        remote.set_state({**state, "fingerprint": "0" * 16})
    assert block_geometry(remote.order) == before


# -- the warning for a global shuffle over an object store ----------------------------------------------------------
def _upload_rows(s3: MotoS3, key: str, row_bytes: int, rows: int = 4000) -> str:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.zeros((rows, row_bytes), np.uint8))
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())
    return f"s3://{BUCKET}/{key}"


# Small requests and no merging across gaps: what a multi-GB object with the default options looks like, at test
# scale.
SCALED = {"request_bytes": 4096, "gap_bytes": 0}


def test_global_shuffle_of_small_rows_warns_once_with_the_request_rate(s3: MotoS3) -> None:
    url = _upload_rows(s3, "warn/small.npy", 1024)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = npyfeed.Loader(url, 16, shuffle=True, seed=0, storage_options=SCALED)
        assert sum(len(b) for b in loader) == 4000  # a whole epoch: no warning per batch
    assert [w.category for w in caught] == [npyfeed.RemoteShuffleWarning]
    assert caught[0].filename == __file__  # it points at the Loader(...) line
    message = str(caught[0].message)
    found = re.fullmatch(
        rf"global shuffle of {re.escape(url)}: rows of 1,024 B, about (\d+) requests per batch of 16 \(([\d.]+) rows "
        r"per request\), ~([\d,]+) requests per epoch; shuffle='block' reads 3.91 MiB blocks in requests of up to "
        r"4 KiB, ~1,000 requests per epoch \(silence with warnings.filterwarnings\('ignore', "
        r"category=npyfeed.RemoteShuffleWarning\)\)",
        message,
    )
    assert found is not None, message
    estimate = int(found[3].replace(",", ""))
    stats = loader.source.arrays[0].storage.client.stats  # type: ignore[attr-defined]
    assert 0.75 * estimate <= stats.requests <= 1.25 * estimate  # what the epoch cost, as announced
    assert estimate > 2 * 1000
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=npyfeed.RemoteShuffleWarning)  # the standard way to silence it
        npyfeed.Loader(url, 16, shuffle=True, seed=0, storage_options=SCALED)


def test_no_warning_where_a_global_shuffle_costs_no_more_requests(
    s3: MotoS3, same_files: tuple[str, str, np.ndarray]
) -> None:
    small = _upload_rows(s3, "warn/small.npy", 1024)
    large = _upload_rows(s3, "warn/large.npy", 4096)
    path, url, _ = same_files
    with pytest.warns(npyfeed.RemoteShuffleWarning):
        npyfeed.Loader(small, 16, shuffle=True, seed=0, storage_options=SCALED)  # the case that warns, and:
    # filterwarnings = error: any warning below fails the test.
    npyfeed.Loader(large, 16, shuffle=True, seed=0, storage_options=SCALED)  # a row fills a request: same requests
    npyfeed.Loader(small, 16, shuffle="block", seed=0, storage_options=SCALED)  # not a global shuffle
    npyfeed.Loader(small, 16, shuffle=True, seed=0, storage_options={**SCALED, "gap_bytes": 1 << 20})  # merged
    npyfeed.Loader(path, 16, shuffle=True, seed=0, io_hints=False)  # a local file
    npyfeed.Loader(url, 512, shuffle=True, seed=0, io_hints=False)  # rows merge across 256 KiB gaps
    with pytest.warns(npyfeed.RemoteShuffleWarning, match="rows of 256 B"):
        npyfeed.Loader(url, 512, shuffle=True, seed=0, io_hints=False, storage_options={"gap_bytes": 0})  # they don't


def test_a_default_block_shuffle_fetches_each_byte_once(tmp_path: Path) -> None:
    """Three windows fit the read-ahead pool: with room for two, pieces of the window still being read were
    evicted by the hints of reads running ahead, and fetched again (1.25x the bytes of an epoch). A label column's
    blocks (8 KiB here) are fetched once per window too: left to the gathers, each batch fetched whole blocks of
    labels for a few of their rows (1.06x an epoch's bytes with 1 KiB rows, 1.13x here)."""
    from servers import RangeServer

    rows, row_bytes = 12_288, 1024  # 12 MiB against a 6 MiB pool: 1 MiB blocks, 2 per window
    x = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.uint8, (rows, row_bytes))
    x[:, :8] = np.arange(rows, dtype="<i8").view(np.uint8).reshape(rows, 8)
    x.flush()
    np.save(tmp_path / "y.npy", np.arange(rows, dtype=np.int64))
    with RangeServer(tmp_path) as server:
        options = {"prefetch_bytes": 6 << 20, "request_bytes": 256 << 10}
        urls = (f"{server.url}/x.npy", f"{server.url}/y.npy")
        loader = npyfeed.Loader(urls, 128, shuffle="block", seed=3, storage_options=options)
        assert block_geometry(loader.order) == (1016, 2)  # 1 MiB blocks of 1 KiB rows and 8-byte labels
        ids, labels = [], []
        for xb, yb in loader:
            ids.append(np.ascontiguousarray(xb[:, :8]).view("<i8").ravel())
            labels.append(yb)
        stats = loader.source.arrays[0].storage.client.stats  # type: ignore[attr-defined]
    got = np.concatenate(ids)
    assert np.array_equal(got, np.concatenate(labels))
    assert np.array_equal(np.sort(got), np.arange(rows)) and not np.array_equal(got, np.arange(rows))
    delivered = rows * (row_bytes + 8)
    assert stats.bytes <= 1.01 * delivered, stats.bytes / delivered  # the headers' reads are in it too


def test_an_object_read_in_order_reads_itself_ahead(tmp_path: Path) -> None:
    """In sequential mode a gather that continues an earlier one reads on, in whole-record pieces of up to
    ``request_bytes``, half the pool ahead: later gathers copy from those pieces. A gather that continues nothing
    (the first, a sharded loader's) reads nothing ahead: a shard fetches its own rows, not its neighbours'."""
    from npyfeed.storage.object_store import ObjectFile
    from servers import RangeServer

    rows, row_bytes = 4096, 1000  # records not a divisor of request_bytes: pieces end on record boundaries
    x = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.uint8, (rows, row_bytes))
    x[:, :8] = np.arange(rows, dtype="<i8").view(np.uint8).reshape(rows, 8)
    x.flush()
    np.save(tmp_path / "y.npy", np.arange(rows, dtype=np.int64))
    base = int(np.load(tmp_path / "x.npy", mmap_mode="r").offset)
    kib = 1 << 10
    with RangeServer(tmp_path) as server:
        f = ObjectFile(f"{server.url}/x.npy", storage_options={"request_bytes": 64 * kib, "prefetch_bytes": 512 * kib})
        f.advise("sequential")
        out = np.empty((64, row_bytes), np.uint8)
        f.gather(base, row_bytes, np.arange(0, 64), out)
        assert f.read_ahead.pieces == []  # the first gather continues nothing
        f.gather(base, row_bytes, np.arange(64, 128), out)
        piece = 65 * row_bytes  # 65 whole records fit 64 KiB; 4 pieces fill half the 512 KiB pool
        start = base + 128 * row_bytes
        assert f.read_ahead.pieces == [(start + k * piece, start + (k + 1) * piece) for k in range(4)]
        before = server.requests
        for first in range(128, 128 + 12 * 16, 16):  # 12 gathers inside the pieces: copied, no request of their own
            got = np.empty((16, row_bytes), np.uint8)
            f.gather(base, row_bytes, np.arange(first, first + 16), got)
            assert np.array_equal(got, x[first : first + 16])
        # The 4 pieces (some may reach the server only now) and 3 more as the gathers moved on; 12 without the pool.
        assert server.requests - before <= 7, server.requests - before
        f.advise("random")
        held = set(f.read_ahead.pieces)
        f.gather(base, row_bytes, np.arange(400, 407), np.empty((7, row_bytes), np.uint8))
        assert set(f.read_ahead.pieces) <= held  # not in sequential mode: nothing more ahead

        options = {"request_bytes": 64 * kib, "prefetch_bytes": 1 << 20, "gap_bytes": 0}
        urls = (f"{server.url}/x.npy", f"{server.url}/y.npy")
        loader = npyfeed.Loader(urls, 64, shuffle=False, storage_options=options)
        got_x, got_y = zip(*[(np.ascontiguousarray(a[:, :8]).view("<i8").ravel(), b) for a, b in loader], strict=True)
        assert np.array_equal(np.concatenate(got_x), np.arange(rows))
        assert np.array_equal(np.concatenate(got_y), np.arange(rows))
        stats = loader.source.arrays[0].storage.client.stats  # type: ignore[attr-defined]
        delivered = rows * (row_bytes + 8)
        assert stats.bytes <= 1.01 * delivered, stats.bytes / delivered
        fetched = stats.bytes
        shard = npyfeed.Loader(urls, 64, shuffle=False, shard=(0, 2), storage_options=options)
        ids = np.concatenate([np.ascontiguousarray(a[:, :8]).view("<i8").ravel() for a, _ in shard])
        assert ids.size == rows // 2
        assert stats.bytes - fetched <= 0.51 * delivered, (stats.bytes - fetched) / delivered
