"""Byte ranges for a set of records: sorted record indices merged into few, bounded range requests.

A batch is a sorted set of rows, each a fixed-size record at ``base + i * record_bytes``. Over a network a request
costs about as much as some hundreds of KiB of transfer, so neighbours closer than ``gap_bytes`` are fetched in one
request (the bytes between them are read and dropped), and a request never spans more than ``max_bytes`` so that
many run at once and the memory each holds stays bounded. The planning is vectorized: no Python loop per row.

>>> import numpy as np
>>> plan = plan_requests(np.array([0, 1, 2, 10, 11, 500]), record_bytes=100, gap_bytes=1000, max_bytes=10_000)
>>> [(r.first, r.stop, r.start, r.end) for r in plan]
[(0, 12, 0, 5), (500, 501, 5, 6)]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RecordRequest", "plan_requests"]


@dataclass(frozen=True)
class RecordRequest:
    """Records ``[first, stop)`` fetched in one range request; they serve positions ``[start, end)`` of the
    sorted index array."""

    first: int
    stop: int
    start: int
    end: int

    @property
    def records(self) -> int:
        return self.stop - self.first


def plan_requests(indices: np.ndarray, record_bytes: int, gap_bytes: int, max_bytes: int) -> list[RecordRequest]:
    """Requests covering the sorted (repeats allowed) record ``indices``.

    Neighbours fewer than ``gap_bytes`` apart share a request; a request spans at most ``max_bytes`` (at least one
    record: a record larger than ``max_bytes`` is split later, by bytes).
    """
    n = int(indices.size)
    if n == 0:
        return []
    indices = np.asarray(indices, np.int64)
    gap_records = gap_bytes // max(1, record_bytes)
    breaks = np.diff(indices) - 1 > gap_records
    group = np.concatenate(([0], np.cumsum(breaks)))
    group_first = indices[np.concatenate(([0], np.flatnonzero(breaks) + 1))][group]
    # Cut long groups into spans of at most `max_records`, counted from the group's first record.
    max_records = max(1, max_bytes // max(1, record_bytes))
    chunk = (indices - group_first) // max_records
    new = np.concatenate(([True], (np.diff(group) != 0) | (np.diff(chunk) != 0)))
    starts = np.flatnonzero(new)
    ends = np.concatenate((starts[1:], [n]))
    firsts = indices[starts]
    stops = indices[ends - 1] + 1
    return [
        RecordRequest(int(f), int(s), int(a), int(b))
        for f, s, a, b in zip(firsts.tolist(), stops.tolist(), starts.tolist(), ends.tolist(), strict=True)
    ]
