"""Every rank's data wait in one table: the JSON lines each rank writes to a shared directory, merged.

Each rank (each process of a distributed job, reading its shard) appends its account to a file of its own, e.g. at
the end of every epoch (``DataWaitLogger(loader.metrics, json_lines=rank_file(directory, rank))`` writes the same
lines under Keras)::

    with rank_file(directory, loader.shard.index).open("a") as f:
        loader.metrics.write_json_line(f, epoch=epoch)
        loader.metrics.reset()

:func:`merge_ranks` then reads every ``*.jsonl`` file of the directory and sums each rank's accounts: waits from the
summed histograms (p50/p95/p99 within 6%, as one account's), rows, bytes, time, for each rank and over all ranks,
and names the rank that waited most (in synchronous training every rank waits for the slowest). Lines written in
the middle of an account (``DataWaitLogger(every_steps=...)`` lines, with a ``step`` key) are running totals, not
accounts: they are left out.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from npyfeed.errors import ConfigError
from npyfeed.loader.metrics import percentile

__all__ = ["merge_ranks", "rank_file"]


def rank_file(directory: str | Path, rank: int) -> Path:
    """The JSON-lines file of ``rank`` in ``directory`` (made if missing), which :func:`merge_ranks` reads."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    return path / f"wait-rank{rank:05d}.jsonl"


class _Sum:
    """Accounts added up: counts, seconds and one histogram."""

    def __init__(self) -> None:
        self.histogram: dict[int, int] = defaultdict(int)
        self.accounts = self.rows = self.bytes = 0
        self.elapsed = self.wait = self.max_wait = 0.0
        self.rows_per_s = 0.0

    def add(self, line: dict[str, Any], histogram: dict[int, int]) -> None:
        self.accounts += 1
        for b, count in histogram.items():
            self.histogram[b] += count
        self.rows += line["rows"]
        self.bytes += line["bytes"]
        self.elapsed += line["elapsed_s"]
        self.wait += line["wait_s"]
        self.max_wait = max(self.max_wait, line["wait_max_s"])

    def summary(self, rows_per_s: float | None = None) -> dict[str, Any]:
        batches = sum(self.histogram.values())
        return {
            "accounts": self.accounts,
            "batches": batches,
            "rows": self.rows,
            "bytes": self.bytes,
            "elapsed_s": self.elapsed,
            "rows_per_s": rows_per_s if rows_per_s is not None else self.rows / self.elapsed if self.elapsed else 0.0,
            "wait_s": self.wait,
            "wait_fraction": min(1.0, self.wait / self.elapsed) if self.elapsed else 0.0,
            **{f"wait_p{q}_s": percentile(self.histogram, q / 100, self.max_wait) for q in (50, 95, 99)},
            "wait_max_s": self.max_wait,
        }


def _histogram(path: Path, number: int, line: dict[str, Any]) -> dict[int, int]:
    found = line.get("wait_histogram")
    if not isinstance(found, dict) or "rank" not in line:
        raise ConfigError(
            f"{path}, line {number}: no 'rank' and 'wait_histogram' (found keys {sorted(line)}); expected lines "
            "written by loader.metrics.write_json_line or DataWaitLogger"
        )
    return {int(b): int(count) for b, count in found.items()}


def merge_ranks(directory: str | Path) -> dict[str, Any]:
    """Every rank's accounts in ``directory`` (its ``*.jsonl`` files) summed: ``{"ranks": {rank: summary},
    "overall": summary, "slowest_rank": rank}``. A summary has ``batches``, ``rows``, ``bytes``, ``elapsed_s``,
    ``rows_per_s``, ``wait_s``, ``wait_fraction``, ``wait_p50_s``/``p95``/``p99``, ``wait_max_s`` and ``accounts``
    (the lines summed); overall, ``rows_per_s`` adds the ranks' (they run at once) and ``wait_fraction`` is the
    share of all ranks' time spent waiting. ``slowest_rank``: the rank with the largest ``wait_fraction``."""
    ranks: dict[int, _Sum] = defaultdict(_Sum)
    overall = _Sum()
    files = sorted(Path(directory).glob("*.jsonl"))
    if not files:
        raise ConfigError(f"{directory}: no *.jsonl files; expected one per rank (see rank_file)")
    for path in files:
        for number, text in enumerate(path.read_text().splitlines(), 1):
            if not text.strip():
                continue
            line = json.loads(text)
            if "step" in line:  # a running total within an account
                continue
            histogram = _histogram(path, number, line)
            ranks[int(line["rank"])].add(line, histogram)
            overall.add(line, histogram)
    per_rank = {rank: ranks[rank].summary() for rank in sorted(ranks)}
    total = overall.summary(rows_per_s=sum(s["rows_per_s"] for s in per_rank.values()))
    slowest = max(per_rank, key=lambda r: per_rank[r]["wait_fraction"]) if per_rank else None
    return {"ranks": per_rank, "overall": total, "slowest_rank": slowest}
