"""``npyfeed plot-wait WAIT.jsonl -o wait.png``: the data wait per training step over epochs, as a picture.

It reads the JSON lines that ``DataWaitLogger(metrics, json_lines=..., every_steps=N)`` writes (or
``metrics.write_json_line(f, epoch=e, step=s)`` in a loop of your own): running totals of one account per epoch,
every N steps. Between two lines, the wait per step is the growth of ``wait_s`` over the growth of ``batches``,
and the time per step the growth of ``elapsed_s`` over it (the account counts a read task's batches together,
when the last of them is handed over: an interval spans at least one read task); the picture draws both against
the step, with the epochs marked, so that "is my training waiting for data?" reads at a glance: the wait is the
part of each step spent waiting. Needs matplotlib (the ``plot`` extra: ``pip install 'npyfeed[plot]'``).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from npyfeed.errors import ConfigError

__all__ = ["plot_wait", "run", "step_waits"]


def step_waits(lines: list[dict[str, Any]]) -> list[tuple[int, int, float, float]]:
    """``(epoch, step, wait per step, time per step)`` for each interval between running totals (lines with a
    ``step``), in seconds, epochs in order; each epoch's account starts at zero."""
    epochs: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        if "step" in line:
            epochs[int(line.get("epoch", 0))].append(line)
    out = []
    for epoch in sorted(epochs):
        before = {"batches": 0, "wait_s": 0.0, "elapsed_s": 0.0}
        for line in sorted(epochs[epoch], key=lambda x: x["step"]):
            batches = line["batches"] - before["batches"]
            if batches > 0:
                wait = (line["wait_s"] - before["wait_s"]) / batches
                step = (line["elapsed_s"] - before["elapsed_s"]) / batches
                out.append((epoch, int(line["step"]), wait, step))
            before = line
    return out


def plot_wait(path: str | Path, output: str | Path, *, title: str | None = None) -> dict[str, Any]:
    """Draw the wait per step of the JSON lines in ``path`` into ``output`` (a ``.png`` or ``.svg``); returns
    ``{"steps": intervals drawn, "epochs": ..., "wait_s": ..., "elapsed_s": ...}`` (summed over epochs)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plot-wait needs matplotlib: pip install 'npyfeed[plot]'", name=e.name) from e
    lines = [json.loads(text) for text in Path(path).read_text().splitlines() if text.strip()]
    points = step_waits(lines)
    if not points:
        raise ConfigError(
            f"{path}: no running totals (lines with a 'step' key) to plot; write them with "
            "DataWaitLogger(metrics, json_lines=..., every_steps=1) or metrics.write_json_line(f, epoch=e, step=s)"
        )
    # Steps numbered across epochs: each epoch continues where the previous one ended.
    x, starts, offset, last = [], [], 0, None
    for epoch, step, _, _ in points:
        if epoch != last:
            if last is not None:
                offset = x[-1]
            starts.append((offset, epoch))
            last = epoch
        x.append(offset + step)
    wait_ms = [p[2] * 1e3 for p in points]
    step_ms = [p[3] * 1e3 for p in points]
    ends = {}  # the last running total of each epoch: its whole account
    for line in lines:
        if "step" in line:
            ends[line.get("epoch", 0)] = line
    wait_s = sum(e["wait_s"] for e in ends.values())
    elapsed_s = sum(e["elapsed_s"] for e in ends.values())
    share = wait_s / elapsed_s if elapsed_s else 0.0

    figure = Figure(figsize=(8, 3.2), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.plot(x, step_ms, color="0.45", linewidth=1.2, drawstyle="steps-pre", label="time per step")
    axes.fill_between(x, wait_ms, step="pre", color="tab:red", alpha=0.55, linewidth=0, label="waiting for data")
    for begin, epoch in starts:
        axes.axvline(begin, color="0.75", linewidth=0.8, linestyle="--")
        axes.annotate(
            f"epoch {epoch}",
            (begin, 1),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            fontsize=8,
            color="0.4",
        )
    axes.set_xlabel("training step")
    axes.set_ylabel("ms per step")
    axes.set_ylim(bottom=0)
    axes.set_xlim(0, x[-1])
    axes.legend(loc="upper right", fontsize=8, frameon=False)
    axes.set_title(title or f"{Path(path).name}: waiting for data {share:.0%} of the time", fontsize=10)
    figure.savefig(output)
    return {"steps": len(points), "epochs": len(ends), "wait_s": wait_s, "elapsed_s": elapsed_s}


def add_parser(commands: Any) -> None:
    """The ``plot-wait`` subcommand of the ``npyfeed`` parser."""
    parser = commands.add_parser(
        "plot-wait",
        help="plot the data wait per training step from JSON lines (needs matplotlib)",
        description="Draw the wait for data per training step, and the time per step, from the JSON lines of "
        "DataWaitLogger(..., json_lines=FILE, every_steps=N) or metrics.write_json_line(f, epoch=e, step=s).",
    )
    parser.add_argument("file", metavar="WAIT.jsonl", help="JSON lines with running totals (a 'step' key)")
    parser.add_argument(
        "-o", "--output", default="wait.png", help="the picture to write (.png, .svg; default wait.png)"
    )
    parser.add_argument("--title", default=None, help="the picture's title")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    summary = plot_wait(args.file, args.output, title=args.title)
    share = summary["wait_s"] / summary["elapsed_s"] if summary["elapsed_s"] else 0.0
    print(
        f"{args.output}: {summary['steps']} intervals over {summary['epochs']} epochs, waiting {share:.1%} of the time"
    )
    return 0
