"""A Loader's ``transform``, one batch at a time on the read threads, each batch handed over once it is done.

A read task fetches many small batches together (one copy per chunk), but transforms them one by one: each batch
becomes a job on the thread pool as soon as its chunk is read, so transforms of different batches run on different
threads, and the consumer takes batch ``k`` when its transform is done, not when the whole chunk's are. A batch no
thread has started when the consumer asks for it is transformed on the consumer's thread at once (as the read tasks
of :mod:`npyfeed.loader.prefetch` are), and when the pool is shut down (``close()``, interpreter exit) the consumer
transforms what is left itself. Memory stays bounded by the chunks read ahead: a chunk's transformed batches
replace its batches.

A transform that raises, or returns another number of rows, becomes the batch's error (its type kept, the batch
named: :func:`~npyfeed.loader.batch_errors.batch_error`); once its consumer is gone (or the interpreter exits), a
transform not started yet is skipped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from functools import partial
from typing import Any

from npyfeed.loader.batch_errors import batch_error, check_rows
from npyfeed.loader.prefetch import stopping

__all__ = ["Pending", "Transformed", "hand_over", "queue_transforms", "transform_batch"]


@dataclass(frozen=True)
class Transformed:
    """A batch after the transform, or the error of its transform; ``stopped``: skipped, nobody waits for it."""

    batch: Any = None
    error: Exception | None = None
    seconds: float = 0.0  # in the transform
    done: float = 0.0  # when it finished (time.perf_counter())
    stopped: bool = False


def transform_batch(
    transform: Callable[[Any], Any],
    batch: Any,
    rows: int,
    *,
    epoch: int,
    index: int,
    paths: tuple[str, ...],
    stop_event: threading.Event | None,
) -> Transformed:
    """Batch ``index`` of ``epoch`` (``rows`` rows of ``paths``) transformed, or the error naming it; never raises
    an ``Exception``."""
    if stopping(stop_event):
        return Transformed(stopped=True)
    began = time.perf_counter()
    try:
        out = transform(batch)
        check_rows(out, rows, epoch, index, paths)
    except Exception as e:
        done = time.perf_counter()
        return Transformed(error=batch_error(paths, epoch, index, "transform", e), seconds=done - began, done=done)
    done = time.perf_counter()
    return Transformed(out, seconds=done - began, done=done)


class Pending:
    """One batch's transform: queued on ``pool`` now, its result taken later by the consumer."""

    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[], Transformed], pool: Executor) -> None:
        self.fn = fn
        self.future: Future[Transformed] | None
        try:
            self.future = pool.submit(fn)
        except RuntimeError:  # the pool was shut down (Loader.close(), interpreter exit): the consumer runs it
            self.future = None

    def result(self) -> Transformed:
        """The transformed batch; one no thread has started yet is transformed here, now."""
        if self.future is None or self.future.cancel():
            return self.fn()
        return self.future.result()

    def cancel(self) -> None:
        """Drop the transform if no thread has started it (the consumer left, or an earlier batch failed)."""
        if self.future is not None:
            self.future.cancel()


def queue_transforms(
    transform: Callable[[Any], Any],
    batches: Sequence[Any],
    rows: Sequence[int],
    pool: Executor,
    *,
    epoch: int,
    first: int,
    paths: tuple[str, ...],
    stop_event: threading.Event | None,
) -> list[Pending]:
    """The transforms of batches ``first, first + 1, ...`` of ``epoch`` (``rows`` rows each), queued on ``pool``."""
    one = partial(transform_batch, transform, epoch=epoch, paths=paths, stop_event=stop_event)
    sized = zip(batches, rows, strict=True)
    return [Pending(partial(one, batch, n, index=first + k), pool) for k, (batch, n) in enumerate(sized)]


def hand_over(
    pending: Sequence[Pending],
    indices: range,
    asked: float,
    record: Callable[[int, float, float, Transformed], None],
) -> Generator[tuple[int, Any], None, bool]:
    """``(indices[k], batch)`` for each transformed batch ``k`` in order, as soon as it is done, after
    ``record(k, asked, now, transformed)`` (the consumer asked for batch 0 at ``asked``); then the first failed
    transform's error. Returns False if a transform was skipped because the interpreter exits. Transforms not
    started are dropped when the consumer leaves or a batch fails."""
    try:
        for k, item in enumerate(pending):
            if k:
                asked = time.perf_counter()  # the consumer asks for the next batch
            done = item.result()
            if done.stopped:
                return False
            record(k, asked, time.perf_counter(), done)
            if done.error is not None:
                raise done.error
            yield indices[k], done.batch
    finally:
        for item in pending:
            item.cancel()
    return True
