"""Runs ONE measurement in the current (fresh) process: ``python -m benchmarks.harness JOB.json RESULT.json``.

A fresh process per runner keeps memory numbers and framework state (TF thread pools, torch workers) from
leaking between runners. Timing starts when the loader is built and stops at the end of the epoch or
``max_seconds`` after the first batch (whose wait is also reported on its own); every batch is checked on the way
(see ``verify``).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from benchmarks.cpu import CpuMeter
from benchmarks.memory import PeakAnonSampler
from benchmarks.references import memcpy_mb_s, raw_read_mb_s
from benchmarks.registry import RUNNERS
from benchmarks.spec import Builder, Job, NotAvailable, Result, Runner
from benchmarks.verify import EpochChecker

__all__ = ["REFERENCES", "main", "run_job"]

MB = 1e6
REFERENCES = {"memcpy": "memory copy (1 thread, limit)", "raw-read": "raw sequential read of the file"}


def _result(job: Job, label: str, status: str, note: str = "", baseline: bool = False) -> Result:
    order = "shuffled" if job.shuffle else "sequential"
    return Result(job.runner, label, job.files.kind, order, job.cache, status, note, baseline=baseline)


def _reference(job: Job) -> Result:
    """The memory-copy limit or the file's raw sequential read speed, expressed per row of this dataset."""
    res = _result(job, REFERENCES[job.runner], "ok")
    cpu = CpuMeter()
    cpu.start()
    if job.runner == "memcpy":
        res.mb_per_s = memcpy_mb_s()
    else:
        res.mb_per_s, nbytes = raw_read_mb_s(job.files.x)
        res.seconds = nbytes / (res.mb_per_s * MB)
    res.cores_used, res.cores_other = cpu.stop()
    res.rows_per_s = res.mb_per_s * MB / job.files.row_kind.sample_bytes
    return res


def _builder(runner: Runner) -> Builder:
    """Import the runner's frameworks and builder; a failure means the runner is not available here."""
    try:
        for name in runner.imports:
            importlib.import_module(name)
        module_name, func = runner.target.split(":")
        return getattr(importlib.import_module(module_name), func)
    except Exception as e:  # ImportError, or anything a half-written package raises at import
        raise NotAvailable(f"not available: {type(e).__name__}: {e}") from e


def _timed_epoch(job: Job, build: Builder, checker: EpochChecker, res: Result) -> bool:
    """Iterate until the epoch ends or ``max_seconds`` pass after the first batch; True if cut short.

    The rate counts the wait for the first batch: it is paid every epoch (a shuffle buffer to fill, a cold file
    streamed into the page cache), and leaving it out would credit a loader with work done before the clock.
    """
    cpu = CpuMeter()
    cpu.start()
    start = time.perf_counter()
    first_at: float | None = None
    capped = False
    for x, y in build(job):
        now = time.perf_counter()
        if first_at is None:
            first_at, res.first_batch_s = now, now - start
        checker.add(x, y)
        if now - first_at >= job.max_seconds:
            capped = True
            break
    res.seconds = time.perf_counter() - start
    res.cores_used, res.cores_other = cpu.stop()
    res.rows = checker.rows
    res.epoch_fraction = checker.rows / job.files.num_rows
    res.rows_per_s = checker.rows / res.seconds if res.seconds > 0 else 0.0
    res.mb_per_s = res.rows_per_s * job.files.row_kind.sample_bytes / MB
    return capped and checker.rows < job.files.num_rows


def _loader(job: Job) -> Result:
    runner = RUNNERS[job.runner]
    try:
        build = _builder(runner)
        checker = EpochChecker(job.files, job.shuffle, job.batch_size)
        res = _result(job, runner.label, "ok", baseline=runner.baseline)
        with PeakAnonSampler() as mem:
            cut_short = _timed_epoch(job, build, checker, res)
    except NotAvailable as e:
        return _result(job, runner.label, "n/a", str(e), runner.baseline)
    except Exception as e:
        traceback.print_exc()
        return _result(job, runner.label, "error", f"{type(e).__name__}: {e}"[:300], runner.baseline)
    res.baseline_anon_mb = mem.baseline / MB
    res.peak_anon_mb = mem.peak_above_baseline / MB
    problem = checker.verdict(complete=not cut_short)
    if problem is not None:
        res.status, res.note = "WRONG", problem
    elif cut_short:
        res.note = f"time cap: {res.epoch_fraction:.0%} of the epoch"
    return res


def run_job(job: Job) -> Result:
    """Measure one job in this process."""
    return _reference(job) if job.runner in REFERENCES else _loader(job)


def main(argv: list[str]) -> None:
    job = Job.from_json(json.loads(Path(argv[1]).read_text()))
    result = run_job(job)
    Path(argv[2]).write_text(json.dumps(asdict(result)))
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: an abandoned iterator's workers (torch, Keras, tf.data) can block it.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
