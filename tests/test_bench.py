"""``npyfeed bench`` and the measurement helpers behind it (correctness of what is reported, not speed)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import npyfeed
from npyfeed.bench import drop_from_cache, raw_read_speed, recommend, run_bench
from npyfeed.cli import main


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
    result.trials = [{"num_threads": 7, "rows_per_s": 10 * result.rows_per_s}]
    assert recommend(result)[0].startswith("num_threads=7")
    result.trials, result.raw_bytes_per_s = [], 100 * result.bytes_per_s
    assert recommend(result)[0].startswith('shuffle="block"')


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
    assert report["recommended"]


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
