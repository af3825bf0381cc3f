"""Markdown tables of the results, ratios to the limit and to the best correct baseline, and the issue's targets."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import replace
from importlib import metadata
from pathlib import Path

from benchmarks.data import ROW_KINDS
from benchmarks.spec import Result

__all__ = ["cap_table", "group_tables", "machine_description", "targets"]

_HEAD = (
    "| loader | rows/s | MB/s | x copy limit | x best baseline | peak anon MB | 1st batch s | epoch read "
    "| cores: own / others | check |"
)
_RULE = "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _fio_version() -> str:
    exe = shutil.which("fio")
    if exe is None:
        return "not installed"
    return subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()


def _read_ahead_kb(path: str) -> str:
    """read_ahead_kb of the block device holding ``path`` (via /sys/dev/block/MAJ:MIN)."""
    dev = Path(path).stat().st_dev
    queue = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    for candidate in (queue / "queue/read_ahead_kb", queue / "../queue/read_ahead_kb"):
        if candidate.exists():
            return candidate.read_text().strip()
    return "?"


def _revision() -> str:
    """The commit measured, and whether ``src/`` had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "src"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"commit {head}" + (" + uncommitted changes in src/" if dirty else "")


def machine_description(data_dir: str) -> list[str]:
    """Bullet lines describing the machine and the software versions measured."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    versions = ", ".join(f"{d} {_version(d)}" for d in ("numpy", "tensorflow-cpu", "keras", "torch", "npyfeed"))
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores; RAM {mem_kib / 2**20:.1f} GiB; kernel {platform.release()}",
        f"- disk holding the data: read_ahead_kb = {_read_ahead_kb(data_dir)}",
        f"- Python {platform.python_version()}; {versions}; {_fio_version()}; npyfeed at {_revision()}",
    ]


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _check(r: Result) -> str:
    if r.status == "ok":
        return "ok" + (f" ({r.note})" if r.note else "")
    return f"**{r.status}**: {r.note}" if r.status == "WRONG" else f"{r.status} ({r.note})"


def _per_row(ref: Result, kind: str) -> Result:
    """A bandwidth reference restated in rows/s of ``kind``."""
    return replace(ref, kind=kind, rows_per_s=ref.mb_per_s * 1e6 / ROW_KINDS[kind].sample_bytes)


def _best_baseline(results: Iterable[Result]) -> float:
    return max((r.rows_per_s for r in results if r.baseline and r.status == "ok"), default=0.0)


def _row(r: Result, limit_mb_s: float, best: float) -> str:
    if r.status != "ok":
        return f"| {r.label} | - | - | - | - | - | - | - | - | {_check(r)} |"
    is_ref = r.runner in ("memcpy", "raw-read")
    vs_best = "-" if is_ref or best <= 0 else f"{r.rows_per_s / best:.2f}x"
    vs_limit = f"{r.mb_per_s / limit_mb_s:.2f}x" if limit_mb_s > 0 else "-"
    mem = "-" if is_ref else _fmt(r.peak_anon_mb, 1)
    first = "-" if is_ref else _fmt(r.first_batch_s, 2)
    read = "-" if is_ref else f"{r.epoch_fraction:.0%}"
    return (
        f"| {r.label} | {_fmt(r.rows_per_s)} | {_fmt(r.mb_per_s)} | {vs_limit} | {vs_best} | {mem} | {first} "
        f"| {read} | {_cores(r)} | {_check(r)} |"
    )


def _cores(r: Result) -> str:
    return f"{r.cores_used:.1f} / {r.cores_other:.1f}"


def group_tables(results: list[Result], sizes: dict[str, str]) -> list[str]:
    """One table per (row kind, cache state, order), with the references on top."""
    limit = next((r for r in results if r.runner == "memcpy"), None)
    limit_mb_s = limit.mb_per_s if limit and limit.status == "ok" else 0.0
    lines: list[str] = []
    loaders = [r for r in results if r.runner not in ("memcpy", "raw-read") and "cap" not in r.cache]
    keys = dict.fromkeys((r.kind, r.cache, r.order) for r in loaders)
    for kind, cache, order in keys:
        group = [r for r in loaders if (r.kind, r.cache, r.order) == (kind, cache, order)]
        raw = [r for r in results if r.runner == "raw-read" and (r.kind, r.cache) == (kind, cache)]
        refs = ([_per_row(limit, kind)] if limit else []) + raw
        best = _best_baseline(group)
        lines += [f"### {ROW_KINDS[kind].description} -- {order}, {cache} page cache ({sizes[kind]})", "", _HEAD, _RULE]
        lines += [_row(r, limit_mb_s, best) for r in refs + group]
        lines.append("")
    return lines


def cap_table(results: list[Result], fio: dict[int, tuple[float | None, str]], cap_text: str) -> list[str]:
    """The larger-than-RAM rows: loaders in the cgroup vs the recipe and vs fio's random-read IOPS."""
    capped = [r for r in results if "cap" in r.cache]
    recipe_result, recipe_name = cap_recipe(capped)
    recipe = recipe_result.rows_per_s if recipe_result else 0.0
    qd16 = fio.get(16, (None, ""))[0]
    lines = [
        f"### Larger than RAM: {cap_text}",
        "",
        "| loader | rows/s | MB/s | x recipe | x fio QD16 IOPS | cgroup peak MB | peak anon MB | rows read "
        "| cores: own / others | check |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in capped:
        cg = _fmt(r.cgroup_peak_mb or 0)
        if r.status != "ok":
            lines.append(f"| {r.label} | - | - | - | - | {cg} | - | - | - | {_check(r)} |")
            continue
        vs_recipe = f"{r.rows_per_s / recipe:,.1f}x" if recipe > 0 else "-"
        vs_fio = f"{r.rows_per_s / qd16:.2f}x" if qd16 else "n/a"
        lines.append(
            f"| {r.label} | {_fmt(r.rows_per_s)} | {_fmt(r.mb_per_s, 1)} | {vs_recipe} | {vs_fio} | {cg} "
            f"| {_fmt(r.peak_anon_mb, 1)} | {_fmt(r.rows)} | {_cores(r)} | {_check(r)} |"
        )
    for depth, (iops, why) in sorted(fio.items(), reverse=True):
        name = f"fio 4 KiB O_DIRECT randread, iodepth {depth} (IOPS)"
        if iops is None:
            lines.append(f"| {name} | n/a | | | | | | | | {why} |")
            continue
        vs_fio = f"{iops / qd16:.2f}x" if qd16 else "-"
        lines.append(f"| {name} | {_fmt(iops)} | {_fmt(iops * 4096 / 1e6, 1)} | | {vs_fio} | | | | | device |")
    if recipe_result is not None and recipe_result.runner != "recipe":
        lines += ["", f"x recipe is against the {recipe_name}: the TF recipe itself did not run in the cap."]
    return [*lines, ""]


def cap_recipe(capped: list[Result]) -> tuple[Result | None, str]:
    """The recipe to compare with in the cap: the TF one, or its bare memmap data path if TF did not survive."""
    tf_recipe = _ok(capped, runner="recipe")
    if tf_recipe is not None:
        return tf_recipe, "recipe"
    return _ok(capped, runner="memmap-gather"), "recipe's numpy data path (memmap gather; TF recipe failed)"


def _ok(results: list[Result], **match: str) -> Result | None:
    for r in results:
        if r.status == "ok" and all(getattr(r, k) == v for k, v in match.items()):
            return r
    return None


def _ratio_line(name: str, value: float | None, goal: float, unit: str) -> str:
    if value is None:
        return f"- {name}: n/a (a row is missing or not correct)"
    verdict = "met" if value >= goal else "NOT met"
    return f"- {name}: {value:.2f}{unit} (goal >= {goal}{unit}) -- {verdict}"


def targets(results: list[Result], fio: dict[int, tuple[float | None, str]]) -> list[str]:
    """The issue's targets, evaluated on this run's numbers."""
    lines = [line for kind in ROW_KINDS for line in _warm_targets(results, kind)]
    cap = [r for r in results if "cap" in r.cache]
    lines += _cap_targets(cap, fio) if cap else ["- larger than RAM: not measured (needs --cap-test and root)"]
    return [*lines, _memory_target(results)]


def _vs_best(name: str, group: list[Result], runner: str, goal: float) -> str:
    r, best = _ok(group, runner=runner), _best_baseline(group)
    return _ratio_line(f"{name} vs best baseline", r.rows_per_s / best if r and best > 0 else None, goal, "x")


def _warm_targets(results: list[Result], kind: str) -> list[str]:
    shuffled, sequential = (
        [r for r in results if (r.kind, r.order, r.cache) == (kind, order, "warm")]
        for order in ("shuffled", "sequential")
    )
    limit, npy = _ok(results, runner="memcpy"), _ok(sequential, runner="npyfeed")
    return [
        _vs_best(f"warm shuffled {kind}: numpy path", shuffled, "npyfeed", 4.0),
        _vs_best(f"warm shuffled {kind}: tf.data path", shuffled, "npyfeed-tf", 2.0),
        _ratio_line(
            f"warm sequential {kind}: numpy path vs memory copy",
            npy.mb_per_s / limit.mb_per_s if npy and limit else None,
            0.75,
            "x",
        ),
        _vs_best(f"warm sequential {kind}: tf.data path", sequential, "npyfeed-tf", 2.0 if kind == "1k" else 1.0),
    ]


def _cap_targets(cap: list[Result], fio: dict[int, tuple[float | None, str]]) -> list[str]:
    npy, (recipe, recipe_name) = _ok(cap, runner="npyfeed"), cap_recipe(cap)
    qd16 = fio.get(16, (None, ""))[0]
    return [
        _ratio_line(
            f"larger than RAM: numpy path vs {recipe_name}",
            npy.rows_per_s / recipe.rows_per_s if npy and recipe else None,
            100.0,
            "x",
        ),
        _ratio_line(
            "larger than RAM: numpy path rows/s vs fio QD16 IOPS",
            npy.rows_per_s / qd16 if npy and qd16 else None,
            0.6,
            "x",
        ),
    ]


def _memory_target(results: list[Result]) -> str:
    peaks = [r for r in results if r.runner == "npyfeed" and r.status == "ok"]
    listed = "; ".join(f"{r.kind} {r.order} {r.cache}: {r.peak_anon_mb:.1f} MB" for r in peaks)
    worst = max((r.peak_anon_mb for r in peaks), default=None)
    verdict = (
        "n/a" if worst is None else "met (before counting the prefetch buffers)" if worst <= 100 else "check by hand"
    )
    return f"- numpy path peak anon memory above baseline, goal <= 100 MB + prefetch buffers: {verdict}" + (
        f" -- {listed}" if listed else ""
    )
