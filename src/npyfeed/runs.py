"""Runs of sorted indices: rows (or records) coalesced into ``[start, stop)`` ranges, vectorized.

A batch is a set: its rows are read in sorted order, one request or one kernel hint per run of neighbours. This
is the one helper for that idea (orders hint whole runs, the read path merges rows that share a page).

>>> import numpy as np
>>> runs(np.array([0, 1, 2, 5, 6, 10]))
[(0, 3), (5, 7), (10, 11)]
>>> runs(np.array([0, 1, 2, 5, 6, 10]), gap=2)  # neighbours up to 2 missing rows apart share a range
[(0, 7), (10, 11)]
"""

from __future__ import annotations

import numpy as np

__all__ = ["runs"]


def runs(sorted_indices: np.ndarray, gap: int = 0) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering the sorted ``sorted_indices`` (repeats allowed), merging neighbours with
    at most ``gap`` missing indices between them."""
    if sorted_indices.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_indices) > gap + 1) + 1
    starts = sorted_indices[np.concatenate(([0], breaks))]
    stops = sorted_indices[np.concatenate((breaks - 1, [sorted_indices.size - 1]))] + 1
    return list(zip(starts.tolist(), stops.tolist(), strict=True))
