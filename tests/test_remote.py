"""Object storage read in place: s3:// on a real moto server, http:// on a range server, faults through a proxy.

Every server runs on 127.0.0.1 on a free port, started and stopped here; clients reach moto through the standard
``AWS_*`` environment. ``np.load`` of the same bytes is the oracle; epochs must deliver every row exactly once.
"""

from __future__ import annotations

import errno
import functools
import itertools
import pickle
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("obstore")
pytest.importorskip("moto")

import npyfeed
from children import epoch_in_child
from npyfeed.errors import NpyFormatError, ObjectChangedError
from npyfeed.storage.ranges import plan_requests
from npyfeed.storage.urls import match_key, parse_url
from servers import FaultProxy, MotoS3, RangeServer, environment
from store_cases import glob_columns_and_shuffled_epochs, npy_bytes, reads_match_np_load

BUCKET = "npyfeed-test"


@pytest.fixture(scope="module", autouse=True)
def bucket(s3: MotoS3) -> None:
    s3.client().create_bucket(Bucket=BUCKET)


def upload(s3: MotoS3, key: str, data: bytes | np.ndarray) -> str:
    body = npy_bytes(data) if isinstance(data, np.ndarray) else data
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=body)
    return f"s3://{BUCKET}/{key}"


def epoch_rows(loader: npyfeed.Loader) -> np.ndarray:
    return np.concatenate([np.asarray(b) for b in loader])


# -- pure pieces ----------------------------------------------------------------------------------------------------
def test_urls_and_globs() -> None:
    url = parse_url("s3://bucket/train/x_*.npy")
    assert (url.scheme, url.authority, url.key, url.list_prefix) == ("s3", "bucket", "train/x_*.npy", "train")
    assert parse_url("gs://b/x.npy").store_url == "gs://b"
    assert parse_url("https://host:8443/d/x.npy").authority == "host:8443"
    assert match_key("train/x_*.npy", "train/x_01.npy")
    assert not match_key("train/*.npy", "train/sub/x.npy")  # a * never crosses a /
    for bad in ("ftp://host/x.npy", "s3:///x.npy", "s3://b/x.npy?versionId=1"):
        with pytest.raises(ValueError, match=r"s3|ftp"):
            parse_url(bad)


def test_client_options_are_checked() -> None:
    from npyfeed.errors import ConfigError
    from npyfeed.storage.client import ClientOptions

    assert ClientOptions(timeout=0.25, deadline=3).deadline == 3
    for name, bad in [("timeout", 0), ("deadline", float("inf")), ("connect_timeout", True), ("deadline", "60s")]:
        with pytest.raises(ConfigError, match=rf"storage_options\['{name}'\] must be a positive number of seconds"):
            ClientOptions(**{name: bad})
    for name, bad in [("request_bytes", 0), ("gap_bytes", -1), ("max_concurrency", 2.0)]:
        with pytest.raises(ConfigError, match=re.escape(f"storage_options['{name}']")):
            ClientOptions(**{name: bad})


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 5000), max_size=300).map(sorted),
    st.integers(1, 64),
    st.integers(0, 2000),
    st.integers(1, 4096),
)
def test_plan_requests_covers_every_index_once(indices: list[int], record: int, gap: int, most: int) -> None:
    idx = np.array(indices, np.int64)
    plan = plan_requests(idx, record, gap, most)
    assert [p for r in plan for p in range(r.start, r.end)] == list(range(len(indices)))
    for r in plan:
        assert r.first == idx[r.start] and r.stop == idx[r.end - 1] + 1
        assert r.records * record <= max(most, record)
    for a, b in itertools.pairwise(plan):
        assert b.first >= a.stop - 1  # requests are in file order (a repeated index may straddle)


# -- reads against np.load ------------------------------------------------------------------------------------------
@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_s3_reads_match_np_load(s3: MotoS3, data: st.DataObject) -> None:
    reads_match_np_load(functools.partial(upload, s3), data)


def test_glob_columns_and_shuffled_epochs(s3: MotoS3) -> None:
    glob_columns_and_shuffled_epochs(functools.partial(upload, s3))


def test_remote_and_local_loaders_are_interchangeable(s3: MotoS3, tmp_path: Path) -> None:
    x = np.random.default_rng(1).integers(0, 1 << 30, (2000, 3), dtype=np.int32)
    url = upload(s3, "same/x.npy", x)
    np.save(tmp_path / "x.npy", x)
    local = npyfeed.Loader(str(tmp_path / "x.npy"), 64, shuffle=True, seed=7, shard=(1, 3))
    remote = npyfeed.Loader(url, 64, shuffle=True, seed=7, shard=(1, 3))
    assert len(local) == len(remote)
    it = iter(local)
    first = [next(it) for _ in range(4)]
    state = local.get_state()
    rest_local = list(it)
    remote.set_state(state)  # a state saved while reading locally resumes remotely
    rest_remote = list(remote)
    assert len(rest_local) == len(rest_remote) > 0
    for a, b in zip(rest_local, rest_remote, strict=True):
        assert np.array_equal(a, b)
    shards = [epoch_rows(npyfeed.Loader(url, 64, shuffle="block", seed=2, shard=(i, 3))) for i in range(3)]
    assert np.array_equal(np.sort(np.concatenate(shards), axis=0), np.sort(x, axis=0))
    assert first


def test_pickled_array_reconnects_and_checks_the_version(s3: MotoS3) -> None:
    x = np.arange(100, dtype=np.float64)
    url = upload(s3, "pickle/x.npy", x)
    a = npyfeed.open(url)
    b = pickle.loads(pickle.dumps(a))
    assert np.array_equal(b[[99, 0, 50]], x[[99, 0, 50]])
    upload(s3, "pickle/x.npy", x + 1)
    with pytest.raises(ObjectChangedError, match=re.escape("pickle/x.npy")):
        pickle.loads(pickle.dumps(a))


def test_an_object_deleted_mid_epoch_is_said_to_be_deleted(s3: MotoS3) -> None:
    """A GET's 404 for an object that was there when opened: ObjectChangedError saying it was deleted (it said
    "replaced (a precondition failed: 412)"), with no row after the deletion delivered."""
    x = np.arange(8192 * 8, dtype=np.int64).reshape(8192, 8)
    url = upload(s3, "deleted/x.npy", x)
    options = {"request_bytes": 8192, "prefetch_bytes": 65536, "deadline": 10}
    loader = npyfeed.Loader(url, batch_size=32, shuffle=False, prefetch=1, storage_options=options)
    batches = iter(loader)
    got = [next(batches)]
    s3.client().delete_object(Bucket=BUCKET, Key="deleted/x.npy")
    with pytest.raises(ObjectChangedError) as caught:
        got.extend(batches)
    message = str(caught.value)
    assert message.startswith(f"{url}: the object was deleted (the server answered 404 Not Found) since it was opened")
    assert "replaced" not in message and "412" not in message
    assert len(got) < len(loader) and np.array_equal(np.concatenate(got), x[: 32 * len(got)])


def test_a_process_forked_after_requests_refuses_instead_of_hanging(s3: MotoS3) -> None:
    """obstore's runtime does not survive fork: a forked child (a PyTorch DataLoader worker by default, a
    multiprocessing pool) that made a request would wait forever. It gets a ConfigError naming the URL and the
    remedy; a spawned child (the loader pickled) reads the epoch exactly."""
    x = np.arange(40_000, dtype=np.float32).reshape(10_000, 4)
    url = upload(s3, "fork/x.npy", x)
    loader = npyfeed.Loader(url, batch_size=500, shuffle="block", seed=3)
    assert np.array_equal(np.sort(np.concatenate(list(loader)), axis=0), x)  # epoch 0: requests, read-ahead
    status, message = epoch_in_child("fork", loader)
    assert status == "ConfigError"
    assert "fork/x.npy" in message and "spawn" in message
    status, got = epoch_in_child("spawn", loader)  # epoch 1, as the pickled loader's next
    assert status == "ok", got
    expected = np.concatenate([loader.read_batch(1, i) for i in range(len(loader))])
    assert np.array_equal(got, expected)
    assert np.array_equal(np.concatenate(list(loader)), expected)  # the parent's client still works


# -- bad input and faults -------------------------------------------------------------------------------------------
def test_missing_objects_and_buckets_name_the_url(s3: MotoS3) -> None:
    for url in (f"s3://{BUCKET}/nope.npy", "s3://no-such-bucket/x.npy"):
        with pytest.raises(FileNotFoundError, match=re.escape(url)):
            npyfeed.open(url)
    with pytest.raises(FileNotFoundError, match="no object matches"):
        npyfeed.open(f"s3://{BUCKET}/nothing/x_*.npy")
    with pytest.raises(FileNotFoundError, match=re.escape("s3://no-such-bucket/") + ".*no such object or bucket"):
        npyfeed.open("s3://no-such-bucket/train/x_*.npy")  # a listing's 404, like a GET's


def test_denied_requests_are_permission_errors(s3: MotoS3) -> None:
    upload(s3, "denied/x_0.npy", np.arange(10))
    upstream = s3.endpoint.removeprefix("http://")
    with FaultProxy(upstream, error_rate=1.0, error_status=(403, "AccessDenied")) as proxy:
        options = {"endpoint": proxy.url}
        with pytest.raises(PermissionError, match=re.escape(f"s3://{BUCKET}/denied") + ".*access denied"):
            npyfeed.open(f"s3://{BUCKET}/denied/x_*.npy", storage_options=options)  # a listing
        with pytest.raises(PermissionError, match=re.escape(f"s3://{BUCKET}/denied/x_0.npy") + ".*access denied"):
            npyfeed.open(f"s3://{BUCKET}/denied/x_0.npy", storage_options=options)  # a HEAD


def test_not_npy_and_truncated_objects(s3: MotoS3) -> None:
    url = upload(s3, "bad/text.npy", b"just some text, not an array")
    with pytest.raises(NpyFormatError, match=re.escape(f"{url}: invalid .npy magic")):
        npyfeed.open(url)
    body = npy_bytes(np.zeros((100, 4), np.float32))
    url = upload(s3, "bad/short.npy", body[:-7])
    with pytest.raises(NpyFormatError, match=re.escape(f"{url}: truncated .npy")):
        npyfeed.open(url)


def test_object_replaced_between_header_and_data(s3: MotoS3) -> None:
    x = np.arange(4000, dtype=np.int32)
    url = upload(s3, "change/x.npy", x)
    a = npyfeed.open(url)
    upload(s3, "change/x.npy", x[::-1].copy())  # same size, new ETag
    with pytest.raises(ObjectChangedError, match=re.escape(f"{url}: the object was replaced")) as info:
        a[10:20]
    assert isinstance(info.value, NpyFormatError) and isinstance(info.value, OSError)
    with pytest.raises(ObjectChangedError, match="changed since it was opened"):
        a.storage.check()


@pytest.mark.parametrize("retrier", ["obstore", "npyfeed"])
def test_shuffled_epoch_is_exact_through_a_faulty_proxy(s3: MotoS3, retrier: str) -> None:
    x = np.random.default_rng(2).standard_normal((6000, 4))
    url = upload(s3, f"faults/{retrier}.npy", x)
    upstream = s3.endpoint.removeprefix("http://")
    with FaultProxy(upstream, error_rate=0.15, reset_rate=0.1, delay=0.002, seed=4, fault_after=1) as proxy:
        options: dict[str, object] = {"endpoint": proxy.url, "request_bytes": 4096, "gap_bytes": 0}
        if retrier == "npyfeed":
            options["retry_config"] = {"max_retries": 0}  # obstore gives up at once: our own retries must cope
        with pytest.warns(npyfeed.RemoteShuffleWarning, match="requests per batch"):  # 32-byte rows, no merging
            loader = npyfeed.Loader(url, 200, shuffle=True, seed=5, storage_options=options)
        rows = epoch_rows(loader)
    assert proxy.counts["errors"] > 3 and proxy.counts["resets"] > 3, proxy.counts
    assert rows.shape == x.shape
    assert np.array_equal(np.sort(rows.view(np.int64), axis=0), np.sort(x.view(np.int64), axis=0))
    stats = loader.source.arrays[0].storage.client.stats  # type: ignore[attr-defined]
    # Every fault cost a retry, at one layer or the other; each range was delivered once.
    assert proxy.counts["requests"] >= stats.requests + proxy.counts["errors"] + proxy.counts["resets"]
    if retrier == "npyfeed":
        assert stats.retries >= proxy.counts["errors"] + proxy.counts["resets"] - 1


def test_a_stalled_server_ends_in_a_timeout_naming_the_url(s3: MotoS3) -> None:
    x = np.arange(3000, dtype=np.int64)
    url = upload(s3, "stall/x.npy", x)
    upstream = s3.endpoint.removeprefix("http://")
    limits = {"timeout": 0.5, "connect_timeout": 0.5, "deadline": 2.0}
    # Every request read and never answered: the HEAD at open.
    with FaultProxy(upstream, stall_rate=1.0) as proxy:
        began = time.monotonic()
        with pytest.raises(TimeoutError, match=re.escape(url) + ".*2 s deadline") as info:
            npyfeed.open(url, storage_options={"endpoint": proxy.url, **limits})
        assert time.monotonic() - began < 15  # the deadline, not a hang (the limit of this test is generous)
        assert info.value.errno == errno.ETIMEDOUT and proxy.counts["stalls"] >= 1
    # Opened while the server answers; then it stops answering: the data read gives up, after retries.
    with FaultProxy(upstream) as proxy:
        a = npyfeed.open(url, storage_options={"endpoint": proxy.url, "request_bytes": 4096, **limits})
        proxy.stall_rate = 1.0
        began = time.monotonic()
        with pytest.raises(TimeoutError, match=re.escape(url) + r": reading bytes \[\d+, \d+\): no complete answer"):
            a[:]
        assert time.monotonic() - began < 15
        assert proxy.counts["stalls"] >= 2  # obstore's or npyfeed's retries asked again before the deadline


def test_stalled_requests_are_retried_and_the_epoch_is_exact(s3: MotoS3) -> None:
    x = np.random.default_rng(6).integers(0, 1 << 40, (2000, 2), dtype=np.int64)
    url = upload(s3, "stall/some.npy", x)
    upstream = s3.endpoint.removeprefix("http://")
    with FaultProxy(upstream, stall_rate=0.1, seed=1, fault_after=2) as proxy:
        options = {"endpoint": proxy.url, "request_bytes": 2048, "gap_bytes": 0, "timeout": 0.5, "deadline": 30.0}
        rows = epoch_rows(npyfeed.Loader(url, 250, shuffle="block", seed=3, block_rows=100, storage_options=options))
    assert proxy.counts["stalls"] >= 2, proxy.counts
    assert np.array_equal(np.sort(rows, axis=0), np.sort(x, axis=0))


def test_http_range_server_and_a_server_that_ignores_range(tmp_path: Path) -> None:
    x = np.random.default_rng(3).integers(0, 255, (500, 33), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    with RangeServer(tmp_path) as server:
        url = f"{server.url}/x.npy"
        loader = npyfeed.Loader([url, url], 64, shuffle="block", seed=1, block_rows=20, window_blocks=3)
        rows = epoch_rows(loader)
        assert np.array_equal(np.sort(rows, axis=0), np.sort(np.concatenate([x, x]), axis=0))
        with pytest.raises(FileNotFoundError, match=re.escape("missing.npy")):
            npyfeed.open(f"{server.url}/missing.npy")
    with RangeServer(tmp_path, honour_range=False) as server, pytest.raises(OSError, match="status 200 instead of 206"):
        npyfeed.open(f"{server.url}/x.npy")


def test_read_ahead_never_asks_for_more_than_its_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hint larger than the pool (the Loader hints a whole object that fits in memory) fetches one pool's worth,
    not the whole object to drop most of it (which held GBs in flight for a 10 GB object). Ranges not read yet are
    never evicted for later ones (under load that fetched blocks twice): later ones wait in a queue, fetched whole
    when a gather needs them (the pool then holds at most twice its size) or as read ranges make room. No range is
    fetched twice."""
    from npyfeed.storage.object_store import ObjectFile

    x = np.random.default_rng(4).integers(0, 255, (1024, 1024), dtype=np.uint8)  # 1 MiB of rows
    np.save(tmp_path / "x.npy", x)
    kib = 1 << 10
    options = {"request_bytes": 64 * kib, "prefetch_bytes": 256 * kib}
    with RangeServer(tmp_path) as server:
        url = f"{server.url}/x.npy"
        f = ObjectFile(url, storage_options=options)
        submitted: list[tuple[int, int]] = []
        real_submit = f.client.submit
        monkeypatch.setattr(f.client, "submit", lambda make: submitted.append(make.args[1:3]) or real_submit(make))

        def held() -> int:
            return sum(b - a for a, b in f.read_ahead.pieces)

        f.will_need([(0, f.size)])
        first = [(a, a + 64 * kib) for a in range(0, 256 * kib, 64 * kib)]
        assert f.read_ahead.pieces == first and submitted == first
        f.will_need([(512 * kib, f.size)])  # a later hint never evicts ranges not read yet: it waits
        assert f.read_ahead.pieces == first and submitted == first
        out = np.empty((3, 1024), np.uint8)
        f.gather(128, 1024, np.array([10, 11, 1000]), out)  # two rows from the pool, one from its queued range
        assert np.array_equal(out, x[[10, 11, 1000]])
        assert submitted == [*first, (960 * kib, 1024 * kib)]  # fetched whole: the rest of it is read soon
        rows = np.arange(300, 900)  # gathered past the pool's ranges: queued ranges fetched while room allows
        out = np.empty((rows.size, 1024), np.uint8)
        f.gather(128, 1024, rows, out)
        assert np.array_equal(out, x[rows])
        assert held() <= 2 * 256 * kib
        rows = np.arange(1024)
        out = np.empty((rows.size, 1024), np.uint8)
        f.gather(128, 1024, rows, out)
        assert np.array_equal(out, x)
        assert held() <= 2 * 256 * kib and len(set(submitted)) == len(submitted)  # never a range twice
        loader = npyfeed.Loader(url, 64, shuffle="block", seed=3, block_rows=16, storage_options=options)
        assert np.array_equal(np.sort(epoch_rows(loader), axis=0), np.sort(x, axis=0))


def test_block_shuffle_of_a_remote_object_fetches_each_block_once(tmp_path: Path) -> None:
    """An object that fits in memory is not streamed whole into the (smaller) read-ahead pool: that fetched its
    first pool-full for nothing and turned the window hints off, so gathers fetched each block several times."""
    rows, row_bytes = 4096, 32 << 10  # 128 MiB: larger than the pool; batches of 4 MiB, 1 MiB blocks, 8 MiB windows
    x = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.uint8, (rows, row_bytes))
    x[:, :8] = np.arange(rows, dtype="<i8").view(np.uint8).reshape(rows, 8)
    x.flush()
    with RangeServer(tmp_path) as server:
        options = {"prefetch_bytes": 32 << 20}
        loader = npyfeed.Loader(
            f"{server.url}/x.npy", 128, shuffle="block", seed=3, block_rows=32, window_blocks=8, storage_options=options
        )
        ids = np.concatenate([np.ascontiguousarray(b[:, :8]).view("<i8").ravel() for b in loader])
        stats = loader.source.arrays[0].storage.client.stats  # type: ignore[attr-defined]
    assert np.array_equal(np.sort(ids), np.arange(rows)) and not np.array_equal(ids, np.arange(rows))
    assert stats.bytes < 1.4 * x.nbytes, stats.bytes / x.nbytes  # 1.7-1.9x when streamed; ~1.0-1.2x now


def test_a_sharded_block_shuffle_reads_its_own_rows_of_each_window_ahead(tmp_path: Path) -> None:
    """A shard of a block shuffle reads a share of every window's rows, spread over all of its blocks. Each worker
    fetches its own rows of each window ahead, once (they had no read-ahead: every batch's gather fetched the spans
    its rows cover, 3.3x the bytes delivered): every row comes from read-ahead, bytes fetched are at most 1.01x
    those delivered when requests are not merged across gaps (``gap_bytes=0``), and at most the window's bytes once
    per worker (2x for 2 workers) when they are (the default). The workers together deliver every row once."""
    rows, row_bytes = 1024, 16 << 10  # 16 MiB; 512 KiB blocks, 2 MiB windows of 128 rows: 4 batches per worker
    x = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.uint8, (rows, row_bytes))
    x[:, :8] = np.arange(rows, dtype="<i8").view(np.uint8).reshape(rows, 8)
    x.flush()
    count = 2
    with RangeServer(tmp_path) as server:
        for gap, bound in ((0, 1.01), (None, count * 1.01)):
            options = {"prefetch_bytes": 8 << 20} | ({} if gap is None else {"gap_bytes": gap})
            seen = []
            for index in range(count):
                loader = npyfeed.Loader(
                    f"{server.url}/x.npy", 16, shuffle="block", seed=3, block_rows=32, window_blocks=4,
                    shard=(index, count), storage_options=options,
                )  # fmt: skip
                storage = loader.source.arrays[0].storage  # type: ignore[attr-defined]
                before = storage.client.stats.bytes  # the workers' clients are one (the same store and options)
                ids = np.concatenate([np.ascontiguousarray(b[:, :8]).view("<i8").ravel() for b in loader])
                delivered = ids.size * row_bytes
                assert storage.read_ahead.served == delivered, (gap, storage.read_ahead.served, delivered)
                fetched = storage.client.stats.bytes - before
                assert fetched <= bound * delivered, (gap, fetched / delivered)
                seen.append(ids)
                loader.close()
            assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(rows))


@pytest.mark.parametrize("shuffle", [True, "block", False])
def test_reads_stop_when_the_consumer_leaves(tmp_path: Path, shuffle: bool | str) -> None:
    """A consumer that leaves an epoch (``break``, a dropped iterator) leaves no reads behind: requests queued for
    it, read-ahead included, are cancelled at once, so the server sees about the requests in flight then (it saw
    thousands more over seconds: the reads running went on to their end). The next epoch is still exact."""
    rows, row_bytes = 8192, 1024  # 8 MiB; 4 KiB requests without merging: thousands of requests per epoch
    x = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.uint8, (rows, row_bytes))
    x[:, :8] = np.arange(rows, dtype="<i8").view(np.uint8).reshape(rows, 8)
    x.flush()
    slots = 4
    options = {"max_concurrency": slots, "request_bytes": 4096, "gap_bytes": 0, "prefetch_bytes": 1 << 20}
    with RangeServer(tmp_path, delay=0.002) as server, warnings.catch_warnings():
        warnings.simplefilter("ignore", npyfeed.RemoteShuffleWarning)  # the request rate is the point here
        loader = npyfeed.Loader(f"{server.url}/x.npy", 128, shuffle=shuffle, seed=1, storage_options=options)
        for batch in loader:
            assert batch.shape == (128, row_bytes)
            break  # the generator is closed here: its reads are told to stop
        left = server.requests
        time.sleep(1.0)  # at 2 ms a request and 4 in flight, a read left running makes ~2,000 requests a second
        after = server.requests - left
        # Those in flight when it left, and a few handed a freed slot while the cancellations were being delivered.
        assert after <= 2 * slots, after
        batches = iter(loader)
        next(batches)
        del batches  # a dropped iterator stops its reads too
        left = server.requests
        time.sleep(1.0)
        assert server.requests - left <= 2 * slots, server.requests - left
        # The next epoch: nothing the ones left early cancelled is missing from it.
        ids = np.concatenate([np.ascontiguousarray(b[:, :8]).view("<i8").ravel() for b in loader])
    assert np.array_equal(np.sort(ids), np.arange(rows))


def test_file_urls_are_local_paths(tmp_path: Path) -> None:
    x = np.arange(12).reshape(4, 3)
    np.save(tmp_path / "x_0.npy", x)
    np.save(tmp_path / "x_1.npy", x)
    assert np.array_equal(npyfeed.open(f"file://{tmp_path}/x_0.npy")[:], x)
    assert len(npyfeed.open(f"file://{tmp_path}/x_*.npy")) == 8


def test_inspect_a_url(s3: MotoS3, capsys: pytest.CaptureFixture[str]) -> None:
    from npyfeed.cli import main

    url = upload(s3, "cli/x.npy", np.zeros((7, 2), np.float16))
    assert main(["inspect", "--json", url, f"s3://{BUCKET}/cli/missing.npy"]) == 1
    out = capsys.readouterr()
    assert '"shape": [\n      7,\n      2\n    ]' in out.out and f"{url}" in out.out
    assert "cli/missing.npy" in out.err


# -- framework adapters ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_torch_adapter_over_s3(s3: MotoS3) -> None:
    torch = pytest.importorskip("torch")
    x = np.arange(1000, dtype=np.float32).reshape(500, 2)
    loader = npyfeed.Loader(upload(s3, "torch/x.npy", x), 50, shuffle=True, seed=0)
    data = torch.utils.data.DataLoader(loader.to_torch(), batch_size=None)
    got = torch.cat(list(data)).numpy()
    assert np.array_equal(np.sort(got, axis=0), x)


@pytest.mark.slow
def test_tf_data_over_s3(s3: MotoS3) -> None:
    tf = pytest.importorskip("tensorflow")
    x = np.arange(600, dtype=np.int64).reshape(300, 2)
    loader = npyfeed.Loader(upload(s3, "tf/x.npy", x), 32, shuffle="block", seed=0, block_rows=16, window_blocks=2)
    got = np.concatenate([b.numpy() for b in loader.to_tf_dataset()])
    assert np.array_equal(np.sort(got, axis=0), x)
    assert tf.is_tensor(next(iter(loader.to_tf_dataset())))


def test_a_new_endpoint_in_the_environment_gets_a_new_client(tmp_path: Path) -> None:
    """Clients are shared per store, options and environment: the same bucket behind another AWS_ENDPOINT_URL is
    another store (a cached client kept reading from the first server while its connections lived)."""
    for value in (1, 2):
        root = tmp_path / str(value)
        (root / "same-bucket").mkdir(parents=True)
        np.save(root / "same-bucket" / "x.npy", np.full(10, value))
    with RangeServer(tmp_path / "1") as one, RangeServer(tmp_path / "2") as two:
        for server, value in ((one, 1), (two, 2), (one, 1)):
            env = {"AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t"}
            with environment({**env, "AWS_REGION": "us-east-1"}):
                assert npyfeed.open("s3://same-bucket/x.npy")[:].tolist() == [value] * 10
