"""The numpy path in file order against one copy of the same rows from the file's mapping (issue 21, item 3).

    .venv/bin/python -m benchmarks.numpy_path                       # 1 GiB files of 1 KiB and 12 KiB rows (~1 min)
    .venv/bin/python -m benchmarks.numpy_path --src before=/tmp/before/src   # + the same loop from another src/

Warm page cache, batch 256, rows of 1 KiB (256 float32) and 12 KiB (64x64x3 uint8), no labels. Each source tree
runs in a fresh process per row kind, which times, taking turns epoch by epoch (the order rotating each round):

- ``loader``: ``for batch in npyfeed.Loader(path, batch_size=256)`` (sequential, the defaults);
- ``copy``: the reference, each batch copied from ``np.load(path, mmap_mode="r")`` with ``np.copyto`` into one
  reused buffer on the consumer's thread (one copy of the same rows from a mapping of the same file: no index
  arrays, no checks, no threads);
- ``array``: the memmap recipe, ``np.array(x[i:i + 256])`` per batch (a fresh array each).

A first untimed round warms the mappings and checks the loader's batches byte for byte against the mapping
(none may be a view of it). Printed per row kind and tree: GB/s (10^9 bytes) median and best over ``--rounds``
epochs, the loader's median over the faster reference's (target >= 0.9x), CPU seconds per GB of each
(``time.process_time``, all threads: what a shared machine disturbs least) and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.pagecache import warm
from benchmarks.read_path import make_file

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.9

CHILD = r"""
import json, sys, time
import numpy as np
import npyfeed

path, batch, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
x = np.load(path, mmap_mode="r")
n = len(x)
buf = np.empty((batch, *x.shape[1:]), x.dtype)
loader = npyfeed.Loader(path, batch_size=batch, shuffle=False, seed=0)

def copy():
    for s in range(0, n, batch):
        e = min(s + batch, n)
        np.copyto(buf[: e - s], x[s:e])
    return n

def array():
    rows = 0
    for s in range(0, n, batch):
        rows += len(np.array(x[s : s + batch]))
    return rows

def run_loader():
    rows = 0
    for b in loader:
        rows += len(b)
    return rows

def check():
    rows = 0
    for b in loader:
        assert not np.may_share_memory(b, x), "a batch is a view of the file's mapping"
        assert np.array_equal(b.view(np.uint8), x[rows : rows + len(b)].view(np.uint8)), f"rows from {rows} differ"
        rows += len(b)
    assert rows == n, (rows, n)

check()
copy(); array()
runs = {"loader": run_loader, "copy": copy, "array": array}
out = {name: [] for name in runs}
names = list(runs)
for r in range(rounds):
    for name in names[r % 3 :] + names[: r % 3]:
        wall, cpu = time.perf_counter(), time.process_time()
        rows = runs[name]()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert rows == n, (name, rows, n)
        out[name].append({"s": wall, "cpu_s": cpu, "load": __import__("os").getloadavg()[0]})
print(json.dumps({"bytes": int(x.nbytes), "runs": out}))
"""


def run_child(path: Path, src: str, batch: int, rounds: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(batch), str(rounds)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"{path.name} ({src}) failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def summarize(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per run: median and best GB/s, median CPU seconds per GB, highest load average."""
    nbytes = result["bytes"]
    out = {}
    for name, runs in result["runs"].items():
        rates = [nbytes / r["s"] / 1e9 for r in runs]
        out[name] = {
            "median": statistics.median(rates),
            "best": max(rates),
            "cpu_per_gb": statistics.median(r["cpu_s"] for r in runs) / (nbytes / 1e9),
            "load": max(r["load"] for r in runs),
        }
    return out


def report(rows: list[tuple[str, str, dict[str, dict[str, float]]]], size_gb: float, batch: int) -> str:
    lines = [
        f"warm {size_gb:g} GiB files, batch {batch}, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
        f"load average now {os.getloadavg()[0]:.1f}",
        "",
        "| rows | src | loader GB/s median (best) | copy GB/s | np.array GB/s | loader / faster reference "
        f"(>= {TARGET}) | CPU s per GB: loader / copy | load avg (max) |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for kind, src, s in rows:
        ref = max(s["copy"]["median"], s["array"]["median"])
        ratio = s["loader"]["median"] / ref
        verdict = "met" if ratio >= TARGET else "NOT met"
        cells = [f"{s[k]['median']:.2f} ({s[k]['best']:.2f})" for k in ("loader", "copy", "array")]
        lines.append(
            f"| {kind} | {src} | {' | '.join(cells)} | {ratio:.2f}x {verdict} | "
            f"{s['loader']['cpu_per_gb']:.3f} / {s['copy']['cpu_per_gb']:.3f} | "
            f"{max(v['load'] for v in s.values()):.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m benchmarks.numpy_path", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--size-gb", type=float, default=1.0, help="size of each row file in GiB")
    p.add_argument("--rows-kind", default="1k,12k", help="1k (256 float32), 12k (64x64x3 uint8)")
    p.add_argument("--rounds", type=int, default=7, help="timed epochs of each loop, taking turns")
    p.add_argument("--repeat", type=int, default=1, help="fresh processes per tree and row kind, trees alternating")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--src", action="append", default=[], help="NAME=DIR: also run this src/ tree")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "bench-read")
    p.add_argument("--output", type=Path, help="also write the table (markdown) here")
    args = p.parse_args(argv)
    trees = {"npyfeed": str(ROOT / "src"), **dict(s.split("=", 1) for s in args.src)}
    rows = []
    for kind in [k for k in args.rows_kind.split(",") if k]:
        path = args.data / f"read_path_{kind}.npy"
        make_file(path, kind, args.size_gb)
        warm([str(path)])
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        for _ in range(args.repeat):
            for name, src in trees.items():
                results[name].append(run_child(path, str(Path(src).resolve()), args.batch_size, args.rounds))
        for name, found in results.items():
            runs = {k: [r for f in found for r in f["runs"][k]] for k in found[0]["runs"]}
            rows.append((kind, name, summarize({"bytes": found[0]["bytes"], "runs": runs})))
            medians = ", ".join(f"{k} {v['median']:.2f} GB/s" for k, v in rows[-1][2].items())
            print(f"{kind} {name}: {medians}", flush=True)
    table = report(rows, args.size_gb, args.batch_size)
    print("\n" + table)
    if args.output is not None:
        args.output.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
