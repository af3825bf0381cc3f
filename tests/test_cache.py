"""The local chunk cache for remote objects (``storage_options={"cache_dir": ..., "cache_size": ...}``).

Objects are served by the range server of ``servers.py`` on 127.0.0.1, which counts the requests it answers (HEAD
and GET), so "the second epoch comes from the cache" is a count of zero. ``np.load`` of the same bytes is the oracle.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("obstore")

import npyfeed
import npyfeed.storage.cache.options
from npy_cases import arrays, check_key, row_keys, write
from npyfeed.errors import ConfigError, ObjectChangedError
from npyfeed.storage.cache import claims
from npyfeed.storage.cache.directory import TRAILER, ChunkDirectory
from npyfeed.storage.cache.options import CacheOptions, split_cache_options
from servers import FaultProxy, MotoS3, RangeServer, environment

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RangeServer, Path]]:
    root = tmp_path_factory.mktemp("served")
    with RangeServer(root) as server:
        yield server, root


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks under the 64 KiB bound, so small arrays span many of them (the chunk geometry under test, at test
    speed). The bound itself is tested at its real value (test_chunk_and_cache_sizes_are_bounded)."""
    monkeypatch.setattr(npyfeed.storage.cache.options, "MIN_CHUNK_BYTES", 64)


def options(cache: Path, size: int | str, chunk: int) -> dict[str, object]:
    # One range request per chunk, so a request count is a chunk count.
    return {"cache_dir": str(cache), "cache_size": size, "cache_chunk_bytes": chunk, "request_bytes": 1 << 20}


def chunk_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file() and re.fullmatch(r"[0-9a-f]{16}-\d+-\d+", p.name))


def disk_bytes(cache: Path) -> int:
    """Bytes of the cache's files, but for its marker (CACHEDIR.TAG, a fixed few hundred bytes)."""
    return sum(p.stat().st_size for p in cache.rglob("*") if p.is_file() and p.name != "CACHEDIR.TAG")


def epoch(loader: npyfeed.Loader) -> np.ndarray:
    return np.concatenate([np.asarray(b) for b in loader])


def same_rows(rows: np.ndarray, x: np.ndarray) -> bool:
    """The same multiset of rows (every row exactly once), compared as bytes."""
    a = np.ascontiguousarray(rows).reshape(len(rows), -1).view(np.uint8)
    b = np.ascontiguousarray(x).reshape(len(x), -1).view(np.uint8)
    if a.shape != b.shape:
        return False
    as_void = f"V{a.shape[1]}"
    return np.array_equal(np.sort(a.view(as_void).ravel()), np.sort(b.view(as_void).ravel()))


# -- options --------------------------------------------------------------------------------------------------------
def test_sizes_and_options_are_validated(tmp_path: Path, served: tuple[RangeServer, Path]) -> None:
    # Sizes in npyfeed.arguments' grammar (its own tests cover it): SI and IEC units, NumPy ints.
    for size, expected in (
        ("20GB", 20 * 10**9),
        (" 1.5 GiB", 3 << 29),
        ("512mib", 512 << 20),
        (np.int64(1 << 20), 1 << 20),
    ):
        cache, _ = split_cache_options({"cache_dir": str(tmp_path), "cache_size": size, "cache_chunk_bytes": "64KiB"})
        assert cache is not None and cache.size == expected
    for bad in ("20 parsecs", "GB", "-1GB", 0, -5, True, 1.5, None):
        with pytest.raises(ConfigError, match=re.escape("storage_options['cache_size'] must be")):
            split_cache_options({"cache_dir": str(tmp_path), "cache_size": bad})
    cache, rest = split_cache_options({"cache_dir": str(tmp_path), "cache_size": "8MiB", "region": "x"})
    assert cache == CacheOptions(str(tmp_path), 8 << 20, 4 << 20)
    assert rest == {"region": "x"}
    assert split_cache_options({"region": "x"}) == (None, {"region": "x"})
    with pytest.raises(ConfigError, match="smaller than one chunk"):
        split_cache_options({"cache_dir": str(tmp_path), "cache_size": "1MB"})  # 4 MiB chunks by default
    with pytest.raises(ConfigError, match=re.escape("storage_options['cache_dir'] must be a directory path")):
        split_cache_options({"cache_size": "1GB"})
    default = split_cache_options({"cache_dir": str(tmp_path / "new" / "dir")})[0]
    assert default is not None and default.size > 0  # half the free space of the filesystem
    a_file = tmp_path / "a_file"
    a_file.write_bytes(b"")
    server, root = served
    np.save(root / "opts.npy", np.arange(10))
    with pytest.raises(ConfigError, match=re.escape(f"{str(a_file / 'cache')!r}: cannot be used as a cache dir")):
        npyfeed.open(f"{server.url}/opts.npy", storage_options={"cache_dir": str(a_file / "cache")})
    with pytest.raises(ConfigError, match=re.escape("storage_options['cache_chunk_bytes'] must be")):
        bad = {"cache_dir": str(tmp_path), "cache_chunk_bytes": "x"}
        npyfeed.Loader(f"{server.url}/opts.npy", 2, storage_options=bad)


# -- exact bytes ----------------------------------------------------------------------------------------------------
_names = itertools.count()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_reads_through_the_cache_match_np_load(
    served: tuple[RangeServer, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject, small_chunks: None
) -> None:
    server, root = served
    array = data.draw(arrays(min_rows=1))
    how = data.draw(st.sampled_from(["np.save", (1, 0), (3, 0)]))
    name = f"prop_{next(_names)}.npy"
    write(root / name, array, how)
    expected = np.load(io.BytesIO((root / name).read_bytes()))
    # Chunks smaller than a row, unaligned to rows, or larger than the file; caches of one chunk up to all of it.
    chunk = data.draw(st.sampled_from([64, 100, 1000, 1 << 16]))
    size = data.draw(st.sampled_from([chunk + TRAILER.size, 3 * (chunk + TRAILER.size), 1 << 24]))
    cache = tmp_path_factory.mktemp("cache")
    opts = options(cache, size, chunk)
    for _ in range(2):  # cold, then from the chunks left on disk
        remote = npyfeed.open(f"{server.url}/{name}", storage_options=opts)
        assert (remote.shape, remote.dtype) == (expected.shape, expected.dtype)
        with warnings.catch_warnings():  # a cache of one chunk read at random thrashes, and says so
            warnings.filterwarnings("ignore", "npyfeed cache .* evicted before they are used again", RuntimeWarning)
            check_key(remote, expected, data.draw(row_keys(expected.shape)))
        assert disk_bytes(cache) <= size + 64  # + the lock and the counter


# -- reuse across epochs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shuffle", ["none", "block", "global"])
def test_a_second_epoch_makes_no_requests(
    served: tuple[RangeServer, Path], tmp_path: Path, shuffle: str, small_chunks: None
) -> None:
    server, root = served
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6000, 5)).astype(np.float32)
    y = np.arange(6000, dtype=np.int64)
    np.save(root / f"e_x_{shuffle}.npy", x)
    np.save(root / f"e_y_{shuffle}.npy", y)
    source = {"x": f"{server.url}/e_x_{shuffle}.npy", "y": f"{server.url}/e_y_{shuffle}.npy"}
    opts = options(tmp_path, "10MB", 16 << 10)
    geometry = {"block_rows": 100, "window_blocks": 4} if shuffle == "block" else {}
    loader = npyfeed.Loader(source, 250, shuffle=shuffle, seed=4, storage_options=opts, **geometry)
    counts = []
    for _ in range(2):
        before = server.requests
        batches = list(loader)
        counts.append(server.requests - before)
        ids = np.concatenate([b["y"] for b in batches])
        assert np.array_equal(np.sort(ids), y)  # every row exactly once
        for b in batches:
            assert np.array_equal(b["x"], x[b["y"]])
    chunks = -(-(x.nbytes + 128) // (16 << 10)) + -(-(y.nbytes + 128) // (16 << 10))
    assert counts[0] == chunks, counts  # each chunk fetched once, whole
    assert counts[1] == 0, counts
    before = server.requests
    again = npyfeed.Loader(source, 250, shuffle=shuffle, seed=5, storage_options=opts)
    assert np.array_equal(np.sort(np.concatenate([b["y"] for b in again])), y)
    assert server.requests - before == 2  # one HEAD per object; headers and rows from the cache
    assert len(chunk_files(tmp_path)) == chunks


@pytest.mark.parametrize("shuffle", ["none", "block", "global"])
def test_a_cache_smaller_than_the_data_stays_under_its_limit(
    served: tuple[RangeServer, Path], tmp_path: Path, shuffle: str, small_chunks: None
) -> None:
    server, root = served
    x = np.random.default_rng(1).integers(0, 1 << 62, (20000, 3), dtype=np.int64)  # 480 KB
    np.save(root / f"small_{shuffle}.npy", x)
    limit = 100_000
    opts = options(tmp_path, limit, 8 << 10)
    loader = npyfeed.Loader(
        f"{server.url}/small_{shuffle}.npy",
        512,
        shuffle=shuffle,
        seed=2,
        storage_options=opts,
        **({"block_rows": 300} if shuffle == "block" else {}),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            rows = epoch(loader)
            assert same_rows(rows, x)
            assert disk_bytes(tmp_path) <= limit + 64, disk_bytes(tmp_path)
    thrashed = [str(w.message) for w in caught if "evicted before they are used again" in str(w.message)]
    assert all(issubclass(w.category, npyfeed.CacheWarning) for w in caught if "npyfeed cache" in str(w.message))
    if shuffle == "global":  # random rows over data 5x the cache: whole chunks for single rows, and it says so
        assert len(thrashed) == 1 and "larger than cache_size (0.1 MB)" in thrashed[0], thrashed
    elif shuffle == "none":
        assert not thrashed, thrashed
    cache = loader.source.arrays[0].storage.cache.cache  # type: ignore[attr-defined]
    assert cache.evicted > 0 and disk_bytes(tmp_path) <= limit + 64
    if shuffle == "none":
        assert np.array_equal(rows, x)


def test_a_cached_global_shuffle_is_not_warned_about_requests(
    served: tuple[RangeServer, Path], tmp_path: Path, small_chunks: None
) -> None:
    server, root = served
    x = np.arange(20000, dtype=np.int64)
    np.save(root / "warned.npy", x)
    url = f"{server.url}/warned.npy"
    with pytest.warns(npyfeed.RemoteShuffleWarning, match="requests per batch"):
        npyfeed.Loader(url, 256, shuffle=True, storage_options={"gap_bytes": 0})  # a request per row
    cached = npyfeed.Loader(url, 256, shuffle=True, storage_options={"gap_bytes": 0, **options(tmp_path, "1MB", 8192)})
    before = server.requests
    assert same_rows(epoch(cached), x)  # no warning: chunks fetched once each
    assert server.requests - before == -(-(x.nbytes + 128) // 8192)


def test_a_replaced_object_is_never_served_from_old_chunks(
    served: tuple[RangeServer, Path], tmp_path: Path, small_chunks: None
) -> None:
    server, root = served
    x = np.arange(30000, dtype=np.int32)
    np.save(root / "replaced.npy", x)
    url = f"{server.url}/replaced.npy"
    opts = options(tmp_path, "1MB", 8 << 10)
    old = npyfeed.Loader(url, 1000, shuffle="block", seed=0, block_rows=500, storage_options=opts)
    assert np.array_equal(np.sort(epoch(old)), x)
    old_chunks = chunk_files(tmp_path)
    time.sleep(0.01)
    np.save(root / "replaced.npy", x[::-1] * 3)  # same size, new content, new ETag
    new = npyfeed.open(url, storage_options=opts)
    assert np.array_equal(new[:], x[::-1] * 3)  # never the old bytes
    assert not set(old_chunks) & set(chunk_files(tmp_path))  # the old version's chunks are gone
    with pytest.raises(ObjectChangedError, match=re.escape(f"{url}: the object was replaced")):
        epoch(old)  # as without a cache: the version it opened is no longer there


def test_damaged_chunk_files_are_detected_and_fetched_again(
    served: tuple[RangeServer, Path], tmp_path: Path, small_chunks: None
) -> None:
    server, root = served
    x = np.random.default_rng(3).standard_normal((4000, 4))
    np.save(root / "damaged.npy", x)
    url = f"{server.url}/damaged.npy"
    opts = options(tmp_path, "10MB", 8 << 10)
    assert np.array_equal(npyfeed.open(url, storage_options=opts)[:], x)
    files = chunk_files(tmp_path)
    assert len(files) == 16
    with files[1].open("r+b") as f:
        f.truncate(5000)  # truncated
    for damaged in (files[2], files[6]):
        with damaged.open("r+b") as f:  # as if written before the machine rebooted: checked by CRC at first use
            f.seek(-16, os.SEEK_END)
            f.write(b"\1" * 16)
    with files[2].open("r+b") as f:
        f.seek(100)
        flipped = bytes(255 - b for b in f.read(8))
        f.seek(100)
        f.write(flipped)  # same length, flipped bytes (data lost in a crash): only the CRC sees it
    files[3].write_bytes(files[4].read_bytes())  # another chunk's bytes under this name: the trailer's key differs
    files[5].unlink()
    files[5].with_name(files[5].name + ".part").write_bytes(b"left by a killed writer")  # unlocked: an orphan
    before = server.requests
    again = npyfeed.open(url, storage_options=opts)
    assert np.array_equal(again[:], x)
    assert server.requests - before == 1 + 4  # a HEAD, and the four bad chunks fetched again
    assert chunk_files(tmp_path) == files and not list(tmp_path.rglob("*.part"))
    boot = files[0].read_bytes()[-16:]
    assert boot != b"\1" * 16 and files[6].read_bytes()[-16:] == boot  # checked: trusted for the rest of this boot
    before = server.requests
    assert np.array_equal(npyfeed.open(url, storage_options=opts)[:], x)
    assert server.requests - before == 1


def wait_until(done: Callable[[], bool], seconds: float) -> bool:
    """Poll ``done`` until it holds or ``seconds`` pass (no fixed sleep: as fast as the machine allows)."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_cache_read_ahead_stops_when_the_consumer_leaves(tmp_path: Path) -> None:
    """The chunk cache's read-ahead jobs belong to the read that hinted them: when its consumer leaves, jobs not
    started do nothing and running ones are cancelled, their claims given up (they fetched the rest of their
    windows, tens to hundreds of GETs, for seconds after the consumer left). Idle within one request timeout; the
    next epoch is exact, its gathers fetching the chunks a cancelled job had promised, and no claim is left."""
    rows, row_bytes = 32768, 1024  # 32 MiB of 64 KiB chunks; 4 MiB windows: the first read hints 128 chunks ahead
    x = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.uint8, (rows, row_bytes))
    x[:, :8] = np.arange(rows, dtype="<i8").view(np.uint8).reshape(rows, 8)
    x.flush()
    slots, timeout = 4, 10.0
    cache = tmp_path / "cache"
    opts = {**options(cache, "256MiB", 64 << 10), "max_concurrency": slots, "request_bytes": 64 << 10}
    opts |= {"prefetch_bytes": 64 << 20, "timeout": timeout}
    with RangeServer(tmp_path, delay=0.01) as server:
        loader = npyfeed.Loader(
            f"{server.url}/x.npy", 128, shuffle="block", seed=1, block_rows=64, window_blocks=64, storage_options=opts
        )
        storage = loader.source.arrays[0].storage  # type: ignore[attr-defined]
        for _ in loader:
            break  # the generator is closed: its reads, and the read-ahead they hinted, are told to stop
        left = server.requests

        def idle() -> bool:
            return storage.cache.ahead == 0 and storage.client.stats.in_flight == 0

        assert wait_until(idle, timeout), (storage.cache.ahead, storage.client.stats.in_flight)
        after = server.requests - left
        # Those in flight when it left, and a few handed a freed slot while the cancellations were delivered.
        assert after <= 2 * slots, after
        assert idle() and server.requests - left == after  # nothing left to send any
        assert not [p for p in cache.rglob("*.part")]  # cancelled jobs gave their claims up
        ids = np.concatenate([np.ascontiguousarray(b[:, :8]).view("<i8").ravel() for b in loader])
    assert np.array_equal(np.sort(ids), np.arange(rows))


def test_cache_read_ahead_hinted_by_a_read_that_is_left_is_cancelled(tmp_path: Path) -> None:
    """Read-ahead jobs hinted inside a read carry its Stop to the read-ahead threads: once it is set (the consumer
    left), the job fetching stops within the requests in flight and the jobs queued behind it send nothing (they
    fetched every chunk asked for: ~500 GETs here). A gather afterwards fetches what they left."""
    from npyfeed.storage.deadlines import Stop, read_scope
    from npyfeed.storage.object_store import ObjectFile

    x = np.random.default_rng(7).integers(0, 255, (32768, 1024), dtype=np.uint8)  # 32 MiB: 512 chunks of 64 KiB
    np.save(tmp_path / "x.npy", x)
    slots, timeout = 4, 10.0
    cache = tmp_path / "cache"
    opts = {**options(cache, "256MiB", 64 << 10), "max_concurrency": slots, "request_bytes": 64 << 10}
    opts |= {"prefetch_bytes": 64 << 20, "timeout": timeout}
    with RangeServer(tmp_path, delay=0.01) as server:
        f = ObjectFile(f"{server.url}/x.npy", storage_options=opts)
        assert f.cache is not None
        stop, began = Stop(), server.requests
        with read_scope(stop):
            f.will_need([(0, f.size)])
        assert wait_until(lambda: server.requests > began + slots, timeout)  # the jobs are fetching
        stop.set()
        left = server.requests

        def idle() -> bool:
            return f.cache is not None and f.cache.ahead == 0 and f.client.stats.in_flight == 0

        assert wait_until(idle, timeout), (f.cache.ahead, f.client.stats.in_flight)
        after = server.requests - left
        assert after <= 2 * slots, after  # those in flight, and a few handed a slot as cancellations arrived
        assert server.requests - left == after and not list(cache.rglob("*.part"))  # nothing left, no claim
        out = np.empty_like(x)
        f.gather(128, 1024, np.arange(len(x)), out)
        assert np.array_equal(out, x)


def test_s3_epochs_from_the_cache(moto_server: MotoS3, tmp_path: Path, small_chunks: None) -> None:
    x = np.random.default_rng(6).standard_normal((5000, 6)).astype(np.float32)
    with environment(moto_server.env):
        s3 = moto_server
        s3.client().create_bucket(Bucket="cache-test")
        s3.client().put_object(Bucket="cache-test", Key="x.npy", Body=_npy(x))
        url = "s3://cache-test/x.npy"
        opts = options(tmp_path, "1MB", 32 << 10)
        loader = npyfeed.Loader(url, 128, shuffle="global", seed=1, storage_options=opts)
        stats = loader.source.arrays[0].storage.client.stats  # type: ignore[attr-defined]
        gets = []
        for _ in range(2):
            before = stats.requests
            assert same_rows(epoch(loader), x)
            gets.append(stats.requests - before)
        assert gets == [-(-(x.nbytes + 128) // (32 << 10)), 0]  # whole chunks once, then nothing
        s3.client().put_object(Bucket="cache-test", Key="x.npy", Body=_npy(x + 1))
        assert np.array_equal(npyfeed.open(url, storage_options=opts)[:], x + 1)  # the new ETag's chunks


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# -- processes ------------------------------------------------------------------------------------------------------
_READER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import npyfeed
    url, cache, out, seed = sys.argv[1:5]
    opts = {"cache_dir": cache, "cache_size": "10MB", "cache_chunk_bytes": 65536, "request_bytes": 1 << 20}
    loader = npyfeed.Loader(url, 100, shuffle=True, seed=int(seed), storage_options=opts)
    np.save(out, np.concatenate(list(loader)))
    """
)


def _reader(url: str, cache: Path, out: Path, seed: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", _READER, url, str(cache), str(out), str(seed)], env=env)


def test_two_processes_share_one_cache(served: tuple[RangeServer, Path], tmp_path: Path) -> None:
    server, root = served
    x = np.random.default_rng(4).integers(0, 1 << 30, (64000, 5), dtype=np.int32)
    np.save(root / "shared.npy", x)
    cache = tmp_path / "cache"
    # A slow link, so the two processes want the same chunks at the same time.
    with FaultProxy(f"127.0.0.1:{server.port}", delay=0.005) as proxy:
        url = f"{proxy.url}/shared.npy"
        before = server.requests
        readers = [_reader(url, cache, tmp_path / f"out{i}.npy", i) for i in range(2)]
        assert [r.wait(120) for r in readers] == [0, 0]
    for i in range(2):
        assert same_rows(np.load(tmp_path / f"out{i}.npy"), x)
    chunks = -(-(x.nbytes + 128) // 65536)
    # Each chunk fetched by one of them; 2 HEADs, and at most 2 header reads.
    assert chunks + 2 <= server.requests - before <= chunks + 4
    assert len(chunk_files(cache)) == chunks and not list(cache.rglob("*.part"))


def test_a_killed_reader_leaves_no_damaged_chunk(served: tuple[RangeServer, Path], tmp_path: Path) -> None:
    server, root = served
    x = np.random.default_rng(5).integers(0, 1 << 30, (160000, 4), dtype=np.int32)
    np.save(root / "killed.npy", x)
    cache = tmp_path / "cache"
    with FaultProxy(f"127.0.0.1:{server.port}", delay=0.2) as proxy:  # slow: the kill lands mid-write
        reader = _reader(f"{proxy.url}/killed.npy", cache, tmp_path / "never.npy", 0)
        deadline = time.monotonic() + 60
        while not list(cache.rglob("*.part")) and time.monotonic() < deadline:
            time.sleep(0.005)
        reader.send_signal(signal.SIGKILL)
        reader.wait(30)
        assert list(cache.rglob("*.part")), "the reader was killed while no chunk was being written"
        opts = {"cache_dir": str(cache), "cache_size": "10MB", "cache_chunk_bytes": 65536}
        a = npyfeed.open(f"{proxy.url}/killed.npy", storage_options=opts)  # the same URL: the same chunks
        assert np.array_equal(a[:], x)
    assert not list(cache.rglob("*.part"))  # the dead writer's claims were taken over


def test_a_cache_that_cannot_be_written_reads_from_the_store(
    served: tuple[RangeServer, Path], tmp_path: Path, small_chunks: None
) -> None:
    server, root = served
    x = np.random.default_rng(7).standard_normal((3000, 3))
    np.save(root / "full.npy", x)
    a = npyfeed.open(f"{server.url}/full.npy", storage_options=options(tmp_path, "10MB", 8192))
    a.storage.cache.directory.write_bytes(b"")  # type: ignore[attr-defined]  # a file where its chunks would go
    with pytest.warns(npyfeed.CacheWarning, match="cannot write a chunk"):
        assert np.array_equal(a[:], x)  # every row from the store instead
    assert np.array_equal(a[::7], x[::7])  # warned once
    assert not chunk_files(tmp_path)


_FEW_FILES = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    import npyfeed
    url, cache, path = sys.argv[1:4]
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))
    opts = {"cache_dir": cache, "cache_size": "30MB", "cache_chunk_bytes": 65536}
    x = np.load(path)
    a = npyfeed.open(url, storage_options=opts)
    rows = np.random.default_rng(0).permutation(len(x))[:3000]
    for _ in range(2):  # chunks fetched, then read from disk
        assert np.array_equal(a[rows], x[rows]), "rows differ"
    """
)


def test_a_batch_over_many_chunks_holds_few_files(served: tuple[RangeServer, Path], tmp_path: Path) -> None:
    server, root = served
    np.save(root / "many.npy", np.random.default_rng(8).integers(0, 255, (1_280_000, 16), dtype=np.uint8))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    args = [f"{server.url}/many.npy", str(tmp_path / "cache"), str(root / "many.npy")]
    done = subprocess.run([sys.executable, "-c", _FEW_FILES, *args], env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    rows = np.random.default_rng(0).permutation(1_280_000)[:3000]  # the rows the child read
    touched = np.unique((128 + rows * 16) // 65536).size
    assert touched > 300  # of the 313 chunks; 200 files allowed
    assert len(chunk_files(tmp_path / "cache")) == touched


# -- the directory alone --------------------------------------------------------------------------------------------
def test_eviction_takes_the_least_recently_used_chunks(tmp_path: Path) -> None:
    cache = ChunkDirectory(CacheOptions(str(tmp_path), 3 * (1000 + TRAILER.size), 1000))
    digest = b"k" * 8
    paths = [tmp_path / ("0" * 32) / f"{'0' * 16}-1000-{k}" for k in range(4)]
    for k, path in enumerate(paths[:3]):
        fd = claims.claim(path)
        assert fd is not None and cache.reserve(1000 + TRAILER.size, path)
        os.pwrite(fd, bytes([k]) * 1000, 0)
        assert cache.publish(fd, path, 1000, digest)
        os.utime(path, ns=(10**18 + k * 10**9, path.stat().st_mtime_ns))
    fd0 = cache.open(paths[0], 1000, digest)  # chunk 0 used last: chunk 1 is now the oldest
    assert fd0 is not None and os.pread(fd0, 1000, 0) == bytes([0]) * 1000
    os.close(fd0)
    assert cache.open(paths[1], 999, digest) is None and paths[1].exists() is False  # wrong length: deleted
    fd = claims.claim(paths[3])
    assert fd is not None
    assert claims.claim(paths[3]) is None  # one writer at a time
    assert cache.reserve(1000 + TRAILER.size, paths[3])
    os.pwrite(fd, b"\3" * 1000, 0)
    assert cache.publish(fd, paths[3], 1000, digest)
    assert [p.exists() for p in paths] == [True, False, True, True]
    assert cache.used() == 3 * (1000 + TRAILER.size)
    assert cache.reserve(1000 + TRAILER.size)  # evicts chunk 2, now the least recently used
    assert [p.exists() for p in paths] == [True, False, False, True]
    assert not cache.reserve(4 * (1000 + TRAILER.size))  # can never fit: refused, nothing else evicted


# -- a private cache that keeps to itself ---------------------------------------------------------------------------
def test_chunk_and_cache_sizes_are_bounded(tmp_path: Path) -> None:
    for chunk, shown in ((1, "1 (1 bytes)"), ("64000", "'64000' (64000 bytes)"), ("2GiB", "'2GiB' (2147483648 bytes)")):
        with pytest.raises(ConfigError) as caught:
            split_cache_options({"cache_dir": str(tmp_path), "cache_chunk_bytes": chunk})
        assert str(caught.value) == (
            f"storage_options['cache_chunk_bytes'] = {shown} is out of bounds: it must be between 65536 (64 KiB) "
            "and 1073741824 (1 GiB) bytes"
        )
    for chunk in (64 << 10, "1GiB"):
        assert split_cache_options({"cache_dir": str(tmp_path), "cache_chunk_bytes": chunk, "cache_size": "2GiB"})[0]
    with pytest.raises(ConfigError, match=re.escape("storage_options['cache_size'] is 65000 bytes, smaller than one")):
        split_cache_options({"cache_dir": str(tmp_path), "cache_chunk_bytes": "64KiB", "cache_size": 65_000})
    with pytest.raises(ConfigError, match=re.escape(f"it must be at least {(64 << 10) + TRAILER.size} bytes")):
        split_cache_options({"cache_dir": str(tmp_path), "cache_chunk_bytes": "64KiB", "cache_size": 65_000})


def test_a_cache_dir_under_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cache = split_cache_options({"cache_dir": "~/.cache/npyfeed", "cache_size": "1GB"})[0]
    assert cache is not None and cache.directory == str(tmp_path / ".cache" / "npyfeed")


_MODES = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import npyfeed
    url, first, second = sys.argv[1:4]
    for umask, cache in ((0o022, first), (0o000, second)):
        os.umask(umask)
        opts = {"cache_dir": cache, "cache_size": "10MB", "cache_chunk_bytes": 65536}
        a = npyfeed.open(url, storage_options=opts)
        assert np.array_equal(a[::3], np.load(sys.argv[4])[::3])
    """
)


def test_directories_are_0700_and_files_0600_whatever_the_umask(
    served: tuple[RangeServer, Path], tmp_path: Path
) -> None:
    server, root = served
    np.save(root / "modes.npy", np.arange(100_000, dtype=np.int64))
    caches = [tmp_path / "a" / "new" / "cache", tmp_path / "b" / "cache"]  # missing parents are made too
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    args = [f"{server.url}/modes.npy", *map(str, caches), str(root / "modes.npy")]
    done = subprocess.run([sys.executable, "-c", _MODES, *args], env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    for cache, top in zip(caches, (tmp_path / "a", tmp_path / "b"), strict=True):
        assert len(chunk_files(cache)) == 13  # 800,128 bytes in chunks of 64 KiB
        made = [top, *top.rglob("*")]
        dirs = [p for p in made if p.is_dir()]
        files = [p for p in made if p.is_file()]
        assert len(dirs) >= 3 and {p.stat().st_mode & 0o777 for p in dirs} == {0o700}, dirs
        assert {p.name for p in files} >= {"CACHEDIR.TAG", ".lock", ".used"}
        assert {(p.name, p.stat().st_mode & 0o777) for p in files} == {(p.name, 0o600) for p in files}


def test_a_cache_dir_others_own_or_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    with pytest.raises(ConfigError) as caught:
        ChunkDirectory(CacheOptions(str(shared), 1 << 30, 1 << 20))
    me = os.geteuid()
    assert f"storage_options['cache_dir'] = {str(shared)!r}: refused as a cache directory" in str(caught.value)
    assert f"owned by uid {me}" in str(caught.value) and "with mode 1777" in str(caught.value)
    assert "expected a directory owned by this user" in str(caught.value)
    assert not list(shared.iterdir())  # nothing written there
    link = tmp_path / "link"
    link.symlink_to(shared)  # a link is followed, and the directory it leads to checked
    with pytest.raises(ConfigError, match="refused as a cache directory"):
        ChunkDirectory(CacheOptions(str(link), 1 << 30, 1 << 20))
    if me == 0:  # root: a directory of another user
        foreign = tmp_path / "foreign"
        foreign.mkdir(0o700)
        os.chown(foreign, 65534, 65534)
    else:
        foreign = Path("/")  # root's, and not writable by others
    with pytest.raises(
        ConfigError, match=f"owned by uid {foreign.stat().st_uid}.* mode 0*{foreign.stat().st_mode & 0o7777:o}"
    ):
        ChunkDirectory(CacheOptions(str(foreign), 1 << 30, 1 << 20))
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)  # a parent anyone can write, not sticky: the directory could be swapped
    with pytest.raises(ConfigError) as caught:
        ChunkDirectory(CacheOptions(str(tmp_path / "open" / "cache"), 1 << 30, 1 << 20))
    assert f"its parent {str(tmp_path / 'open')!r} is owned by uid {me}" in str(caught.value)
    assert "with mode 0777, so another user could replace the cache directory" in str(caught.value)
    ChunkDirectory(CacheOptions(str(shared / "cache"), 1 << 30, 1 << 20))  # a sticky parent (1777, like /tmp)
    assert (shared / "cache").stat().st_mode & 0o7777 == 0o700
    mine = tmp_path / "mine"
    mine.mkdir(0o755)  # others may read the names, not write: accepted, the files themselves are 0600
    mine.chmod(0o755)
    ChunkDirectory(CacheOptions(str(mine), 1 << 30, 1 << 20))
    assert (mine / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55\n")


def test_a_directory_the_cache_did_not_make_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "project"
    other.mkdir()
    (other / "notes.tmp").write_text("mine")
    (other / "data").mkdir()
    with pytest.raises(ConfigError) as caught:
        ChunkDirectory(CacheOptions(str(other), 1 << 30, 1 << 20))
    assert "holds files the cache did not make ('data', 'notes.tmp') and no npyfeed CACHEDIR.TAG marker" in str(
        caught.value
    )
    assert sorted(p.name for p in other.iterdir()) == ["data", "notes.tmp"]
    empty = tmp_path / "empty"
    empty.mkdir()
    ChunkDirectory(CacheOptions(str(empty), 1 << 30, 1 << 20))  # empty: adopted, and tagged
    (empty / "notes.tmp").write_text("added later")
    ChunkDirectory(CacheOptions(str(empty), 1 << 30, 1 << 20))  # tagged: files added later are tolerated


def test_eviction_deletes_only_the_caches_own_files(
    served: tuple[RangeServer, Path], tmp_path: Path, small_chunks: None
) -> None:
    server, root = served
    x = np.random.default_rng(9).integers(0, 1 << 62, (20000, 3), dtype=np.int64)  # 480 KB
    np.save(root / "foreign.npy", x)
    cache = tmp_path / "cache"
    url = f"{server.url}/foreign.npy"
    opts = options(cache, 100_000, 8 << 10)
    assert np.array_equal(npyfeed.open(url, storage_options=opts)[:1000], x[:1000])
    [objects] = [p for p in cache.iterdir() if p.is_dir()]
    old = time.time() - 3600  # older than any temporary file of the cache may live
    theirs = [tmp_path / "notes.tmp", cache / "notes.tmp", cache / "checkpoint.tmp", objects / "notes.tmp"]
    theirs += [objects / "checkpoint.tmp", objects / ".notes.1.abcdef12.tmp", cache / ("ab" * 16)]
    for path in theirs:
        path.write_text("not the cache's")
        os.utime(path, (old, old))
    other_dir = cache / ("f" * 32)  # named like an object's directory, but a link to someone's files
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / f"{'0' * 16}-8192-0").write_bytes(b"x" * 9000)  # named like a chunk
    other_dir.symlink_to(elsewhere)
    fifo = objects / f"{'1' * 16}-8192-0"  # named like a chunk, not a regular file
    os.mkfifo(fifo)
    named = objects / f"{'2' * 16}-8192-0"
    named.mkdir()
    orphan = objects / f".{chunk_files(cache)[0].name}.12345.abcdef12.tmp"  # the cache's own, left by a killed writer
    orphan.write_bytes(b"")
    os.utime(orphan, (old, old))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "npyfeed cache .* evicted before they are used again", RuntimeWarning)
        for _ in range(2):  # 5x the cache: chunks evicted over and over
            assert same_rows(epoch(npyfeed.Loader(url, 512, shuffle=True, seed=1, storage_options=opts)), x)
    assert npyfeed.storage.cache.chunk_directory(CacheOptions(str(cache), 100_000, 8 << 10)).evicted > 10
    for path in theirs:
        assert path.read_text() == "not the cache's", path
    assert (elsewhere / f"{'0' * 16}-8192-0").read_bytes() == b"x" * 9000 and other_dir.is_symlink()
    assert fifo.exists() and named.is_dir()
    assert not orphan.exists()  # its own temporary file, left over: removed
    assert disk_bytes(cache) <= 100_000 + 64 + sum(len("not the cache's") for p in theirs if cache in p.parents)


def _wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_what_is_not_a_regular_file_where_a_chunk_should_be_is_never_opened(
    served: tuple[RangeServer, Path], tmp_path: Path
) -> None:
    server, root = served
    x = np.random.default_rng(10).standard_normal((40000, 4))  # 1.28 MB: 20 chunks of 64 KiB
    np.save(root / "fifo.npy", x)
    url = f"{server.url}/fifo.npy"
    opts = options(tmp_path, "10MB", 64 << 10)
    assert np.array_equal(npyfeed.open(url, storage_options=opts)[:], x)
    files = chunk_files(tmp_path)
    assert len(files) == 20
    forged = tmp_path / "forged"
    data = bytearray(files[2].read_bytes())
    data[1000:1008] = b"\xff" * 8  # a chunk that would pass its trailer check (written this boot): never followed
    forged.write_bytes(bytes(data))
    files[1].unlink()
    os.mkfifo(files[1])  # would block a reader opening it
    files[2].unlink()
    files[2].symlink_to(forged)
    files[3].unlink()
    files[3].mkdir()
    files[4].unlink()
    os.mkfifo(files[4].with_name(files[4].name + ".part"))  # a FIFO where a claim goes: never waited on
    result: list[object] = []

    def read() -> None:
        try:
            result.append(npyfeed.open(url, storage_options=opts)[:])
        except BaseException as e:
            result.append(e)

    reader = threading.Thread(target=read, daemon=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader.start()
        reader.join(60)
    if reader.is_alive():  # unblock it before failing: open the FIFO's other end
        os.close(os.open(files[1], os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("a reader hung on a FIFO where a chunk should be")
    assert isinstance(result[0], np.ndarray) and np.array_equal(result[0], x), result
    assert [str(w.message) for w in caught if "cannot write a chunk" in str(w.message)]  # the directory: bypassed
    assert files[1].is_file() and files[2].is_file() and not files[2].is_symlink()  # replaced by fetched chunks
    assert files[3].is_dir()  # not the cache's to delete: its rows come from the store
    assert forged.read_bytes() == bytes(data)


_HOLDER = textwrap.dedent(
    """
    import sys
    import npyfeed
    url, cache = sys.argv[1:3]
    opts = {"cache_dir": cache, "cache_size": "10MB", "cache_chunk_bytes": 65536, "request_bytes": 1 << 20}
    npyfeed.open(url, storage_options=opts)[:]
    """
)


def test_claims_of_a_stopped_process_are_waited_on_at_most_the_deadline(
    served: tuple[RangeServer, Path], tmp_path: Path
) -> None:
    server, root = served
    x = np.random.default_rng(11).integers(0, 1 << 30, (80000, 4), dtype=np.int32)  # 1.28 MB: 20 chunks
    np.save(root / "stopped.npy", x)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    with FaultProxy(f"127.0.0.1:{server.port}", delay=1.0) as proxy:  # slow: the holder claims, then waits
        url = f"{proxy.url}/stopped.npy"
        holder = subprocess.Popen([sys.executable, "-c", _HOLDER, url, str(cache)], env=env)
        try:
            _wait_for(lambda: len(list(cache.rglob("*.part"))) == 20, 60)  # all claimed; answers take 1 s
            holder.send_signal(signal.SIGSTOP)  # its claims stay locked for as long as it is stopped
            held = list(cache.rglob("*.part"))
            proxy.delay = 0.0
            opts = {"cache_dir": str(cache), "cache_size": "10MB", "cache_chunk_bytes": 65536, "deadline": 3}
            a = npyfeed.open(url, storage_options=opts)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # if it was stopped holding the space lock too (see the next test)
                began = time.monotonic()
                assert np.array_equal(a[:], x)  # the held chunks' rows fetched from the store here
                first = time.monotonic() - began
                began = time.monotonic()
                assert np.array_equal(a[::2], x[::2])
                again = time.monotonic() - began
            assert all("space lock is held" in str(w.message) for w in caught), [str(w.message) for w in caught]
            assert len(held) == 20 and all(p.exists() for p in held)  # still held: stopped, not dead
        finally:
            holder.kill()  # a stopped process is killed too
            holder.wait(30)
    assert 3 <= first < 3 + 20, first  # one wait of the deadline for all the held chunks, not one per chunk
    assert again < 3, again  # a claim waited on in vain is not waited on again


_LOCKER = textwrap.dedent(
    """
    import fcntl, os, signal, sys
    fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.kill(os.getpid(), signal.SIGSTOP)
    """
)


def test_a_space_lock_held_by_a_stopped_process_is_waited_on_at_most_the_deadline(
    served: tuple[RangeServer, Path], tmp_path: Path
) -> None:
    server, root = served
    x = np.random.default_rng(12).integers(0, 1 << 30, (80000, 4), dtype=np.int32)
    np.save(root / "locked.npy", x)
    opts = {"cache_dir": str(tmp_path), "cache_size": "10MB", "cache_chunk_bytes": 65536, "deadline": 2}
    a = npyfeed.open(f"{server.url}/locked.npy", storage_options=opts)  # the cache's directory and .lock exist
    locker = subprocess.Popen([sys.executable, "-c", _LOCKER, str(tmp_path)])
    try:
        _wait_for(lambda: Path(f"/proc/{locker.pid}/stat").read_text().split(") ")[1].startswith("T"), 60)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            began = time.monotonic()
            assert np.array_equal(a[:], x)  # from the store
            first = time.monotonic() - began
            began = time.monotonic()
            assert np.array_equal(a[1::2], x[1::2])
            again = time.monotonic() - began
    finally:
        locker.kill()
        locker.wait(30)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "space lock is held by a process that does not let go" in messages[0], messages
    assert f"{tmp_path / '.lock'}" in messages[0]
    assert 2 <= first < 2 + 20, first
    assert again < 2, again  # tried once, not waited on again
    assert not chunk_files(tmp_path)
    assert np.array_equal(a[:], x) and len(chunk_files(tmp_path)) == 20  # free again (the holder died): cached
