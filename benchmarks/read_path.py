"""Warm read speed of the local read path: the SIGBUS guard and version checks vs ``pread`` vs the code before.

    .venv/bin/python -m benchmarks.read_path                        # 1 GiB files of 1 KiB and 12 KiB rows
    git archive 4557e1c src | tar -x -C /tmp/before                 # the read path before the guard, to compare
    .venv/bin/python -m benchmarks.read_path --before-src /tmp/before/src --seconds 3

Each variant runs in its own process on the same warm files: ``guard`` (default: mmap gathers, fstat/stat checks
around each, the SIGBUS handler), ``pread`` (``NPYFEED_SIGBUS_GUARD=0``: one ``pread`` per run of rows) and,
with ``--before-src``, ``before`` (that source tree on ``PYTHONPATH``). Measured per variant: ``NpyArray.read_rows``
of ~4 MiB sorted random batches (what one loader read task does), of 4 MiB sequential runs, and whole
``Loader`` epochs (shuffled, batch 256) through the numpy iterator, in rows/s (best of 3 trials x ``--repeat``
rounds, the variants taking turns).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

KINDS = {"1k": ((256,), np.float32), "12k": ((64, 64, 3), np.uint8)}

CHILD = """
import json, sys, time
import numpy as np
import npyfeed
path, seconds = sys.argv[1], float(sys.argv[2])
a = npyfeed.NpyArray(path)
n, per_task = len(a), max(1, (4 << 20) // a.row_bytes)
out = np.empty((per_task, *a.shape[1:]), a.dtype)
rng = np.random.default_rng(0)
def rate(make):
    best = 0.0
    for _ in range(3):
        t0, rows = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds / 3:
            a.read_rows(make(), out); rows += per_task
        best = max(best, rows / (time.perf_counter() - t0))
    return best
shuffled = rate(lambda: np.sort(rng.choice(n, per_task, replace=False)).astype(np.int64))
def seq():
    s = int(rng.integers(0, n - per_task)); return np.arange(s, s + per_task, dtype=np.int64)
sequential = rate(seq)
loader = npyfeed.Loader(path, batch_size=256, shuffle=True, seed=0)
best = 0.0
for _ in range(3):
    t0, rows = time.perf_counter(), 0
    for b in loader:
        rows += len(b)
        if time.perf_counter() - t0 > seconds / 3: break
    best = max(best, rows / (time.perf_counter() - t0))
print(json.dumps({"read_rows shuffled": shuffled, "read_rows sequential": sequential, "Loader shuffled": best}))
"""


def make_file(path: Path, kind: str, size_gb: float) -> None:
    shape, dtype = KINDS[kind]
    row_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    rows = int(size_gb * (1 << 30)) // row_bytes
    if path.exists():
        a = np.load(path, mmap_mode="r")
        if a.shape == (rows, *shape) and a.dtype == dtype:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.lib.format.open_memmap(path, "w+", dtype, (rows, *shape))
    step = max(1, (64 << 20) // row_bytes)
    for s in range(0, rows, step):
        a[s : s + step] = np.random.default_rng(s).integers(0, 255, (min(step, rows - s), *shape)).astype(dtype)
    a.flush()
    del a


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement (split into 3 trials)")
    p.add_argument("--data", type=Path, default=Path("data/bench-read"))
    p.add_argument("--before-src", type=Path, help="a source tree (the src/ dir) to measure as 'before'")
    p.add_argument("--repeat", type=int, default=2, help="rounds over all variants (best kept: a shared machine)")
    args = p.parse_args()
    here = str(Path(__file__).resolve().parents[1] / "src")
    variants = {"guard": ({}, here), "pread": ({"NPYFEED_SIGBUS_GUARD": "0"}, here)}
    if args.before_src:
        variants["before"] = ({}, str(args.before_src.resolve()))
    rows = []
    for kind in KINDS:
        path = args.data / f"read_path_{kind}.npy"
        make_file(path, kind, args.size_gb)
        with path.open("rb") as f:  # warm the page cache
            while f.read(64 << 20):
                pass
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.repeat):  # round-robin, so a busy moment hits every variant alike
            for name, (env, src) in variants.items():
                env = {**os.environ, **env, "PYTHONPATH": src}
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, str(path), str(args.seconds)], env=env, capture_output=True, text=True
                )
                if out.returncode:
                    sys.exit(f"{name} {kind} failed: {out.stderr[-2000:]}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                best[name] = {m: max(v, best.get(name, {}).get(m, 0.0)) for m, v in result.items()}
        rows += [(kind, name, result) for name, result in best.items()]
    load = os.getloadavg()[0]
    print(
        f"\nwarm {args.size_gb:g} GiB files, {time.strftime('%Y-%m-%d %H:%M')}, load average {load:.1f} "
        f"on {os.cpu_count()} CPUs\n"
    )
    metrics = list(rows[0][2])
    print("| rows | variant | " + " | ".join(f"{m} (k rows/s)" for m in metrics) + " |")
    print("|---|---|" + "--:|" * len(metrics))
    for kind, name, result in rows:
        base = next(r for k, n, r in rows if k == kind and n == ("before" if args.before_src else "guard"))
        cells = [f"{result[m] / 1e3:,.0f} ({result[m] / base[m]:.2f}x)" for m in metrics]
        print(f"| {kind} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
