"""Interpreter exit, Ctrl-C and errors with a live ``to_tf_dataset()`` iterator (see :mod:`npyfeed.adapters.tf_calls`).

The exit hang was intermittent (most runs, not all), so each scenario runs in many fresh processes: a helper
script imports TensorFlow once and forks a child per run (``tests/scripts/tf_exit.py``), and finally exits with a
live iterator itself. ``NPYFEED_TF_EXIT_RUNS=50`` multiplies the runs for a soak test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from npyfeed.adapters.tf_calls import Gate, InterpreterExiting

SCRIPT = Path(__file__).parent / "scripts" / "tf_exit.py"
# scenario: runs (the shuffled exit hung in most runs before the fix, Ctrl-C in about half)
RUNS = {
    "exit_live": 4,
    "exit_live_seq": 1,
    "exit_live_block": 1,
    "exit_transform": 1,
    "exit_graph": 2,
    "exit_raise": 1,
    "sigint": 3,
    "transform_error": 1,
}
EXIT_S = 30.0  # a healthy exit takes 2-7 s here (TensorFlow's own teardown, on a loaded machine); a hang is forever


def test_gate_refuses_after_close_and_drain_waits_for_calls_in_flight() -> None:
    gate = Gate()
    assert gate.call(lambda a, b: a + b, 1, 2) == 3
    started, release = threading.Event(), threading.Event()
    results: list[object] = []

    def slow() -> str:
        started.set()
        release.wait(5)
        return "done"

    worker = threading.Thread(target=lambda: results.append(gate.call(slow)))
    worker.start()
    started.wait(5)
    threading.Timer(0.3, release.set).start()
    began = time.monotonic()
    assert gate.drain(quiet=0.05, timeout=10)
    assert time.monotonic() - began >= 0.25  # waited for the call in flight
    worker.join(5)
    assert results == ["done"]
    with pytest.raises(InterpreterExiting):
        gate.call(slow)
    # a call that never finishes: drain gives up instead of hanging the exit
    stuck = Gate()
    never = threading.Event()
    threading.Thread(target=stuck.call, args=(never.wait, 3), daemon=True).start()
    time.sleep(0.05)
    assert not stuck.drain(quiet=0.05, timeout=0.3)
    never.set()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_exit_ctrl_c_and_errors_with_a_live_iterator_never_hang(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((20000, 256), dtype=np.float32))  # 1 KiB rows
    np.save(tmp_path / "ids.npy", np.arange(20000, dtype=np.int64))
    scale = int(os.environ.get("NPYFEED_TF_EXIT_RUNS", "1"))
    args = [f"{name}:{runs * scale}" for name, runs in RUNS.items()]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    limit = 120 + 60 * sum(RUNS.values()) * scale
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), *args], capture_output=True, text=True, env=env, timeout=limit
    )
    # the helper itself ends with a live iterator: a plain process (no fork) exiting cleanly
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"scenario"')]
    assert len(runs) == sum(RUNS.values()) * scale
    for run in runs:
        where = f"{run['scenario']} run {run['run']}: {run['tail']}"
        assert run["end"] is not None and run["end"]["event"] == "end", where
        assert run["signal"] != 9, f"hung at exit, killed after {run['run_s']:.0f} s: {where}"
        assert run["exit_s"] < EXIT_S, where
        if run["scenario"] == "sigint":
            assert run["signal"] == 2, where  # KeyboardInterrupt, then Python's exit by SIGINT after finalization
        else:
            assert run["code"] == (1 if run["scenario"] == "exit_raise" else 0), where
        if run["scenario"] == "transform_error":
            # every good batch first, then an error naming the batch, its epoch, the files and the cause
            assert run["end"]["batches"] == 5, where
            error = run["end"]["error"]
            assert "batch 5 of epoch 1" in error and str(tmp_path / "x.npy") in error, where
            assert "ValueError: bad row" in error, where
