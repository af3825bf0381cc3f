"""What one benchmark measurement is: a :class:`Job` (files, order, batch size) run by a :class:`Runner`.

A runner's ``build(job)`` returns an iterable over one epoch of ``(x, y)`` numpy batches (``y`` is None when the
dataset has no labels). The harness times it and checks every batch; runners do no checking themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from benchmarks.data import BenchFiles

__all__ = ["Batch", "Builder", "Job", "NotAvailable", "Result", "Runner", "as_pair"]

Batch = tuple[np.ndarray, np.ndarray | None]


class NotAvailable(Exception):
    """A runner cannot run here (framework missing, npyfeed API not there yet); the message says why."""


@dataclass(frozen=True)
class Job:
    """One measurement, sent as JSON to a fresh subprocess."""

    runner: str
    files: BenchFiles
    batch_size: int
    shuffle: bool
    max_seconds: float
    cache: str  # "warm", "cold" or "cold, cap" -- a label only; the driver prepares the page cache
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        return cls(**{**data, "files": BenchFiles(**data["files"])})


@dataclass(frozen=True)
class Runner:
    """A way of loading the rows: a label for the table and a builder imported only in the subprocess."""

    name: str
    label: str
    target: str  # "module:function" returning Iterable[Batch] for a Job
    imports: tuple[str, ...]  # imported before the memory baseline so import cost is not counted as loading
    baseline: bool  # True for the approaches users have today; npyfeed's rows are compared against them
    sequential_only: bool = False


@dataclass
class Result:
    """What a measurement found; ``status`` is "ok", "WRONG", "n/a", "error" or "timeout"."""

    runner: str
    label: str
    kind: str
    order: str
    cache: str
    status: str
    note: str = ""
    rows: int = 0
    epoch_fraction: float = 0.0
    seconds: float = 0.0
    rows_per_s: float = 0.0
    mb_per_s: float = 0.0
    first_batch_s: float = 0.0
    baseline_anon_mb: float = 0.0
    peak_anon_mb: float = 0.0
    cgroup_peak_mb: float | None = None
    cores_used: float = 0.0
    cores_other: float = 0.0
    baseline: bool = False


Builder = Callable[[Job], Iterable[Batch]]
"""What a runner's ``target`` names: one epoch of batches for a job."""


def as_pair(element: Any) -> Batch:
    """``(x, y)`` from what a loader yields: an array, an ``(x,)``/``(x, y)`` tuple or list, or a dict."""
    if isinstance(element, dict):
        element = list(element.values())
    if isinstance(element, tuple | list):
        x = np.asarray(element[0])
        return x, (np.asarray(element[1]) if len(element) > 1 else None)
    return np.asarray(element), None
