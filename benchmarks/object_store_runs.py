"""One measurement of ``benchmarks.object_store``, in a fresh process: ``python -m benchmarks.object_store_runs
JOB.json RESULT.json``.

The process reaches the loopback server as S3 through the standard environment the parent sets
(``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``, fake credentials; path-style URLs). Kinds of job:

- ``get``: one whole-object GET, streamed and dropped (obstore, 8 MiB chunks): the link's sequential limit;
- ``download``: the same GET written to a local file (what users do today), then a local ``npyfeed.Loader`` epoch
  in each order: time to first batch and total include the download;
- ``npyfeed``: ``npyfeed.Loader((x_url, y_url), ...)`` read in place, every batch checked (ids never repeat, labels
  equal ids, a full epoch has each id once, sampled batches byte-equal to ``np.load``);
- ``first``: the time to the first batch of a (sparse, 10 GB) object, that batch compared with ``np.load`` of the
  same file at the rows the loader says it holds, then reading on for a bounded number of rows (for memory).

Timing starts before the loader (or the GET) is built; the first batch's wait counts. Peak anonymous memory is
measured above a baseline taken after the imports (``benchmarks.memory``), CPU of this process, of the server
process and of everything else over the timed window (``benchmarks.cpu``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cpu import CpuMeter, tree_cpu_s
from benchmarks.data import BenchFiles
from benchmarks.memory import PeakAnonSampler
from benchmarks.verify import EpochChecker

__all__ = ["main", "run_job"]

CHUNK = 8 << 20  # whole-object GET: bytes handed to Python per chunk


class Meter:
    """Wall time, CPU (client, server, others) and peak anonymous memory over one timed window."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.cpu = CpuMeter()
        self.anon = PeakAnonSampler()

    def __enter__(self) -> Meter:
        self.anon.__enter__()
        self.server0 = tree_cpu_s(self.server_pid)
        self.cpu.start()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        self.cores_client, other = self.cpu.stop()
        self.cores_server = (tree_cpu_s(self.server_pid) - self.server0) / self.seconds
        self.cores_other = max(0.0, other - self.cores_server)
        self.anon.__exit__(None, None, None)

    def fields(self) -> dict[str, float]:
        return {
            "seconds": self.seconds,
            "cores_client": self.cores_client,
            "cores_server": self.cores_server,
            "cores_other": self.cores_other,
            "peak_anon_mb": self.anon.peak_above_baseline / 1e6,
        }


def _store(bucket: str) -> Any:
    from obstore.store import from_url

    return from_url(f"s3://{bucket}")  # endpoint, credentials and AWS_ALLOW_HTTP from the environment


def _stream(bucket: str, key: str) -> Iterator[Any]:
    import obstore

    yield from obstore.get(_store(bucket), key).stream(min_chunk_size=CHUNK)


def whole_get(job: dict[str, Any]) -> dict[str, Any]:
    size = Path(job["files"]["x"]).stat().st_size
    got, first = 0, 0.0
    with Meter(job["server_pid"]) as m:
        for chunk in _stream(job["bucket"], job["x_key"]):
            got += len(chunk)
            first = first or time.perf_counter() - m.started
    problem = None if got == size else f"got {got} bytes of {size}"
    return {**m.fields(), "first_s": first, "bytes": got, "requests": 1, "problem": problem, "complete": True}


def _epoch(loader: Any, checker: Any, max_seconds: float, max_rows: int, t0: float) -> dict[str, Any]:
    """Iterate one epoch (or until the caps, counted from the first batch), feeding every batch to ``checker.add``."""
    first = 0.0
    rows = 0
    complete = True
    for batch in loader:
        x, y = batch if isinstance(batch, tuple) else (batch, None)
        checker.add(x, y)
        rows += len(x)
        now = time.perf_counter()
        first = first or now - t0
        if now - t0 - first > max_seconds or rows >= max_rows:
            complete = rows == loader.num_rows
            break
    return {"first_s": first, "rows": rows, "complete": complete}


def _checked(files: BenchFiles, shuffle: str, batch: int) -> EpochChecker:
    return EpochChecker(files, shuffle != "none", batch)


def _request_stats(job: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    from npyfeed.storage.clients import get_client
    from npyfeed.storage.urls import parse_url

    stats = get_client(parse_url(f"s3://{job['bucket']}/{job['x_key']}"), options).stats
    # Summed request latencies over the wall time = mean requests in flight (Little's law).
    return {"requests": stats.requests, "bytes": stats.bytes, "retries": stats.retries, "request_s": stats.seconds}


def in_place(job: dict[str, Any]) -> dict[str, Any]:
    import npyfeed

    files = BenchFiles(**job["files"])
    checker = _checked(files, job["shuffle"], job["batch_size"])
    urls = tuple(f"s3://{job['bucket']}/{job[k]}" for k in ("x_key", "y_key"))
    options = dict(job["storage_options"])
    with Meter(job["server_pid"]) as m:
        loader = npyfeed.Loader(urls, job["batch_size"], shuffle=job["shuffle"], seed=0, storage_options=options)
        out = _epoch(loader, checker, job["max_seconds"], files.num_rows, m.started)
        loader.close()
    problem = checker.verdict(out["complete"])
    return {**m.fields(), **out, **_request_stats(job, options), "problem": problem}


def download(job: dict[str, Any]) -> dict[str, Any]:
    """Download x and y (one GET each, to local files), then one local epoch per order."""
    import npyfeed

    files = BenchFiles(**job["files"])
    target = Path(job["download_dir"])
    target.mkdir(parents=True, exist_ok=True)
    local = BenchFiles(**{**job["files"], "x": str(target / "x.npy"), "y": str(target / "y.npy")})
    checkers = {s: _checked(local, s, job["batch_size"]) for s in job["orders"]}
    results: dict[str, Any] = {}
    try:
        with Meter(job["server_pid"]) as m:
            for key, path in ((job["x_key"], local.x), (job["y_key"], local.y)):
                with open(path, "wb") as f:
                    for chunk in _stream(job["bucket"], key):
                        f.write(memoryview(chunk))
        results["download"] = m.fields()
        for shuffle, checker in checkers.items():
            with Meter(job["server_pid"]) as m:
                loader = npyfeed.Loader((local.x, local.y), job["batch_size"], shuffle=shuffle, seed=0)
                out = _epoch(loader, checker, job["max_seconds"], files.num_rows, m.started)
                loader.close()
            results[shuffle] = {**m.fields(), **out, "problem": checker.verdict(out["complete"])}
    finally:
        for p in (local.x, local.y):
            Path(p).unlink(missing_ok=True)
    return results


def first_batch(job: dict[str, Any]) -> dict[str, Any]:
    """The first batch of the big object, checked against ``np.load``; then reading on up to ``max_rows``."""
    import npyfeed

    url = f"s3://{job['bucket']}/{job['big_key']}"
    options = dict(job["storage_options"])
    oracle = np.load(job["big_path"], mmap_mode="r")
    kept: list[np.ndarray] = []

    class Keep:
        def add(self, x: np.ndarray, y: np.ndarray | None) -> None:
            if not kept:
                kept.append(np.array(x))

    with Meter(job["server_pid"]) as m:
        loader = npyfeed.Loader(url, job["batch_size"], shuffle=job["shuffle"], seed=0, storage_options=options)
        out = _epoch(loader, Keep(), job["max_seconds"], job["max_rows"], m.started)
        loader.close()
    rows = loader.batch_rows(0, 0)
    problem = None
    if not kept or kept[0].tobytes() != np.asarray(oracle[rows]).tobytes():
        problem = "the first batch differs from np.load of the file at the rows of batch 0"
    return {**m.fields(), **out, **_request_stats({**job, "x_key": job["big_key"]}, options), "problem": problem}


JOBS = {"get": whole_get, "npyfeed": in_place, "download": download, "first": first_batch}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    try:
        return JOBS[job["kind"]](job)
    except Exception as e:
        return {"failed": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


def main(argv: list[str] | None = None) -> None:
    job_path, result_path = argv or sys.argv[1:]
    job = json.loads(Path(job_path).read_text())
    result = run_job(job)
    Path(result_path).write_text(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # do not wait for the loader's daemon threads or the client's loop thread


if __name__ == "__main__":
    main()
