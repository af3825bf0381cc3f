"""An n-worker epoch on one machine (n = 1, 2): per-worker rows/s, and total I/O = one epoch, not n epochs.

    python -m benchmarks.sharded_epoch [--mib 256] [--workers 1 2] [--cold]

Each worker is a process reading ``Loader(..., shuffle=True, shard=(i, n))``; it reports rows/s and its
bytes its storage backend was asked for (a counting wrapper) and, with ``--cold`` (drops the page cache
before each run, needs root), ``read_bytes`` (bytes fetched from storage). Summed over the workers, both stay at
one epoch's bytes for any n: the shards are disjoint (tf.data AutoShard's DATA fallback would read n epochs).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from npyfeed import Loader, NpyArray
from npyfeed.storage import open_storage

ROW_BYTES = 4096


def _io() -> dict[str, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {k: int(fields[k]) for k in ("rchar", "read_bytes")}


class CountingStorage:
    """A storage backend that counts the bytes the loader asks it for (a counting source)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.bytes = inner, 0

    def read_into(self, offset: int, out: np.ndarray) -> None:
        self.bytes += out.nbytes
        self.inner.read_into(offset, out)

    def gather(self, base: int, record_bytes: int, indices: np.ndarray, out: np.ndarray) -> None:
        self.bytes += out.nbytes
        self.inner.gather(base, record_bytes, indices, out)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _worker(path: str, index: int, count: int, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    storage = CountingStorage(open_storage(path))
    loader = Loader(NpyArray(storage), 256, shuffle=True, seed=0, shard=(index, count), io_hints=False)
    before, started, rows = _io(), time.perf_counter(), 0
    header_bytes = storage.bytes
    for batch in loader:
        rows += len(batch)
    elapsed = time.perf_counter() - started
    after = _io()
    counters = {k: after[k] - before[k] for k in after}
    queue.put({"index": index, "rows": rows, "seconds": elapsed, "counted": storage.bytes - header_bytes, **counters})


def run(path: str, count: int, cold: bool) -> list[dict[str, float]]:
    if cold:
        os.sync()  # dirty pages (the file was just written) survive drop_caches
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [multiprocessing.Process(target=_worker, args=(path, i, count, queue)) for i in range(count)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return sorted(results, key=lambda r: r["index"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cold", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        path = str(Path(d) / "x.npy")
        rows = args.mib * (1 << 20) // ROW_BYTES
        np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, ROW_BYTES))[:] = 7
        epoch = rows * ROW_BYTES
        print(f"{rows} rows of {ROW_BYTES} B ({args.mib} MiB), {'cold' if args.cold else 'warm'} page cache")
        print("| workers | worker | rows | rows/s | bytes asked / epoch | read_bytes / epoch |")
        print("|---|---|---|---|---|---|")
        for count in args.workers:
            results = run(path, count, args.cold)
            for r in results:
                print(
                    f"| {count} | {r['index']} | {r['rows']} | {r['rows'] / r['seconds']:,.0f} | "
                    f"{r['counted'] / epoch:.3f} | {r['read_bytes'] / epoch:.3f} |"
                )
            total = sum(r["rows"] for r in results)
            print(
                f"| {count} | all | {total} | | {sum(r['counted'] for r in results) / epoch:.3f} | "
                f"{sum(r['read_bytes'] for r in results) / epoch:.3f} |"
            )


if __name__ == "__main__":
    main()
