"""The TF path's speed (issue 10): ``to_tf_dataset()``, ``native=True``, the from_generator recipe and the numpy path.

    .venv/bin/python -m benchmarks.tf_path                 # 1 GiB files, 12 KiB and 1 KiB rows, 3 runs (~10 min)
    .venv/bin/python -m benchmarks.tf_path --quick         # small files, a smoke run (~1-2 min)
    .venv/bin/python -m benchmarks.tf_path --runners native,native@before --src before=/tmp/before/src

Warm page cache, batch 256, rows of 12 KiB (64x64x3 uint8 + int64 labels) and 1 KiB (256 float32), sequential
and shuffled. Each loader runs in a fresh process (``benchmarks.tf_consume``) on the same files, consumed two ways:
drained inside a ``tf.function`` the way ``model.fit`` drains it ("graph") and by a Python ``for`` ("eager"),
each touching one byte per 4 KiB of every batch. ``native`` reads shuffled data with ``shuffle="block"``
(it refuses a global shuffle), so its shuffled rows are labelled "block". Every epoch is checked (ids never
repeat, a full epoch has each once, labels equal ids, sampled batches equal ``np.load``'s rows): a failing
cell reads WRONG. GB/s counts delivered row + label bytes (10^9) from ``iter()`` to the end of the epoch (or
``--max-seconds``). Cells give the median of ``--runs`` epochs, with min-max; ``~`` flags a spread beyond
+-20% of the median, ``*`` a run during which other processes used >= 0.3 cores (a shared machine).
``RUNNER@NAME`` runs RUNNER with ``--src NAME=DIR`` (another ``src/`` tree) first on ``PYTHONPATH``. A last table
gives the CPU time the process spent per batch drained in a ``tf.function`` (its cores x seconds / batches), with
ratios to the ceiling and of each runner to its ``@NAME`` twin: on a shared machine it moves far less than GB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import pagecache
from benchmarks.data import ROW_KINDS, BenchFiles, make_files

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
RUNNERS = ("default", "views", "native", "recipe", "numpy", "ceiling")
LABELS = {
    "default": "npyfeed to_tf_dataset()",
    "views": "to_tf_dataset(views=True)",
    "native": "to_tf_dataset(native=True)",
    "recipe": "from_generator recipe",
    "numpy": "npyfeed numpy path",
    "ceiling": "TF in-memory slices (ceiling)",
}
TARGETS: tuple[tuple[str, str, float | None], ...] = (
    ("default", "lower", 0.8), ("default", "recipe", 1.0), ("native", "lower", 0.8), ("native", "recipe", 1.0),
    ("default", "numpy", None), ("ceiling", "numpy", None), ("default", "ceiling", None),
    ("views", "lower", None), ("views", "recipe", None),
)  # fmt: skip
# (a, b, target): the ratio a/b of medians, checked against the target; None: reported only (what TF allows).
# "lower" is the lower of the ceiling's and the numpy path's medians in the same cell (issue 21 item 2's reference).
_LOWER = ("ceiling", "numpy")
_SPREAD = 0.2
_DISTURBED = 0.3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tf_path", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--size-gb", type=float, help="size of each row file in GiB (default 1; --quick 1/32)")
    p.add_argument("--rows-kind", default="12k,1k", help="12k (64x64x3 uint8 + int64 labels), 1k (256 float32)")
    p.add_argument("--orders", default="sequential,shuffled")
    p.add_argument("--runners", default=",".join(RUNNERS), help=f"of {','.join(RUNNERS)}, each optionally @NAME")
    p.add_argument("--src", action="append", default=[], help="NAME=DIR: a src/ tree for RUNNER@NAME")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--runs", type=int, help="epochs per cell and way of consuming (default 3; --quick 1)")
    p.add_argument("--max-seconds", type=float, help="time cap per epoch (default 10; --quick 2)")
    p.add_argument("--segment", type=int, default=32, help="batches per tf.function call when draining")
    p.add_argument("--quick", action="store_true", help="small files and short caps: a smoke run")
    p.add_argument("--data-dir", type=Path, default=ROOT / "data" / "bench")
    p.add_argument("--output", type=Path, help="also write the report (markdown) here")
    p.add_argument("--json", type=Path, help="also write every raw result here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.size_gb is None:
        args.size_gb = 1 / 32 if args.quick else 1.0
    if args.max_seconds is None:
        args.max_seconds = 2.0 if args.quick else 10.0
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    return args


def _run_cell(cell: dict[str, Any], src: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(ROOT)]), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryDirectory(prefix="npyfeed-tfpath-") as tmp:
        job, out = Path(tmp) / "cell.json", Path(tmp) / "out.json"
        job.write_text(json.dumps(cell))
        log = ROOT / "data" / "bench" / "logs"
        log.mkdir(parents=True, exist_ok=True)
        name = f"tf_path_{cell['files']['kind']}_{cell['order']}_{cell['label']}.log".replace("@", "-")
        limit = cell["max_seconds"] * 20 + 300
        with (log / name).open("w") as f:
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "benchmarks.tf_consume", str(job), str(out)],
                    cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=limit,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                return {"error": f"no result after {limit:.0f} s, see {log / name}"}
        if not out.exists():
            return {"error": f"exit {proc.returncode}, see {log / name}"}
        return dict(json.loads(out.read_text()))


def _summary(result: dict[str, Any], way: str) -> dict[str, Any] | None:
    """median/min/max GB/s of one way of consuming, and what went wrong, if anything."""
    if "error" in result:
        return {"text": "error", "problem": result["error"], "median": None}
    epochs = [e for e in result["epochs"] if e["way"] == way]
    if not epochs:
        return None
    problems = [e["problem"] for e in epochs if e["problem"]]
    if problems:
        return {"text": "WRONG", "problem": problems[0], "median": None}
    rates = [e["gb_s"] for e in epochs]
    med, lo, hi = statistics.median(rates), min(rates), max(rates)
    flags = ("~" if hi > med * (1 + _SPREAD) or lo < med * (1 - _SPREAD) else "") + (
        "*" if any(e["cores_others"] >= _DISTURBED for e in epochs) else ""
    )
    partial = "" if all(e["complete"] for e in epochs) else " (capped)"
    text = f"{med:.2f} ({lo:.2f}-{hi:.2f}){flags}{partial}"
    return {"text": text, "problem": None, "median": med}


def report(results: dict[tuple[str, str, str], dict[str, Any]], args: argparse.Namespace, runners: list[str]) -> str:
    load = os.getloadavg()[0]
    lines = [
        f"# TF path, warm page cache, {args.size_gb:g} GiB files, batch {args.batch_size}, {args.runs} runs per "
        f"cell ({time.strftime('%Y-%m-%d %H:%M')}, load average {load:.1f} on {os.cpu_count()} CPUs)",
        "",
        "GB/s: median (min-max); ~ spread beyond +-20%, * disturbed (others used >= 0.3 cores); native shuffles"
        " by blocks. The numpy path is the same number in both tables (a Python for over the loader).",
    ]
    problems = []
    for way, title in (("graph", "drained in a tf.function (as model.fit)"), ("eager", "iterated eagerly")):
        bases = _bases(runners) | ({"lower"} if set(_LOWER) <= _bases(runners) else set())
        ratios = [(a, b, t) for a, b, t in TARGETS if a in bases and b in bases]
        head = [LABELS.get(r.split("@")[0], r) + (f" [{r.split('@')[1]}]" if "@" in r else "") for r in runners]
        head += [f"{_label(a)}/{_label(b)}" + ("" if t is None else f" (>= {t:g})") for a, b, t in ratios]
        lines += ["", f"## {title}", "", "| rows, order | " + " | ".join(head) + " |", "|---|" + "--:|" * len(head)]
        for kind in args.kinds:
            for order in args.order_list:
                cells, medians = [], {}
                for r in runners:
                    s = _summary(results.get((kind, order, r), {"error": "not run"}), "eager" if r == "numpy" else way)
                    if s is None:
                        cells.append("n/a")
                        continue
                    cells.append(s["text"] + (" block" if r.startswith("native") and order == "shuffled" else ""))
                    medians[r] = s["median"]
                    if s["problem"]:
                        problems.append(f"{kind} {order} {r} {way}: {s['problem']}")
                if all(medians.get(r) for r in _LOWER):
                    medians["lower"] = min(medians[r] for r in _LOWER)
                for a, b, t in ratios:
                    ma, mb = medians.get(a), medians.get(b)
                    verdict = "" if not ma or not mb or t is None else ("met" if ma / mb >= t else "NOT met")
                    cells.append("n/a" if not ma or not mb else f"{ma / mb:.2f}x {verdict}".rstrip())
                name = f"{'12 KiB' if kind == '12k' else '1 KiB'}, {order}"
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += _cpu_table(results, args, runners)
    lines += _setup_table(results, args, runners)
    if problems:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def _cpu_ms(result: dict[str, Any], way: str, batch_size: int) -> float | None:
    """Median CPU milliseconds the whole process spent per delivered batch (its own cores x seconds / batches)."""
    epochs = [e for e in result.get("epochs", []) if e["way"] == way and e["rows"] and not e["problem"]]
    if not epochs:
        return None
    return statistics.median(e["cores_own"] * e["seconds"] / (e["rows"] / batch_size) * 1e3 for e in epochs)


Results = dict[tuple[str, str, str], dict[str, Any]]


def _ratio(ms: dict[str, float | None], a: str, b: str) -> str:
    top, bottom = ms.get(a), ms.get(b)
    return "n/a" if not top or not bottom else f"{top / bottom:.2f}x"


def _cpu_table(results: Results, args: argparse.Namespace, runners: list[str]) -> list[str]:
    """CPU per batch drained in a tf.function (the numpy path: its for loop): what a feed costs the cores it shares
    with the training step, far steadier than GB/s on a shared machine. Ratios: to the ceiling, and each @NAME's
    to the same runner's (e.g. before/after a change)."""
    pairs = [(r, r.split("@")[0]) for r in runners if "@" in r and r.split("@")[0] in runners]
    to_ceiling = [r for r in runners if r != "ceiling"] if "ceiling" in runners else []
    head = [LABELS.get(r.split("@")[0], r) + (f" [{r.split('@')[1]}]" if "@" in r else "") for r in runners]
    head += [f"{r}/ceiling" for r in to_ceiling] + [f"{b}/{a}" for a, b in pairs]
    lines = ["", "## CPU ms per batch, drained in a tf.function (median; the numpy path: a Python for)", ""]
    lines += ["| rows, order | " + " | ".join(head) + " |", "|---|" + "--:|" * len(head)]
    for kind in args.kinds:
        for order in args.order_list:
            ms: dict[str, float | None] = {}
            for r in runners:
                result = results.get((kind, order, r), {})
                ms[r] = _cpu_ms(result, "eager" if r == "numpy" else "graph", args.batch_size)
            cells = ["n/a" if ms[r] is None else f"{ms[r]:.3f}" for r in runners]
            cells += [_ratio(ms, r, "ceiling") for r in to_ceiling] + [_ratio(ms, b, a) for a, b in pairs]
            name = f"{'12 KiB' if kind == '12k' else '1 KiB'}, {order}"
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _setup_table(results: Results, args: argparse.Namespace, runners: list[str]) -> list[str]:
    """Each graph epoch's fixed costs (medians): the CPU of ``iter()``, where tf.data instantiates the pipeline's
    functions for every iterator, and the wall time to the first batch; and that ``iter()`` CPU as a share of the
    epoch's CPU. On a small file (0.25 GiB of 12 KiB rows: 85 batches an epoch) they weigh on GB/s."""
    shown = [r for r in runners if r != "numpy"]
    head = [LABELS.get(r.split("@")[0], r) + (f" [{r.split('@')[1]}]" if "@" in r else "") for r in shown]
    lines = ["", "## Per-epoch setup, drained in a tf.function: iter() CPU ms / first batch ms / iter() share of the"
             " epoch's CPU (medians)", ""]  # fmt: skip
    lines += ["| rows, order | " + " | ".join(head) + " |", "|---|" + "--:|" * len(head)]
    for kind in args.kinds:
        for order in args.order_list:
            cells = []
            for r in shown:
                epochs = [
                    e for e in results.get((kind, order, r), {}).get("epochs", [])
                    if e["way"] == "graph" and not e["problem"] and "iter_cpu_ms" in e and "first_ms" in e
                ]  # fmt: skip
                if not epochs:
                    cells.append("n/a")
                    continue
                it = statistics.median(e["iter_cpu_ms"] for e in epochs)
                first = statistics.median(e["first_ms"] for e in epochs)
                share = statistics.median(
                    e["iter_cpu_ms"] / (e["cores_own"] * e["seconds"] * 1e3) for e in epochs if e["cores_own"] > 0
                ) if any(e["cores_own"] > 0 for e in epochs) else 0.0  # fmt: skip
                cells.append(f"{it:.1f} / {first:.1f} / {share:.0%}")
            name = f"{'12 KiB' if kind == '12k' else '1 KiB'}, {order}"
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _bases(runners: list[str]) -> set[str]:
    return {r for r in runners if "@" not in r}


def _label(runner: str) -> str:
    return runner


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.kinds = [k for k in args.rows_kind.split(",") if k]
    args.order_list = [o for o in args.orders.split(",") if o]
    for k in args.kinds:
        if k not in ROW_KINDS:
            sys.exit(f"unknown row kind {k!r}: expected one of {', '.join(ROW_KINDS)}")
    for o in args.order_list:
        if o not in ("sequential", "shuffled"):
            sys.exit(f"unknown order {o!r}: expected sequential or shuffled")
    srcs = {"": str(ROOT / "src")}
    for item in args.src:
        name, _, path = item.partition("=")
        if not name or not Path(path).is_dir():
            sys.exit(f"--src {item!r}: expected NAME=DIR with an existing directory")
        srcs[name] = str(Path(path).resolve())
    runners = [r for r in args.runners.split(",") if r]
    for r in runners:
        base, _, name = r.partition("@")
        if base not in RUNNERS or name not in srcs:
            sys.exit(f"unknown runner {r!r}: expected one of {', '.join(RUNNERS)}, optionally @NAME given by --src")
    results: dict[tuple[str, str, str], dict[str, Any]] = {}
    for kind in args.kinds:
        files: BenchFiles = make_files(args.data_dir, kind, int(args.size_gb * (1 << 30)), seed=args.seed)
        paths = [files.x] + ([files.y] if files.y else [])
        for order in args.order_list:
            for r in runners:
                base, _, name = r.partition("@")
                if base == "views" and order == "shuffled":
                    results[(kind, order, r)] = {"epochs": []}  # views=True refuses a shuffle: n/a
                    continue
                pagecache.warm(paths)
                cell = {
                    "runner": base, "label": r, "files": files.__dict__, "order": order, "shuffle": order == "shuffled",
                    "batch_size": args.batch_size, "runs": args.runs, "max_seconds": args.max_seconds,
                    "segment": args.segment, "seed": args.seed,
                }  # fmt: skip
                t0 = time.perf_counter()
                results[(kind, order, r)] = _run_cell(cell, srcs[name])
                print(f"{kind} {order} {r}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    text = report(results, args, runners)
    print(text)
    if args.output:
        args.output.write_text(text)
    if args.json:
        raw = [{"kind": k, "order": o, "runner": r, **v} for (k, o, r), v in results.items()]
        args.json.write_text(json.dumps(raw))


if __name__ == "__main__":
    main()
