"""Is the consumer waiting for data? A Loader's running account of every batch it hands over.

For each batch the consumer receives: how long the consumer waited for it (its *exposed* wait: the time between
asking for the batch and holding it), its rows and bytes; for each read: the seconds spent reading storage and
transforming (summed over read threads), and how long finished reads sat queued before the consumer took them.
Waits go into a fixed histogram (log-spaced buckets, 20 per decade from 1 µs to 1000 s), so p50/p95/p99 cost the
same memory after a million steps as after one; a percentile is the geometric middle of its bucket (within 6%).

The account runs across epochs until :meth:`DataWait.reset`; :meth:`DataWait.snapshot` gives a JSON-able dict
(keys in :data:`FIELDS`), :meth:`DataWait.write_json_line` appends one as a line of JSON.

>>> m = DataWait()
>>> m.record_batch(0.002, rows=32, nbytes=4096)
>>> m.snapshot()["batches"], round(m.snapshot()["wait_p50_s"], 4)
(1, 0.002)
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import IO, Any

__all__ = ["FIELDS", "DataWait"]

_PER_DECADE = 20
_LOWEST = 1e-6  # waits below a microsecond count as no wait (bucket 0)
_BUCKETS = 9 * _PER_DECADE + 2  # [0, 1 µs), then 1 µs .. 1000 s, then the rest

FIELDS = (
    "batches",
    "rows",
    "bytes",
    "elapsed_s",
    "rows_per_s",
    "bytes_per_s",
    "wait_s",
    "wait_fraction",
    "wait_p50_s",
    "wait_p95_s",
    "wait_p99_s",
    "wait_max_s",
    "waited_batches",
    "read_s",
    "transform_s",
    "queue_s",
    "depth",
)
"""The keys of :meth:`DataWait.snapshot`, documented in docs/observe.md."""


def _bucket(seconds: float) -> int:
    if seconds < _LOWEST:
        return 0
    return min(_BUCKETS - 1, 1 + int(math.log10(seconds / _LOWEST) * _PER_DECADE))


def _middle(bucket: int) -> float:
    """A bucket's representative wait: 0 for bucket 0, else the geometric middle of its edges."""
    if bucket == 0:
        return 0.0
    return _LOWEST * 10 ** ((bucket - 0.5) / _PER_DECADE)


class DataWait:
    """Thread-safe counters of the batches a consumer received, and where their time went (see module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def __reduce__(self) -> tuple[type[DataWait], tuple[()]]:
        """A copy in another process (a DataLoader worker) starts its own account: waits are per process."""
        return DataWait, ()

    def reset(self) -> None:
        """Start a new account (e.g. after warm-up, or at each epoch for per-epoch numbers)."""
        with self._lock:
            self._histogram = [0] * _BUCKETS
            self._batches = self._rows = self._bytes = self._waited = 0
            self._wait = self._max_wait = self._read = self._transform = self._queue = 0.0
            self._first: float | None = None  # when the first batch of this account was asked for
            self._last = 0.0  # when the last one was received
            self._depth = 0

    # -- recorded by the read path, once per read task the consumer took (not per batch: cheaper) -------------
    def record_chunk(
        self,
        wait: float,
        batches: int,
        rows: int,
        nbytes: int,
        *,
        asked: float,
        queue: float = 0.0,
        depth: int = 0,
        read: float = 0.0,
        transform: float = 0.0,
    ) -> None:
        """The consumer asked at ``asked`` (``time.perf_counter()``), waited ``wait`` seconds for the first of
        ``batches`` batches read together (``rows`` rows, ``nbytes`` bytes), and got the others at once. The read
        spent ``read`` seconds on storage and ``transform`` transforming, then sat ``queue`` seconds done before
        the consumer took it; ``depth`` reads are kept ahead now."""
        with self._lock:
            if self._first is None:
                self._first = asked
            self._last = time.perf_counter()
            self._read += read
            self._transform += transform
            self._queue += max(0.0, queue)
            self._depth = depth
            if batches <= 0:
                return
            self._batches += batches
            self._rows += rows
            self._bytes += nbytes
            self._wait += wait
            self._max_wait = max(self._max_wait, wait)
            self._waited += wait >= 1e-4
            self._histogram[_bucket(wait)] += 1
            self._histogram[0] += batches - 1  # already in memory when asked for

    def record_batch(self, wait: float, *, rows: int, nbytes: int, asked: float | None = None) -> None:
        """One batch on its own: the consumer waited ``wait`` seconds for it (see :meth:`record_chunk`)."""
        now = time.perf_counter()
        self.record_chunk(wait, 1, rows, nbytes, asked=now - wait if asked is None else asked)

    # -- read by users ----------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The account so far as a JSON-able dict (keys :data:`FIELDS`; times in seconds)."""
        with self._lock:
            elapsed = self._last - self._first if self._first is not None else 0.0
            per_s = 1.0 / elapsed if elapsed > 0 else 0.0
            return {
                "batches": self._batches,
                "rows": self._rows,
                "bytes": self._bytes,
                "elapsed_s": elapsed,
                "rows_per_s": self._rows * per_s,
                "bytes_per_s": self._bytes * per_s,
                "wait_s": self._wait,
                "wait_fraction": min(1.0, self._wait * per_s) if elapsed > 0 else 0.0,
                "wait_p50_s": self._percentile(0.50),
                "wait_p95_s": self._percentile(0.95),
                "wait_p99_s": self._percentile(0.99),
                "wait_max_s": self._max_wait,
                "waited_batches": self._waited,
                "read_s": self._read,
                "transform_s": self._transform,
                "queue_s": self._queue,
                "depth": self._depth,
            }

    def _percentile(self, q: float) -> float:
        if not self._batches:
            return 0.0
        rank = q * self._batches
        seen = 0
        for bucket, count in enumerate(self._histogram):
            seen += count
            if seen >= rank and count:
                return min(_middle(bucket), self._max_wait)
        return self._max_wait

    def write_json_line(self, file: IO[str], **extra: Any) -> dict[str, Any]:
        """Append :meth:`snapshot` (with ``extra`` keys such as ``epoch=3``) to ``file`` as one line of JSON."""
        line = {**extra, **self.snapshot()}
        file.write(json.dumps(line) + "\n")
        file.flush()
        return line

    def __repr__(self) -> str:
        s = self.snapshot()
        return (
            f"DataWait(batches={s['batches']}, wait_fraction={s['wait_fraction']:.3f}, "
            f"wait_p50_s={s['wait_p50_s']:.2e}, wait_p99_s={s['wait_p99_s']:.2e}, rows_per_s={s['rows_per_s']:.0f})"
        )
