"""Is the consumer waiting for data? A Loader's running account of every batch it hands over.

For each batch the consumer receives: how long the consumer waited for it (its *exposed* wait: the time between
asking for the batch and holding it), its rows and bytes; for each read: the seconds spent reading storage and
transforming (summed over read threads), and how long finished reads sat queued before the consumer took them.
Waits go into a fixed histogram (log-spaced buckets, 20 per decade from 1 µs to 1000 s), so p50/p95/p99 cost the
same memory after a million steps as after one; a percentile is the geometric middle of its bucket (within 6%).

The account runs across epochs until :meth:`DataWait.reset`; :meth:`DataWait.snapshot` gives a JSON-able dict
(keys in :data:`FIELDS`, with the ``rank`` of the shard that kept it), :meth:`DataWait.write_json_line` appends one
as a line of JSON with its histogram, so lines of several ranks merge (:mod:`npyfeed.loader.wait_ranks`).
Consumers that Python does not see (a tf.data pipeline's iterators) keep counts of their own, which the account
pulls in on every snapshot (:meth:`DataWait.pull`).

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
from collections.abc import Mapping
from typing import IO, Any, Protocol

__all__ = ["BUCKET_EDGES", "FIELDS", "DataWait", "WaitSource", "bucket", "percentile"]

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
    "rank",
    "ranks",
)
"""The keys of :meth:`DataWait.snapshot`, documented in docs/observe.md."""

BUCKET_EDGES = tuple(_LOWEST * 10 ** (k / _PER_DECADE) for k in range(_BUCKETS - 1))
"""The histogram's bucket edges in seconds: a wait ``w`` counts in bucket ``k``, the number of edges ``<= w``."""


def bucket(seconds: float) -> int:
    """The histogram bucket of a wait of ``seconds``: the number of :data:`BUCKET_EDGES` at or below it."""
    if seconds < _LOWEST:
        return 0
    return min(_BUCKETS - 1, 1 + int(math.log10(seconds / _LOWEST) * _PER_DECADE))


def _middle(b: int) -> float:
    """A bucket's representative wait: 0 for bucket 0, else the geometric middle of its edges."""
    if b == 0:
        return 0.0
    return _LOWEST * 10 ** ((b - 0.5) / _PER_DECADE)


def percentile(histogram: Mapping[int, int], q: float, max_wait: float) -> float:
    """The ``q`` quantile (0..1) of the waits counted in ``histogram`` (bucket -> count), at most ``max_wait``."""
    total = sum(histogram.values())
    if not total:
        return 0.0
    rank, seen = q * total, 0
    for b in sorted(histogram):
        seen += histogram[b]
        if seen >= rank and histogram[b]:
            return min(_middle(b), max_wait)
    return max_wait


class WaitSource(Protocol):
    """Counts kept elsewhere (a tf.data pipeline's, in its graph), pulled into an account by :meth:`DataWait.pull`.

    ``take()`` returns what was counted since the last call, as :meth:`DataWait.add_counts` keywords (``first``
    and ``last`` on ``time.perf_counter()``'s clock), or ``None`` if nothing was; ``finished()`` is true once
    nothing more can be counted (its dataset is gone): after one last ``take()`` the account lets it go."""

    def take(self) -> Mapping[str, Any] | None: ...

    def finished(self) -> bool: ...


class DataWait:
    """Thread-safe counters of the batches a consumer received, and where their time went (see module doc).

    ``rank`` and ``ranks``: the shard that keeps this account (its index and the shard count), named in every
    snapshot so that the lines of a distributed run can be told apart and merged.
    """

    bucket_edges = BUCKET_EDGES

    def __init__(self, *, rank: int = 0, ranks: int = 1) -> None:
        self._lock = threading.Lock()
        self.rank, self.ranks = rank, ranks
        self._sources: list[WaitSource] = []
        self.reset()

    def __reduce__(self) -> tuple[Any, ...]:
        """A copy in another process (a DataLoader worker) starts its own account: waits are per process."""
        return DataWait, (), {"rank": self.rank, "ranks": self.ranks}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.rank, self.ranks = state["rank"], state["ranks"]

    def pull(self, source: WaitSource) -> None:
        """Count what ``source`` counts: each snapshot first adds ``source.take()``, each reset drops it. The
        account keeps ``source`` until it has taken its last counts after ``source.finished()``."""
        with self._lock:
            self._sources.append(source)

    def _take(self) -> list[Mapping[str, Any]]:
        with self._lock:
            sources = list(self._sources)
        finished = [s for s in sources if s.finished()]  # asked before the last take: nothing is counted after it
        taken = [counts for counts in (s.take() for s in sources) if counts]
        if finished:
            with self._lock:
                self._sources = [s for s in self._sources if all(s is not f for f in finished)]
        return taken

    def reset(self) -> None:
        """Start a new account (e.g. after warm-up, or at each epoch for per-epoch numbers)."""
        self._take()  # what the sources counted so far belongs to the old account
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
            self._histogram[bucket(wait)] += 1
            self._histogram[0] += batches - 1  # already in memory when asked for

    def record_batch(self, wait: float, *, rows: int, nbytes: int, asked: float | None = None) -> None:
        """One batch on its own: the consumer waited ``wait`` seconds for it (see :meth:`record_chunk`)."""
        now = time.perf_counter()
        self.record_chunk(wait, 1, rows, nbytes, asked=now - wait if asked is None else asked)

    def add_counts(
        self,
        histogram: Mapping[int, int],
        *,
        rows: int,
        nbytes: int,
        wait: float,
        waited: int,
        max_wait: float,
        first: float,
        last: float,
    ) -> None:
        """Add batches counted elsewhere: ``histogram`` (bucket -> batches, see :func:`bucket`), their ``rows``,
        ``nbytes``, summed ``wait``, ``waited`` (batches waited more than 0.1 ms for) and largest wait; the
        first was asked for at ``first`` and the last received at ``last`` (``time.perf_counter()`` times)."""
        with self._lock:
            self._first = first if self._first is None else min(self._first, first)
            self._last = max(self._last, last)
            for b, count in histogram.items():
                self._histogram[b] += count
                self._batches += count
            self._rows += rows
            self._bytes += nbytes
            self._wait += wait
            self._waited += waited
            self._max_wait = max(self._max_wait, max_wait)

    # -- read by users ----------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The account so far as a JSON-able dict (keys :data:`FIELDS`; times in seconds)."""
        for counts in self._take():
            self.add_counts(**counts)
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
                "rank": self.rank,
                "ranks": self.ranks,
            }

    def _percentile(self, q: float) -> float:
        return percentile(dict(enumerate(self._histogram)), q, self._max_wait)

    def histogram(self) -> dict[int, int]:
        """The waits counted so far: bucket (see :func:`bucket`) -> batches, empty buckets left out."""
        with self._lock:
            return {b: count for b, count in enumerate(self._histogram) if count}

    def write_json_line(self, file: IO[str], **extra: Any) -> dict[str, Any]:
        """Append :meth:`snapshot` (with ``extra`` keys such as ``epoch=3``) and the wait histogram
        (``wait_histogram``: bucket -> batches, see :func:`bucket`) to ``file`` as one line of JSON."""
        line = {**extra, **self.snapshot(), "wait_histogram": self.histogram()}
        file.write(json.dumps(line) + "\n")
        file.flush()
        return line

    def __repr__(self) -> str:
        s = self.snapshot()
        return (
            f"DataWait(batches={s['batches']}, wait_fraction={s['wait_fraction']:.3f}, "
            f"wait_p50_s={s['wait_p50_s']:.2e}, wait_p99_s={s['wait_p99_s']:.2e}, rows_per_s={s['rows_per_s']:.0f})"
        )
