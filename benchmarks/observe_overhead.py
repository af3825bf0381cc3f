"""What measuring the data wait costs (loader.metrics): the hooks' time per batch against an epoch's time.

Two measures, on the same warm file: (1) the hooks the read path runs per read task the consumer takes (two
clock reads and one ``record_chunk``) timed alone over many calls, times the epoch's read tasks, as a fraction of
the epoch's time; (2) whole epochs with the hooks in place and with them replaced by no-ops, alternated, medians
compared (noisy on a shared machine: (1) is the number to trust).

    .venv/bin/python -m benchmarks.observe_overhead            # 256 MiB of 1 KiB rows, batches of 32 and 256
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import npyfeed
from npyfeed.loader.metrics import DataWait


def hook_seconds(calls: int = 200_000) -> float:
    """Seconds per read task of the hooks the read path runs (one record per read task taken)."""
    m = DataWait()
    began = time.perf_counter()
    for _ in range(calls):
        asked = time.perf_counter()
        got = time.perf_counter()
        m.record_chunk(got - asked, 1, 32, 32 * 1024, asked=asked, queue=1e-5, depth=4, read=1e-4, transform=0.0)
    return (time.perf_counter() - began) / calls


class _Off(DataWait):
    def record_chunk(self, *a: Any, **k: Any) -> None:
        pass


def epoch_seconds(path: str, batch_size: int, off: bool) -> float:
    loader = npyfeed.Loader(path, batch_size=batch_size, shuffle=True, seed=0)
    if off:
        loader.read_path.metrics = _Off()
    began = time.perf_counter()
    for _ in loader:
        pass
    loader.close()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    a = parser.parse_args()
    per_batch = hook_seconds()
    print(f"hooks: {per_batch * 1e6:.2f} us per read task (load average {os.getloadavg()[0]:.1f})")
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "x.npy")
        rows = a.size_mib * 1024
        np.save(path, np.ones((rows, 256), np.float32))
        for batch_size in (32, 256, 4096):
            batches = -(-rows // batch_size)
            reads = -(-batches // npyfeed.Loader(path, batch_size=batch_size).batches_per_read)
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(a.repeats):
                for off in (False, True):
                    times[off].append(epoch_seconds(path, batch_size, off))
            on, off_ = statistics.median(times[False]), statistics.median(times[True])
            print(
                f"batch {batch_size}: {batches} batches, epoch {on:.3f} s with hooks, {off_:.3f} s without "
                f"({(on / off_ - 1) * 100:+.1f}%, noise); hooks alone ({reads} reads) "
                f"{per_batch * reads / on * 100:.3f}% of the epoch"
            )


if __name__ == "__main__":
    main()
