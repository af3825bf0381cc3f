"""The markdown report of ``benchmarks.object_store``: tables per latency, the first batch and memory at two object
sizes, and the issue's targets evaluated on the run's own numbers."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.data import ROW_KINDS, BenchFiles

__all__ = ["render"]

MB = 1e6
ORDERS = {"none": "sequential", "block": "block shuffle", "global": "global shuffle"}
BLOCK_TARGET = 0.8
FIRST_TARGET_S = 1.0


def _commit() -> str:
    try:
        cmd = ["git", "rev-parse", "--short", "HEAD"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _check(r: dict[str, Any]) -> str:
    if "failed" in r:
        return f"FAILED: {r['failed']}"
    return "ok" if r.get("problem") is None else f"WRONG: {r['problem']}"


def _cores(r: dict[str, Any]) -> str:
    return f"{r['cores_client']:.2f} / {r['cores_server']:.2f} / {r['cores_other']:.2f}"


class Pass:
    """The rows of one latency, with the whole-object GET rate they are compared with."""

    def __init__(self, latency: float, results: dict[str, dict[str, Any]], files: BenchFiles) -> None:
        self.latency = latency
        self.r = {k.split("/", 1)[1]: v for k, v in results.items() if k.split("/", 1)[0] == f"{latency:g}"}
        self.files = files
        self.sample = files.row_kind.sample_bytes
        gets = [g for g in (self.r.get("get"), self.r.get("get-again")) if g and "failed" not in g and not g["problem"]]
        self.get_mb_s = max((g["bytes"] / g["seconds"] / MB for g in gets), default=float("nan"))

    def rate(self, name: str) -> float:
        """MB/s of a row (delivered samples, the wait for the first batch included)."""
        r = self.r.get(name, {})
        if "failed" in r or "rows" not in r:
            return float("nan")
        return float(r["rows"] * self.sample / r["seconds"] / MB)

    def table(self) -> list[str]:
        lines = [
            f"### +{self.latency:g} ms per request",
            "",
            "| read | rows/s | MB/s | x whole GET | 1st batch s | total s | requests | rows / request | "
            "MB fetched / MB delivered | in flight | latency ms | peak anon MB | cores client / server / others | "
            "epoch read | check |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for name in ("get", "get-again"):
            r = self.r.get(name)
            if r is None:
                continue
            label = "whole-object GET (limit)" + (", again at the end" if name == "get-again" else "")
            if "failed" in r:
                lines.append(f"| {label} | | | | | | | | | | | | | | {_check(r)} |")
                continue
            mb_s = r["bytes"] / r["seconds"] / MB
            lines.append(
                f"| {label} | {r['bytes'] / self.sample / r['seconds']:,.0f} | {mb_s:,.0f} | "
                f"{mb_s / self.get_mb_s:.2f}x | {r['first_s']:.3f} | {r['seconds']:.1f} | 1 | | 1.00 | 1 | | "
                f"{r['peak_anon_mb']:.0f} | {_cores(r)} | all | {_check(r)} |"
            )
        for name, label in [*[(o, f"npyfeed {t}") for o, t in ORDERS.items()], ("block-2", "")]:
            r = self.r.get(name)
            if r is None:
                continue
            label = label or "npyfeed block shuffle, 2 requests in flight"
            lines.append(self._row(label, r))
        download = self.r.get("download")
        if download is not None:
            lines += self._download_rows(download)
        return [*lines, ""]

    def _row(self, label: str, r: dict[str, Any]) -> str:
        if "failed" in r:
            return f"| {label} | | | | | | | | | | | | | | {_check(r)} |"
        delivered = r["rows"] * self.sample
        read = "all" if r["complete"] else f"{r['rows'] / self.files.num_rows:.0%} (capped)"
        return (
            f"| {label} | {r['rows'] / r['seconds']:,.0f} | {delivered / r['seconds'] / MB:,.0f} | "
            f"{delivered / r['seconds'] / MB / self.get_mb_s:.2f}x | {r['first_s']:.3f} | {r['seconds']:.1f} | "
            f"{r['requests']:,} | {r['rows'] / max(1, r['requests']):,.1f} | {r['bytes'] / max(1, delivered):.2f} | "
            f"{r['request_s'] / r['seconds']:.1f} | {r['request_s'] / max(1, r['requests']) * 1e3:.0f} | "
            f"{r['peak_anon_mb']:.0f} | {_cores(r)} | {read} | {_check(r)} |"
        )

    def _download_rows(self, d: dict[str, Any]) -> list[str]:
        if "failed" in d:
            return [f"| download, then read locally | | | | | | | | | | | | | | {_check(d)} |"]
        dl = d["download"]
        lines = []
        for order, title in ORDERS.items():
            r = d[order]
            total = dl["seconds"] + r["seconds"]
            delivered = r["rows"] * self.sample
            both = (dl["seconds"], r["seconds"])

            def mean(key: str, r: dict[str, Any] = r, both: tuple[float, float] = both) -> float:
                return (dl[key] * both[0] + r[key] * both[1]) / sum(both)

            read = "all" if r["complete"] else f"{r['rows'] / self.files.num_rows:.0%} (capped)"
            lines.append(
                f"| download ({dl['seconds']:.1f} s), then npyfeed local {title} | {r['rows'] / total:,.0f} | "
                f"{delivered / total / MB:,.0f} | {delivered / total / MB / self.get_mb_s:.2f}x | "
                f"{dl['seconds'] + r['first_s']:.3f} | {total:.1f} | 2 | | | 1 | | "
                f"{max(dl['peak_anon_mb'], r['peak_anon_mb']):.0f} | {mean('cores_client'):.2f} / "
                f"{mean('cores_server'):.2f} / {mean('cores_other'):.2f} | {read} | {_check(r)} |"
            )
        return lines


def _big_tables(passes: list[Pass], files: BenchFiles, big: Path, big_bytes: int) -> list[str]:
    head = " | ".join(f"+{p.latency:g} ms" for p in passes)
    lines = [
        f"### First batch of a {big_bytes / 1e9:.1f} GB object (sparse: `{big.name}`)",
        "",
        "Seconds from building the loader (a HEAD and the header's GET included) to the first batch.",
        "",
        f"| order | {head} |",
        "|---|" + "--:|" * len(passes),
    ]
    for order, title in ORDERS.items():
        cells = []
        for p in passes:
            r = p.r.get(f"big-{order}", {})
            cells.append(f"{r['first_s']:.3f}" if "first_s" in r else _check(r))
        lines.append(f"| npyfeed {title} | {' | '.join(cells)} |")
    est = " | ".join(f"{big_bytes / (p.get_mb_s * MB):.1f} (estimated)" for p in passes)
    lines += [f"| download first (the whole object at the whole-GET rate) | {est} |", ""]
    lines += [
        f"### Peak anonymous memory at two object sizes ({files.x_bytes / 1e9:.2f} GB and {big_bytes / 1e9:.1f} GB)",
        "",
        f"The {big_bytes / 1e9:.1f} GB object is read for as many rows as the smaller one has (or the time cap).",
        "",
        "| order | latency | MB, small object (rows read) | MB, big object (rows read) | big / small |",
        "|---|--:|--:|--:|--:|",
    ]
    for p in passes:
        for order, title in ORDERS.items():
            small, large = p.r.get(order, {}), p.r.get(f"big-{order}", {})
            if "peak_anon_mb" not in small or "peak_anon_mb" not in large:
                continue
            lines.append(
                f"| {title} | +{p.latency:g} ms | {small['peak_anon_mb']:.0f} ({small['rows']:,}) | "
                f"{large['peak_anon_mb']:.0f} ({large['rows']:,}) | "
                f"{large['peak_anon_mb'] / max(1.0, small['peak_anon_mb']):.2f} |"
            )
    return [*lines, ""]


def _targets(passes: list[Pass], big_bytes: int) -> list[str]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = ["### Targets (issue 9), from this run", ""]
    for p in passes:
        ratio = p.rate("block") / p.get_mb_s
        lines.append(
            f"- +{p.latency:g} ms: block shuffle vs whole-object GET: {ratio:.2f}x (goal >= {BLOCK_TARGET}x) -- "
            f"{verdict(ratio >= BLOCK_TARGET)}"
        )
    for p in passes:
        for order, title in ORDERS.items():
            r = p.r.get(f"big-{order}", {})
            if "first_s" in r:
                lines.append(
                    f"- +{p.latency:g} ms: first batch of the {big_bytes / 1e9:.0f} GB object, {title}: "
                    f"{r['first_s']:.2f} s (goal < {FIRST_TARGET_S:g} s) -- {verdict(r['first_s'] < FIRST_TARGET_S)}"
                )
    for p in passes:
        r = p.r.get("global", {})
        if "requests" in r:
            per_batch = r["requests"] / max(1, -(-r["rows"] // 256))
            lines.append(
                f"- +{p.latency:g} ms: global shuffle, rows per request: {r['rows'] / max(1, r['requests']):.2f} "
                f"({per_batch:.0f} requests per batch of rows and labels; see the notes)"
            )
    for p in passes:
        for order, title in ORDERS.items():
            small, large = p.r.get(order, {}), p.r.get(f"big-{order}", {})
            if "peak_anon_mb" in small and "peak_anon_mb" in large:
                a, b = small["peak_anon_mb"], large["peak_anon_mb"]
                ok = b <= 1.25 * a + 16
                lines.append(
                    f"- +{p.latency:g} ms: peak anon memory, {title}: {a:.0f} MB vs {b:.0f} MB on the "
                    f"{big_bytes / 1e9:.0f} GB object (goal: independent of size, within 25% + 16 MB) -- {verdict(ok)}"
                )
    return [*lines, ""]


def render(
    args: argparse.Namespace,
    files: BenchFiles,
    big: Path,
    latencies: list[float],
    results: dict[str, dict[str, Any]],
    elapsed: float,
) -> str:
    kind = ROW_KINDS[files.kind]
    passes = [Pass(latency, results, files) for latency in latencies]
    big_bytes = big.stat().st_size
    load = os.getloadavg()
    command = " ".join(["python -m benchmarks.object_store", *(sys.argv[1:])])
    lines = [
        f"## Object storage: a {files.x_bytes / 1e9:.2f} GB `.npy` read in place from S3 on loopback (issue 9)",
        "",
        f"- Command: `{command}` ({elapsed / 60:.1f} min; npyfeed at commit {_commit()}).",
        f"- Machine: {os.cpu_count()} cores ({_cpu_model()}), Python {platform.python_version()}; load average "
        f"{load[0]:.1f} at the end (others' cores per row below: a shared machine disturbs these numbers).",
        f"- Object: {files.num_rows:,} rows of {kind.description} ({files.x_bytes / 1e9:.2f} GB + "
        f"{files.num_rows * 8 / 1e6:.1f} MB of labels), served from the page cache by `benchmarks.s3_server` "
        "(sendfile) in its own process on 127.0.0.1, read as `s3://bench/...` by obstore; batch "
        f"{args.batch_size}; time cap {args.max_seconds:g} s after the first batch.",
        "- rows/s and MB/s count delivered rows and labels from building the loader (or starting the GET) to the "
        "end; x whole GET = MB/s over the best whole-object GET of the same latency; requests = range GETs "
        "(header reads included); MB fetched / delivered > 1 when merged gaps or read-ahead fetch more than is "
        "used; in flight = mean range requests in flight (summed request latencies / wall time); latency = mean "
        "time of a range request, from the request sent to its last byte (queueing for CPU included); peak anon = "
        "RssAnon above the baseline after imports; cores = CPU of the client process, of the server process and "
        "of everything else over the timed window.",
        "",
    ]
    for p in passes:
        lines += p.table()
    lines += _big_tables(passes, files, big, big_bytes)
    lines += _targets(passes, big_bytes)
    return "\n".join(lines)
