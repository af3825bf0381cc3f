"""Bounded, ordered prefetching of batches on a thread pool.

At most ``depth`` batches are in flight or waiting, so memory is bounded by ``depth`` x batch bytes whatever the
file size. Results come back in submission order with the key they were submitted under, so the consumer knows
exactly which batch it holds (what a saved state must refer to, not what was read ahead). An exception on a
thread is re-raised in the consumer as it is, its type kept, with a note naming what was being read. A job no
thread has started when the consumer asks for it runs on the consumer's thread at once.
When the consumer starves (the next batch is not ready when asked for), ``depth`` grows up to ``max_depth``; or,
given a ``control`` (:class:`npyfeed.loader.autotune.Tuner`), the depth is the control's, told every wait.

Stopping: a consumer that goes away (``break``, a dropped iterator, garbage collection, ``KeyboardInterrupt``)
cancels the reads not started and sets its stop event; reads already running check it between batches and
windows (:func:`stopping`) and return early. At interpreter exit, before the thread pools are joined, every read
stops the same way (:data:`EXITING`), so exit never waits for whole chunks of slow transforms.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 (its exit hook, the join of the pools' threads, must come first)
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = ["EXITING", "DepthControl", "PrefetchStats", "Stopped", "prefetch_ordered", "stopping"]

EXITING = threading.Event()
"""Set when the interpreter exits: every read in flight stops at its next batch or window."""
# threading's exit hooks run before concurrent.futures joins its workers (atexit hooks run only after), and the
# last registered runs first: ours, registered after concurrent.futures.thread was imported (above), precedes its
# join, so queued and running reads and transforms see it instead of being waited for.
getattr(threading, "_register_atexit", atexit.register)(EXITING.set)


class Stopped(Exception):
    """Raised inside a read whose consumer is gone; never reaches the user."""


def stopping(event: threading.Event | None) -> bool:
    """Whether a read should stop: its consumer is gone (``event`` set) or the interpreter exits."""
    return EXITING.is_set() or (event is not None and event.is_set())


K = TypeVar("K")
T = TypeVar("T")


@dataclass
class PrefetchStats:
    """What the consumer saw: batches delivered, how many it had to wait for, and the final depth."""

    delivered: int = 0
    starved: int = 0
    depth: int = 0


class DepthControl(Protocol):
    """What decides the depth instead of the starvation rule: asked before each submission, told every take."""

    @property
    def depth(self) -> int: ...

    def begin(self) -> None: ...

    def observe(self, wait: float, ready: int, now: float | None = None) -> None: ...


class _Job(Generic[K, T]):
    __slots__ = ("fn", "future", "key")

    def __init__(self, key: K, fn: Callable[[], T], future: Future[T]) -> None:
        self.key, self.fn, self.future = key, fn, future

    def result(self) -> T:
        """The job's result; a job no thread has started yet runs here, now, instead of waiting for a free
        thread: what the consumer waits for starts when it asks (bounding its wait by the read's own deadline)."""
        if self.future.cancel():
            return self.fn()
        return self.future.result()


def prefetch_ordered(
    jobs: Iterable[tuple[K, Callable[[], T]]],
    pool: Executor,
    depth: int,
    *,
    max_depth: int | None = None,
    describe: Callable[[K], str] = str,
    stats: PrefetchStats | None = None,
    control: DepthControl | None = None,
) -> Iterator[tuple[K, T]]:
    """Run ``jobs`` on ``pool`` keeping up to ``depth`` ahead; yield ``(key, result)`` in order.

    With ``control``, its ``depth`` replaces ``depth`` and ``max_depth`` (read before each submission), and it
    observes how long the consumer waited for each result after the first and how many more were ready.
    """
    max_depth = max(depth, max_depth or depth)
    stats = stats if stats is not None else PrefetchStats()
    if control is not None:
        control.begin()
        depth = control.depth
    stats.depth = depth = max(1, depth)
    pending: deque[_Job[K, T]] = deque()
    source = iter(jobs)
    exhausted = False
    streak = 0
    try:
        while True:
            if control is not None:
                stats.depth = depth = control.depth
            while not exhausted and len(pending) < depth:
                try:
                    key, fn = next(source)
                except StopIteration:
                    exhausted = True
                    break
                pending.append(_Job(key, fn, pool.submit(fn)))
            if not pending:
                return
            job = pending.popleft()
            ready = job.future.done()
            if ready:
                streak = 0
            else:
                stats.starved += 1
                streak += 1
                # Starved twice in a row at this depth: read further ahead (bounded by max_depth).
                if control is None and streak >= 2 and depth < max_depth:
                    depth += 1
                    stats.depth = depth
                    streak = 0
            asked = time.perf_counter()
            try:
                result = job.result()
            except Exception as e:
                e.add_note(f"npyfeed: while reading {describe(job.key)}")
                raise
            if control is not None:
                now = time.perf_counter()
                control.observe(0.0 if ready else now - asked, sum(j.future.done() for j in pending), now)
            stats.delivered += 1
            yield job.key, result
    finally:
        for job in pending:
            job.future.cancel()
