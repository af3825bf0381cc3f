"""benchmarks.tf_path's report: issue 21 item 2's verdict is against the lower of TF's ceiling and the numpy path
measured in the same cell, and each graph epoch's fixed costs (iter() CPU, first batch) are tabled.

Made-up epochs only: the verdict must follow from the numbers given, never from a real measurement."""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks import tf_path


def _epoch(way: str, gb_s: float, **extra: float) -> dict[str, Any]:
    return {
        "way": way, "run": 0, "seconds": 1.0, "rows": 256 * 100, "gb_s": gb_s, "complete": True, "problem": None,
        "cores_own": 1.0, "cores_others": 0.0, **extra,
    }  # fmt: skip


def _args() -> argparse.Namespace:
    return argparse.Namespace(size_gb=0.25, batch_size=256, runs=1, kinds=["1k"], order_list=["sequential"])


def _report(rates: dict[str, float]) -> str:
    def epochs(runner: str, gb_s: float) -> list[dict[str, Any]]:
        graph = [] if runner == "numpy" else [_epoch("graph", gb_s, iter_cpu_ms=20.0, first_ms=50.0)]
        return [_epoch("eager", gb_s), *graph]

    results = {("1k", "sequential", r): {"epochs": epochs(r, g)} for r, g in rates.items()}
    return tf_path.report(results, _args(), list(rates))


def _graph_row(text: str) -> tuple[list[str], list[str]]:
    """(header cells, the 1 KiB sequential row's cells) of the graph-mode table."""
    section = text.split("## drained in a tf.function")[1]
    head = next(line for line in section.splitlines() if line.startswith("| rows, order"))
    row = next(line for line in section.splitlines() if line.startswith("| 1 KiB, sequential"))
    return [c.strip() for c in head.split("|")[1:-1]], [c.strip() for c in row.split("|")[1:-1]]


def test_target_is_against_the_lower_of_ceiling_and_numpy() -> None:
    # The ceiling (1.0) is lower than the numpy path (6.0): 0.9 is 0.9x the lower (met), though 0.15x numpy.
    head, row = _graph_row(_report({"default": 0.9, "recipe": 0.8, "numpy": 6.0, "ceiling": 1.0}))
    cells = dict(zip(head, row, strict=True))
    assert cells["default/lower (>= 0.8)"] == "0.90x met"
    assert cells["default/numpy"] == "0.15x"
    assert cells["default/recipe (>= 1)"] == "1.12x met"
    # The numpy path lower than the ceiling: the verdict follows it.
    head, row = _graph_row(_report({"default": 0.9, "recipe": 0.8, "numpy": 1.5, "ceiling": 4.0}))
    assert dict(zip(head, row, strict=True))["default/lower (>= 0.8)"] == "0.60x NOT met"


def test_no_lower_without_both_references() -> None:
    head, _ = _graph_row(_report({"default": 0.9, "recipe": 0.8, "numpy": 6.0}))
    assert not any("lower" in h for h in head)


def test_setup_table_reports_iter_cpu_and_first_batch() -> None:
    text = _report({"default": 0.9, "numpy": 6.0, "ceiling": 1.0})
    table = text.split("## Per-epoch setup")[1]
    row = next(line for line in table.splitlines() if line.startswith("| 1 KiB, sequential"))
    # iter() CPU 20 ms of an epoch's 1 core x 1 s = 1000 ms: 2%; the numpy path has no graph epochs (no column).
    assert [c.strip() for c in row.split("|")[1:-1]] == ["1 KiB, sequential", "20.0 / 50.0 / 2%", "20.0 / 50.0 / 2%"]
