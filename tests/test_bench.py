"""``npyfeed bench`` and the measurement helpers behind it (correctness of what is reported, not speed)."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import npyfeed
from npyfeed.bench.advice import recommend
from npyfeed.bench.run import RequestReport, drop_from_cache, raw_object_speed, raw_read_speed, run_bench
from npyfeed.cli import main
from npyfeed.loader.budget import storages
from npyfeed.storage.client import RequestStats
from servers import RangeServer, environment


@pytest.fixture
def data(tmp_path: Path) -> tuple[str, str]:
    x, y = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x, np.random.default_rng(0).random((5000, 16), dtype=np.float32))
    np.save(y, np.arange(5000))
    return str(x), str(y)


@pytest.mark.parametrize("shuffle", ["none", "global", "block"])
def test_bench_counts_every_row_of_each_epoch(data: tuple[str, str], shuffle: str) -> None:
    result = run_bench(data, batch_size=128, shuffle=shuffle, epochs=2, max_seconds=None, progress=False, sweep=False)
    assert result.rows == 2 * 5000
    assert result.row_bytes == 16 * 4 + 8
    assert result.bytes_per_s == pytest.approx(result.rows_per_s * result.row_bytes)
    assert result.raw_bytes_per_s > 0 and result.memory_peak >= result.memory_baseline > 0


def test_bench_sweep_and_advice(data: tuple[str, str]) -> None:
    result = run_bench(data[0], shuffle="global", max_seconds=1.0, progress=False)
    assert {t["num_threads"] for t in result.trials} >= {1}
    assert all(t["rows_per_s"] > 0 for t in result.trials)
    assert result.num_threads in {t["num_threads"] for t in result.trials}  # the run's own settings, timed alike
    own = {"num_threads": result.num_threads, "rows_per_s": result.rows_per_s}
    result.trials = [own, {"num_threads": 7, "rows_per_s": 10 * result.rows_per_s}]
    result.raw_bytes_per_s = result.bytes_per_s  # (no shuffle advice here: the reads kept up with raw)
    assert recommend(result).loader == {"num_threads": 7}
    assert recommend(result).lines()[0].startswith("num_threads=7")
    # A trial at the settings it ran with is never a change, however much faster than the timed run it was
    result.trials = [{**own, "rows_per_s": 14 * result.rows_per_s}, {"num_threads": 7, "rows_per_s": result.rows_per_s}]
    assert recommend(result).loader == {}
    assert recommend(result).lines()[0].startswith("keep the settings")
    assert "compared with each other" in (result.trial_gap() or "")
    result.trials, result.raw_bytes_per_s = [], 100 * result.bytes_per_s
    assert recommend(result).loader == {"shuffle": "block"}
    assert recommend(result).lines()[0].startswith("shuffle='block'")
    result.shuffle = "block"  # already a block shuffle: not advised again
    assert "shuffle" not in recommend(result).loader


def _no_rematch(trial: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in trial.items() if k != "rematch_rows_per_s"}


def test_bench_trials_the_tuner_against_fixed_settings_and_says_what_it_chose(data: tuple[str, str]) -> None:
    result = run_bench(data[0], shuffle="global", max_seconds=1.0, progress=False)
    assert result.autotune and result.tuning["autotune"] and result.io_threads >= result.num_threads
    own, *fixed = result.trials
    assert own["own"] and own["autotune"] and own is result.own_trial()
    per_read = own["prefetch"] is None and {t["prefetch"] for t in fixed}
    assert per_read and len(per_read) == 2 and {t["num_threads"] for t in fixed} >= {1, result.num_threads}
    assert not any(t["autotune"] or t["own"] for t in fixed) and all(t["rows_per_s"] > 0 for t in result.trials)
    result.raw_bytes_per_s = result.bytes_per_s  # (no shuffle advice here)
    rate = own["rows_per_s"]
    # The trials below are made up: drop any rematch the real run held (a fixed setting that won its short trial)
    own, fixed = _no_rematch(own), [_no_rematch(t) for t in fixed]
    # A fixed setting within 10% of the tuner is no reason to turn it off: autotune is said to be on, nothing changes
    result.trials = [own, {**fixed[0], "num_threads": 3, "prefetch": 64, "rows_per_s": 1.05 * rate}]
    advice = recommend(result)
    assert advice.loader == {} and advice.lines()[0].startswith("keep the settings")
    assert any(line.startswith("autotune is on: it chose depth") for line in advice.lines())
    # One that beat it in the trials is recommended whole: both settings (so tuning is off)
    result.trials = [own, {**fixed[0], "num_threads": 3, "prefetch": 64, "rows_per_s": 1.5 * rate}]
    advice = recommend(result)
    assert advice.loader == {"num_threads": 3, "prefetch": 64}
    assert "against" in advice.lines()[0] and "autotuned" in advice.lines()[0]
    # ... unless it lost the rematch (a short trial on a busy machine is noisy)
    faster = {**fixed[0], "num_threads": 3, "prefetch": 64, "rows_per_s": 1.5 * rate, "rematch_rows_per_s": rate}
    result.trials = [{**own, "rematch_rows_per_s": rate}, faster]
    assert recommend(result).loader == {}


def test_object_store_advice_on_gap_bytes_and_reads_at_once(data: tuple[str, str]) -> None:
    result = run_bench(data[0], shuffle="global", max_seconds=1.0, progress=False, sweep=False)
    result.raw_bytes_per_s = 100e6
    result.rows = int(result.seconds * 100e6 / result.row_bytes)  # (the run read at the link's speed)
    report = dict(
        requests=1000, retries=0, bytes_asked=10**8, bytes_fetched=2 * 10**8, row_reads=8000, seconds=1.0,
        latency_p50_ms=20.0, latency_p99_ms=40.0, mean_in_flight=10.0, max_in_flight=16, max_concurrency=64,
        raw_requests=1, gap_bytes=256 << 10,
    )  # fmt: skip
    result.requests = RequestReport(**report)
    advice = recommend(result)
    # 20 ms of a 100 MB/s link carries 2 MB: a gap up to 2 MiB costs about what a request does
    assert advice.loader == {"storage_options": {"gap_bytes": 2 << 20}}, advice.lines()
    assert advice.lines()[0].startswith("storage_options['gap_bytes']=2097152: a request took 20.0 ms")
    result.requests = RequestReport(**{**report, "gap_bytes": 1 << 20})
    assert "storage_options" not in recommend(result).loader  # within 4x: left alone
    # Slow, with the store's slots idle: the tuner handles reads at once, until it reaches io_threads
    result.raw_bytes_per_s = 10 * result.bytes_per_s
    result.requests = RequestReport(**{**report, "gap_bytes": 1 << 20, "mean_in_flight": 4.0})
    result.tuning = {**result.tuning, "tunes_concurrency": True, "concurrency": 3, "max_concurrency": 8}
    assert "num_threads" not in recommend(result).loader and "io_threads" not in recommend(result).loader
    result.tuning["concurrency"] = 8
    assert recommend(result).loader["io_threads"] == 2 * result.io_threads
    result.autotune = False  # without the tuner: more reads at once, as num_threads
    assert recommend(result).loader["num_threads"] == 2 * result.num_threads


def test_raw_read_speed_and_cold_cache(data: tuple[str, str]) -> None:
    drop_from_cache([data[0]])  # must not fail on a file without cached pages
    assert raw_read_speed([data[0]]) > 0


def test_cli_bench_json(data: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["bench", *data, "--batch-size", "100", "--shuffle", "global", "--seconds", "5", "--no-sweep", "--json"]
    )
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 5000 and report["shuffle"] == "global" and report["batch_size"] == 100
    assert isinstance(report["recommended"], dict) and report["advice"]
    assert report["recommended"].get("num_threads") != report["num_threads"]
    assert report["recommended"].get("shuffle") != "global"
    # the raw reference read the same bytes as the run: a ratio, not "139% of raw" from different reads
    assert report["raw_share"] == pytest.approx(report["bytes_per_s"] / report["raw_bytes_per_s"])
    assert report["autotune"] and report["tuning"]["depth"] >= 1
    assert any(line.startswith("autotune is on") for line in report["advice"])
    assert main(["bench", data[0], "--seconds", "5", "--no-sweep", "--json", "--no-autotune"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["autotune"] is False and not any(line.startswith("autotune") for line in report["advice"])


def test_cli_bench_text_and_errors(data: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", data[0], "--seconds", "2", "--no-sweep"]) == 0
    out = capsys.readouterr().out
    assert "rows/s" in out and "raw sequential" in out and "peak memory" in out
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not a npy file at all")
    assert main(["bench", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.npy" in err and "magic" in err
    assert main(["bench", str(tmp_path / "missing.npy")]) == 1
    assert "missing.npy" in capsys.readouterr().err


def test_iter_batches_is_stateless_and_strided(data: tuple[str, str]) -> None:
    loader = npyfeed.Loader(data, 300, shuffle=True, seed=2)
    every_third = list(loader.iter_batches(4, range(1, len(loader), 3)))
    assert [i for i, _ in every_third] == list(range(1, len(loader), 3))
    for index, (_, y) in every_third:
        np.testing.assert_array_equal(y, loader.read_batch(4, index)[1])
    assert loader.epoch == 0  # untouched
    with pytest.raises(IndexError):
        list(loader.iter_batches(0, range(0, len(loader) + 1)))


def test_loader_pickles_with_its_position(data: tuple[str, str]) -> None:
    loader = npyfeed.Loader(data, 300, shuffle=True, seed=2)
    it = iter(loader)
    next(it)
    clone = pickle.loads(pickle.dumps(loader))
    assert clone.get_state() == loader.get_state()
    np.testing.assert_array_equal(next(iter(clone))[1], loader.read_batch(1, 0)[1])


# -- object storage: s3:// against the RangeServer (path-style S3 reads with sendfile) -----------------------------
@pytest.fixture
def s3_bench(tmp_path: Path) -> Iterator[tuple[RangeServer, str]]:
    pytest.importorskip("obstore")
    with RangeServer(tmp_path) as server:
        # A bucket named after the port: clients are cached per bucket, and each test has its own server.
        bucket = f"bench-{server.port}"
        (tmp_path / bucket).mkdir()
        np.save(tmp_path / bucket / "x.npy", np.random.default_rng(0).random((4000, 32), dtype=np.float32))
        env = {"AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t"}
        with environment({**env, "AWS_REGION": "us-east-1"}):
            yield server, f"s3://{bucket}/x.npy"


@pytest.mark.parametrize(
    ("shuffle", "options"),
    [
        ("none", {}),
        ("block", {}),
        # No merging across gaps and nothing fetched ahead: a global shuffle then costs a request per row.
        ("global", {"gap_bytes": 0, "prefetch_bytes": 1, "max_concurrency": 4}),
    ],
)
def test_bench_s3_reports_the_requests_the_server_saw(
    s3_bench: tuple[RangeServer, str], shuffle: str, options: dict[str, int]
) -> None:
    server, url = s3_bench
    columns = npyfeed.Columns.of(url, storage_options=options)  # HEAD and header GET before counting
    seen = server.requests
    result = run_bench(columns, batch_size=256, shuffle=shuffle, max_seconds=None, progress=False, sweep=False)
    req = result.requests
    assert req is not None and result.rows == 4000
    assert server.requests - seen == req.requests + req.raw_requests  # every GET counted once, nothing else sent
    assert req.raw_requests == 1 and result.raw_bytes_per_s > 0
    assert req.bytes_asked == 4000 * 128 and req.row_reads == 4000
    assert req.bytes_fetched >= req.bytes_asked
    assert 0 < req.latency_p50_ms <= req.latency_p99_ms
    assert 1 <= req.max_in_flight <= req.max_concurrency and 0 < req.mean_in_flight <= req.max_in_flight
    if shuffle == "global":
        assert req.rows_per_request < 1.5  # random rows of 4,000 seldom touch (only neighbours merge)
        assert req.max_concurrency == 4 and req.max_in_flight == 4  # a batch's rows were fetched 4 at a time
        assert any(line.startswith("shuffle='block'") for line in recommend(result).lines())
    else:
        assert req.rows_per_request > 1000  # MiB-sized requests of whole runs of rows
        assert req.bytes_fetched == req.bytes_asked  # no gaps, nothing fetched twice
        assert not any(line.startswith("shuffle='block'") for line in recommend(result).lines())


def test_cli_bench_s3_text_json_and_storage_options(
    s3_bench: tuple[RangeServer, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = s3_bench
    args = ["bench", url, "--shuffle", "global", "--no-sweep", "--seconds", "20"]
    assert main([*args, "--storage-option", "gap_bytes=0", "--storage-option", "prefetch_bytes=1"]) == 0
    out = capsys.readouterr().out
    for line in ("requests ", "rows per request", "MB asked", "MB fetched", "p50", "p99", "in flight", "ranged GET"):
        assert line in out, out
    assert "recommended     shuffle='block'" in out and "as Loader(...) shuffle='block'" in out
    options = ["--storage-option", "request_bytes=64K", "--storage-option", "max_concurrency=3"]
    assert main([*args, "--json", *options]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 4000 and report["requests"]["max_concurrency"] == 3
    assert report["requests"]["rows_per_request"] > 1  # rows merged across the default 256 KiB gaps
    with pytest.raises(SystemExit):
        main(["bench", url, "--storage-option", "novalue"])
    assert "expected KEY=VALUE" in capsys.readouterr().err
    missing = url.replace("x.npy", "missing.npy")
    assert main(["bench", missing, "--no-sweep"]) == 1
    assert missing in capsys.readouterr().err


def test_request_stats_are_bounded_and_give_percentiles() -> None:
    stats = RequestStats()
    size = len(stats.histogram)
    latencies = np.random.default_rng(0).lognormal(np.log(0.02), 0.5, 100_000)
    for seconds in latencies:
        stats.record(1024, float(seconds))
    assert len(stats.histogram) == size and stats.requests == 100_000  # fixed size, however many requests
    for q in (0.5, 0.99):
        assert stats.latency(q) == pytest.approx(np.quantile(latencies, q), rel=0.06)  # one 6% bin
    before = stats.copy()
    stats.record(10, 5.0)
    spent = stats.since(before)
    assert (spent.requests, spent.bytes) == (1, 10) and spent.latency(0.5) == pytest.approx(5.0, rel=0.06)
    assert RequestStats().latency(0.5) == 0.0


def test_raw_object_read_goes_in_pieces_each_within_one_request(s3_bench: tuple[RangeServer, str]) -> None:
    server, url = s3_bench
    columns = npyfeed.Columns.of(url)
    objects = list(storages(columns))
    size = objects[0].size
    seen = server.requests
    speed, requests = raw_object_speed(objects, piece=100_000)
    assert requests == -(-size // 100_000) == server.requests - seen  # one GET per piece, nothing else
    assert speed > 0
    _, capped = raw_object_speed(objects, max_bytes=250_000, piece=100_000)
    assert capped == 3  # 100k + 100k + 50k: the cap ends the last piece early
