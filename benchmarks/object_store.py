"""A multi-GB ``.npy`` read in place from S3 (a loopback server) against one whole-object GET and download-then-read.

    python -m benchmarks.object_store                    # 3 GB object, +0 and +20 ms per request (~6-10 min)
    python -m benchmarks.object_store --quick            # ~1 minute: a 256 MB object, short caps
    python -m benchmarks.object_store --size-gb 4 --latency-ms 20 --max-seconds 20 --output object.md

The object is a benchmark file of ``benchmarks.data`` (12 KiB uint8 images whose first 8 bytes hold the row's
index, and an int64 label file ``y[i] == i``), served by ``benchmarks.s3_server`` (sendfile, ``Range``, ``ETag``,
``If-Match``) in its own process on 127.0.0.1 and read as ``s3://bench/...`` through the standard environment
(``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``, fake credentials, path-style). In one run, on the same object, each in a
fresh process: one whole-object GET (the link's sequential limit here, measured first and last: the best counts),
npyfeed sequential, block shuffle and global shuffle, and the baseline users have today (download the object with
one GET, then read it locally with npyfeed: time to first batch and total, download included). All of it again with
``--latency-ms`` added by the server before every answer (a store's per-request latency), where a block shuffle
limited to 2 requests in flight shows what requests in flight are worth. Then the first batch of a sparse 10 GB
object (``truncate`` + a header: no disk) in each order, reading on for as many rows as the main object has, so its
peak anonymous memory can be compared with the main object's.

Every row is verified (``benchmarks.verify``: ids never repeat, a whole epoch has each id once, labels equal ids,
sampled batches byte-equal to ``np.load``; the 10 GB object's first batch byte-equal to ``np.load`` at the rows the
loader says batch 0 holds). The report prints ratios to the whole-object GET of the same latency and the issue's
targets. The server and the client share the machine's cores: each row says how many each used.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.data import ID_BYTES, ROW_KINDS, BenchFiles, make_files
from benchmarks.s3_server import ServerProcess

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "bench"
KIND = "12k"
ORDERS = {"none": "sequential", "block": "block shuffle", "global": "global shuffle"}
MB = 1e6
_REAL_ROWS_BYTES = 16 << 20  # the sparse object's first rows hold their ids (its sequential first batch is checked)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=3.0, help="the object read in full (default 3)")
    parser.add_argument("--big-gb", type=float, default=10.0, help="the sparse object's size (first batch, memory)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="latency of the second pass (0: none)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="cap per read, after its first batch")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dir", type=Path, default=ROOT / "data" / "bench-object")
    parser.add_argument("--quick", action="store_true", help="a 256 MB object and 4 s caps (~1 minute)")
    parser.add_argument("--output", type=Path, help="also write the report here (markdown)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_gb, args.max_seconds = 0.25, 4.0
    return args


def sparse_object(root: Path, size_bytes: float) -> Path:
    """A ``.npy`` of ``size_bytes`` of 12 KiB rows that costs no disk: a header, real rows at the start, holes."""
    kind = ROW_KINDS[KIND]
    rows = int(size_bytes) // kind.row_bytes
    path = root / f"big_{KIND}_{rows}.npy"
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp.npy")
    x = np.lib.format.open_memmap(tmp, mode="w+", dtype=kind.dtype, shape=(rows, *kind.row_shape))  # sparse
    real = min(rows, _REAL_ROWS_BYTES // kind.row_bytes)
    ids = np.arange(real, dtype="<i8").view(np.uint8).reshape(real, ID_BYTES)
    x[:real].reshape(real, -1)[:, :ID_BYTES] = ids
    x.flush()
    del x
    tmp.replace(path)
    return path


def run_step(job: dict[str, Any], server: ServerProcess, log_dir: Path, name: str) -> dict[str, Any]:
    """Run one job in a fresh process that reaches ``server`` as S3."""
    log_dir.mkdir(parents=True, exist_ok=True)
    job_path, result_path, log_path = (log_dir / f"{name}.{ext}" for ext in ("job.json", "result.json", "log"))
    job_path.write_text(json.dumps({**job, "server_pid": server.proc.pid}))
    result_path.unlink(missing_ok=True)
    env = {**os.environ, **server.env}
    cmd = [sys.executable, "-m", "benchmarks.object_store_runs", str(job_path), str(result_path)]
    with log_path.open("w") as log:
        try:
            subprocess.run(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=900, check=False)
        except subprocess.TimeoutExpired:
            return {"failed": f"timed out after 900 s (log: {log_path})"}
    if not result_path.exists():
        return {"failed": f"no result (log: {log_path})"}
    return dict(json.loads(result_path.read_text()))


def plan(args: argparse.Namespace, files: BenchFiles, big: Path, latency: float) -> list[tuple[str, dict[str, Any]]]:
    """The steps of one pass, in the order they run."""
    common = {
        "bucket": BUCKET,
        "x_key": Path(files.x).name,
        "y_key": Path(files.y or "").name,
        "files": files.__dict__,
        "batch_size": args.batch_size,
        "max_seconds": args.max_seconds,
        "storage_options": {},
    }
    steps: list[tuple[str, dict[str, Any]]] = [("get", {**common, "kind": "get"})]
    for order in ORDERS:
        steps.append((order, {**common, "kind": "npyfeed", "shuffle": order}))
    if latency > 0:
        two = {**common, "kind": "npyfeed", "shuffle": "block", "storage_options": {"max_concurrency": 2}}
        steps.append(("block-2", two))
    download = {**common, "kind": "download", "orders": list(ORDERS), "download_dir": str(args.dir / "download")}
    steps += [("download", download), ("get-again", {**common, "kind": "get"})]
    for order in ORDERS:
        first = {**common, "kind": "first", "shuffle": order, "big_key": big.name, "big_path": str(big)}
        steps.append((f"big-{order}", {**first, "max_rows": files.num_rows}))
    return steps


def warm(*paths: str) -> None:
    """Read the object once so the server serves it from the page cache (the link, not the disk, is measured)."""
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(16 << 20):
                pass


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    bucket_dir = args.dir / "s3" / BUCKET
    started = time.time()
    print(f"making the data in {bucket_dir} (reused by later runs) ...", file=sys.stderr, flush=True)
    files = make_files(bucket_dir, KIND, int(args.size_gb * 1e9))
    big = sparse_object(bucket_dir, args.big_gb * 1e9)
    warm(files.x, files.y or files.x)
    results: dict[str, dict[str, Any]] = {}
    latencies = [0.0] + ([args.latency_ms] if args.latency_ms > 0 else [])
    for latency in latencies:
        server = ServerProcess(args.dir / "s3", latency)
        try:
            steps = plan(args, files, big, latency)
            for i, (name, job) in enumerate(steps):
                print(f"+{latency:g} ms [{i + 1}/{len(steps)}] {name} ...", file=sys.stderr, flush=True)
                results[f"{latency:g}/{name}"] = run_step(job, server, args.dir / "logs", f"{latency:g}ms-{name}")
        finally:
            server.stop()
    from benchmarks.object_store_report import render

    text = render(args, files, big, latencies, results, time.time() - started)
    print(text)
    if args.output:
        args.output.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
