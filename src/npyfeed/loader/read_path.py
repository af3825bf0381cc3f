"""The read path a Loader owns: batches fetched in chunks on read threads into recycled aligned buffers, then
transformed one batch per job (:mod:`npyfeed.loader.transforms`); the first bad batch's error delivered after the
good ones before it, and the kernel asked to read
ahead (a whole file streamed once per process when it fits in memory, whole blocks per window of a block shuffle,
a batch's rows at once when reads are slow).

Which rows each batch reads is not its business: it asks its :class:`Schedule` (the Loader). Threads, buffers,
locks and the memory plan belong to one process: they are made on first use in each process (a forked or
unpickled copy makes its own), never copied.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np

from npyfeed.arguments import ShuffleMode
from npyfeed.loader.autotune import Tuner
from npyfeed.loader.batch_errors import batch_error
from npyfeed.loader.budget import Plan, plan, read_windows
from npyfeed.loader.buffers import BufferPool
from npyfeed.loader.in_order import can_read_in_order, read_in_order
from npyfeed.loader.kernel_hints import KernelHints
from npyfeed.loader.metrics import DataWait
from npyfeed.loader.prefetch import PrefetchStats, Stopped, prefetch_ordered, stopping
from npyfeed.loader.transforms import Pending, Transformed, hand_over, queue_transforms, transform_batch
from npyfeed.order.orders import Order, Sequential
from npyfeed.shard import Layout, Shard
from npyfeed.sources.base import row_nbytes
from npyfeed.sources.columns import Columns
from npyfeed.storage.deadlines import Stop, read_scope

Batch = Any

__all__ = ["ReadPath", "Schedule"]

_REPLAN_SECONDS = 0.5  # how often reads re-measure the memory left (a few /proc and cgroup files)


class Schedule(Protocol):
    """What the read path asks its Loader: which rows each batch of an epoch reads, in which order and shard."""

    shard: Shard

    @property
    def order(self) -> Order: ...

    def batch_rows(self, epoch: int, index: int, *, offset: int = 0) -> np.ndarray: ...

    def layout(self, offset: int = 0) -> Layout: ...

    def num_batches(self, offset: int = 0) -> int: ...


@dataclass
class _Process:
    """The read path's resources in one process: threads, buffers, locks, the memory plan of this machine and the
    tuner of its depth and reads at once (whose slots bound the reads copying at once)."""

    plan: Plan
    buffers: BufferPool
    tuner: Tuner
    lock: threading.Lock = field(default_factory=threading.Lock)
    pool: ThreadPoolExecutor | None = None
    planned_at: float = field(default_factory=time.monotonic)
    pid: int = field(default_factory=os.getpid)


def _reads(indices: range, step: int, stop: int, *, split_first: bool) -> Iterator[tuple[int, int]]:
    """``(first, stop)`` batches of each read of ``indices``: ``step`` consecutive batches (one each when strided),
    the first read split into its first batch and the rest with ``split_first``. Lazy: an epoch of a file of
    billions of rows has millions of reads, which must not be a list (anonymous memory is the budget's)."""
    for k, first in enumerate(indices[::step]):
        end = min(first + step, stop)
        if k == 0 and split_first and first + 1 < end:
            yield first, first + 1
            first += 1
        yield first, end


class ReadPath:
    """Reads batches of ``schedule`` from ``source``: chunks -> recycled aligned buffers -> ``transform``.

    The configuration is what the Loader validated; ``read_bytes`` is about what one read task fetches.
    """

    def __init__(
        self,
        schedule: Schedule,
        source: Columns,
        *,
        batch_size: int,
        shuffle: ShuffleMode,
        transform: Callable[[Batch], Batch] | None,
        num_threads: int,
        io_threads: int,
        prefetch: int | None,
        io_hints: bool | None,
        read_bytes: int,
        tune_depth: bool = False,
        tune_threads: bool = False,
    ) -> None:
        self.schedule, self.source = schedule, source
        self.batch_size, self.shuffle, self.transform = batch_size, shuffle, transform
        self.num_threads, self.io_threads, self.prefetch = num_threads, io_threads, prefetch
        self.io_hints, self.read_bytes = io_hints, read_bytes
        self.tune_depth, self.tune_threads = tune_depth, tune_threads  # see npyfeed.loader.autotune
        self.metrics = DataWait()  # what the consumer waited for, across epochs (see npyfeed.loader.metrics)
        # Kept when pickled: a worker knows what was streamed.
        self.hints = KernelHints(source, shuffle, io_hints, sharded=schedule.shard.count > 1)
        self._in_order_source = shuffle == "none" and can_read_in_order(source)
        self._process: _Process | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Configuration and hints travel to worker processes; threads, buffers and the plan do not."""
        return {**self.__dict__, "_process": None}  # metrics: a fresh account (DataWait.__reduce__)

    def _here(self) -> _Process:
        """This process's resources, made on first use here (a forked child must not wait on its parent's pool)."""
        local = self._process
        if local is None or local.pid != os.getpid():
            made = self.make_plan()  # this machine's budget, not the one a pickled loader was made on
            tuner = Tuner(
                depth=made.depth,
                max_depth=made.max_depth,
                concurrency=self.num_threads,
                max_concurrency=self.io_threads,
                tune_depth=self.tune_depth,
                tune_concurrency=self.tune_threads,
            )
            local = _Process(made, BufferPool(made.buffers), tuner)
            self._process = local
        return local

    def make_plan(self, batches_per_read: int | None = None, prefetch: int | None = None) -> Plan:
        """The read geometry within the memory budget (see :mod:`npyfeed.loader.budget`)."""
        row_bytes = [row_nbytes(a) for a in self.source.arrays]
        return plan(
            batch_size=self.batch_size,
            row_bytes=row_bytes,
            file_bytes=[len(self.source) * b for b in row_bytes],
            random=self.shuffle == "global",
            num_threads=self.num_threads,
            io_threads=self.io_threads,
            read_bytes=self.read_bytes,
            batches_per_read=batches_per_read,
            prefetch=self.prefetch if prefetch is None else prefetch,
        )

    @property
    def plan(self) -> Plan:
        """This process's plan: batches per read, windows, buffers, read-ahead depth."""
        return self._here().plan

    @property
    def tuning(self) -> dict[str, Any]:
        """What the tuner of this process chose (see :meth:`npyfeed.loader.autotune.Tuner.snapshot`)."""
        return self._here().tuner.snapshot()

    @property
    def buffers(self) -> BufferPool:
        """The recycled output buffers of this process."""
        return self._here().buffers

    @property
    def batches_per_read(self) -> int:
        """Batches one read task fetches together: about ``read_bytes`` at a time, so small batches amortize
        overheads (fewer when the memory budget is tight)."""
        return self.plan.batches_per_read

    def close(self) -> None:
        """Stop the read threads of this process (a later read starts new ones)."""
        local = self._process
        if local is not None and local.pid == os.getpid() and local.pool is not None:
            local.pool.shutdown(wait=True, cancel_futures=True)
            local.pool = None

    # -- reads ---------------------------------------------------------------------------------------------------

    def read_chunk(
        self,
        epoch: int,
        start: int,
        stop: int,
        stop_event: threading.Event | None = None,
        *,
        offset: int = 0,
        transform: bool = True,
    ) -> Chunk:
        """Batches ``start..stop-1`` of ``epoch`` (of its rest from global position ``offset``), transformed one
        after another unless ``transform`` is false; a failure is returned with the good batches before it, never
        raised. Its requests to object stores share one deadline from when it began (:func:`read_scope`), and are
        cancelled when ``stop_event`` (a :class:`Stop`) is set."""
        with read_scope(stop_event if isinstance(stop_event, Stop) else None):
            return self._read_chunk_in_scope(epoch, start, stop, stop_event, offset, transform)

    def _read_chunk_in_scope(
        self, epoch: int, start: int, stop: int, stop_event: threading.Event | None, offset: int, transform: bool
    ) -> Chunk:
        began = time.perf_counter()
        try:
            columns, sizes = self._read_rows(epoch, start, stop, stop_event, offset)
        except Stopped:
            return Chunk([])
        except Exception as e:
            if stopping(stop_event):
                return Chunk([])  # nobody waits: its requests were cancelled (CancelledError) or it failed unseen
            if stop - start == 1 or isinstance(e, TimeoutError):
                # A timeout spent the read's deadline: it is the first batch's error (the one the consumer waits
                # for), not a reason to read each batch again, each waiting as long.
                return Chunk([], batch_error(self.source.paths, epoch, start, "read", e))
            # Which batch failed? Read them one by one (the rare path), delivering those before it.
            batches: list[Batch] = []
            rows: list[int] = []
            for index in range(start, stop):
                one = self.read_chunk(epoch, index, index + 1, stop_event, offset=offset, transform=transform)
                batches += one.batches
                rows += one.rows
                if one.error is not None or not one.batches:
                    return Chunk(batches, one.error, rows)
            return Chunk(batches, rows=rows)
        read_done = time.perf_counter()
        batches = []
        first = 0  # of the batch's rows in the chunk's columns
        for index, size in zip(range(start, stop), sizes, strict=True):
            if stopping(stop_event):
                break  # nobody waits for these any more: exit must not wait for a whole chunk of transforms
            end = first + size
            batch = self.source.pack([column[first:end] for column in columns])
            first = end
            if transform and self.transform is not None:
                out = transform_batch(
                    self.transform, batch, size, epoch=epoch, index=index, paths=self.source.paths, stop_event=None
                )
                if out.error is not None:
                    return Chunk(batches, out.error, sizes[: len(batches)])
                batch = out.batch
            batches.append(batch)
        done = time.perf_counter()
        return Chunk(batches, None, sizes, done, read_done - began, done - read_done)

    def _read_rows(
        self, epoch: int, start: int, stop: int, stop_event: threading.Event | None, offset: int
    ) -> tuple[list[np.ndarray], list[int]]:
        """(one array per column holding the rows of batches ``start..stop-1``, each batch's row count)."""
        local, hints = self._here(), self.hints
        hints.prepare(epoch, local.lock)
        rows, sizes = self._chunk_rows(epoch, start, stop, offset)
        hinting = hints.hinting
        if hinting and local.tuner.tune_concurrency and hints.hints_every_read:
            local.tuner.fix_concurrency()  # these reads never take a slot (below): tuning their number is no use
        hint = None
        if hinting and self.shuffle == "block":
            hints.block_windows(epoch, self.schedule.order, self.schedule.layout(offset), start, stop, local.lock)
        elif hinting and self.shuffle != "block":
            hint = hints.rows
        arrays = self.source.arrays
        outs = [local.buffers.empty((rows.size, *a.shape[1:]), a.dtype) for a in arrays]
        # Cold data: the rows were queued with the kernel at once, and this read may wait on storage alongside
        # up to `io_threads` others, since waiting holds no core. Warm data: at most `num_threads` copy at once.
        with contextlib.nullcontext() if hinting else local.tuner.slots:
            started = time.perf_counter()
            read_windows(
                arrays,
                rows,
                outs,
                self._current_plan().window_rows,
                hint,
                lambda: stopping(stop_event),
                partial(hints.count_mapped, trim_rows=local.plan.trim_rows, lock=local.lock),
            )
            hints.measured(rows.size * self.source.row_bytes, time.perf_counter() - started)
        return outs, sizes

    def _chunk_rows(self, epoch: int, start: int, stop: int, offset: int) -> tuple[np.ndarray, list[int]]:
        """The rows of batches ``start..stop-1`` end to end, each batch's sorted (a batch is a set: read in file
        order), and each batch's row count.

        Consecutive batches of one shard are consecutive positions: their rows come from one call to the order,
        and in file order they are sorted already (the chunk is one run of rows, copied as one slice). Otherwise
        each batch asks the schedule.
        """
        schedule = self.schedule
        layout = schedule.layout(offset)
        if schedule.shard.count == 1 and 0 <= start < stop <= len(layout):
            lo, hi = layout.positions(start)[0], layout.positions(stop - 1)[1]
            sizes = [b - a for a, b in map(layout.positions, range(start, stop))]
            if sum(sizes) == hi - lo:  # no gap between the batches
                order = schedule.order
                rows = order.rows(epoch, lo, hi)
                if not isinstance(order, Sequential):
                    first = 0
                    for size in sizes:
                        rows[first : first + size].sort()
                        first += size
                return rows, sizes
        per_batch = [schedule.batch_rows(epoch, i, offset=offset) for i in range(start, stop)]
        return (per_batch[0] if len(per_batch) == 1 else np.concatenate(per_batch)), [r.size for r in per_batch]

    def _current_plan(self) -> Plan:
        """The plan, re-measured against the memory left at most every ``_REPLAN_SECONDS``: what the application
        allocates after the loader was made shrinks the windows of the reads that follow."""
        local, now = self._here(), time.monotonic()
        if now - local.planned_at > _REPLAN_SECONDS:
            local.planned_at = now
            local.plan = self.make_plan()
            local.tuner.bound(local.plan.max_depth)  # less memory left: never deeper than the new plan allows
        return local.plan

    def iter_batches(
        self, epoch: int, indices: range | None = None, *, offset: int = 0, prefetch: int | None = None
    ) -> Iterator[tuple[int, Batch]]:
        """``(index, batch)`` for batches ``indices`` (default: all) of ``epoch`` (of its rest from global position
        ``offset``), read ahead on the thread pool.

        Pure: unlike ``iter(loader)`` it neither begins a pass nor moves the cursor, so framework adapters (and
        workers reading every k-th batch) share the read path and record what their consumer received themselves.
        """
        count = self.schedule.num_batches(offset)
        indices = range(count) if indices is None else indices
        if indices.step < 0 or (len(indices) and not 0 <= indices[0] <= indices[-1] < count):
            raise IndexError(f"batches {indices} are out of range for {count} batches in epoch {epoch}")
        if self._reads_in_order(prefetch):
            local = self._here()
            self.hints.prepare(epoch, local.lock)
            if not self.hints.hinting:  # warm data: copied on this thread (see npyfeed.loader.in_order)
                indices = yield from read_in_order(
                    self.source, self.schedule.layout(offset), indices, self.hints, self.metrics,
                    epoch=epoch, batch_size=self.batch_size,
                    count_mapped=partial(self.hints.count_mapped, trim_rows=local.plan.trim_rows, lock=local.lock),
                )  # fmt: skip
                if not len(indices):
                    return
        yield from self._read_ahead(epoch, indices, offset, prefetch)

    def _reads_in_order(self, prefetch: int | None) -> bool:
        """Whether a pass may copy its batches on the consumer's thread while the data is warm: file order, no
        transform, local C-order files, and no read-ahead asked for (``prefetch``)."""
        return (
            self._in_order_source
            and self.transform is None
            and prefetch is None
            and self.prefetch is None
            and isinstance(self.schedule.order, Sequential)
        )

    def _read_ahead(self, epoch: int, indices: range, offset: int, prefetch: int | None) -> Iterator[tuple[int, Batch]]:
        """``(index, batch)`` for batches ``indices``, read ahead on the thread pool."""
        step = self.batches_per_read if indices.step == 1 else 1
        stop = indices.stop if len(indices) else indices.start
        stop_event = Stop()  # set when the consumer leaves: reads stop, their requests to object stores are cancelled
        pool = self._executor()
        read = self.read_chunk if self.transform is None else partial(self._read_to_transform, pool)
        # The first read is one batch: the consumer's first batch never waits for a whole read of them (seconds for
        # a global shuffle of an object store, one request per row), and its requests go first (read scopes that
        # began first are served first). The second read fills up to the usual chunk boundary. Not for a block
        # shuffle: a batch draws on its whole window, which is read as a whole either way.
        split_first = step > 1 and self.shuffle != "block"
        reads = _reads(indices, step, stop, split_first=split_first)
        jobs = ((i, partial(read, epoch, i, j, stop_event, offset=offset)) for i, j in reads)
        current = self.plan
        geometry = current if step == current.batches_per_read and prefetch is None else self.make_plan(step, prefetch)
        stats = PrefetchStats()
        tuner = self._here().tuner
        # The tuner's depth counts reads of the plan's size: a strided or re-prefetched pass keeps the fixed rule.
        control = tuner if tuner.active and geometry is current else None
        chunks = prefetch_ordered(
            jobs, pool, geometry.depth, max_depth=geometry.max_depth, stats=stats, control=control
        )
        try:
            while True:
                asked = time.perf_counter()  # the consumer asks for the next batch: its wait starts
                try:
                    first, chunk = next(chunks)
                except StopIteration:
                    return
                got = time.perf_counter()
                if chunk.pending:
                    record = partial(self._record_transformed, chunk, stats.depth, control)
                    positions = range(first, first + len(chunk.pending) * indices.step, indices.step)
                    if not (yield from hand_over(chunk.pending, positions, asked, record)):
                        return  # the interpreter exits
                    if chunk.error is not None:
                        raise chunk.error
                    continue
                handed, last = 0, len(chunk.batches)
                try:
                    for batch in chunk.batches:
                        handed += 1
                        if handed == last:  # recorded as the chunk's last batch is handed over (or at a stop)
                            self._record(chunk, handed, got - asked, asked, stats.depth)
                        yield first + (handed - 1) * indices.step, batch
                finally:
                    if handed < last or not last:  # stopped early, or a failed read with no batch
                        self._record(chunk, handed, got - asked, asked, stats.depth)
                if chunk.error is not None:
                    raise chunk.error
        finally:
            stop_event.set()  # reads still running stop at their next batch or window

    def _read_to_transform(
        self, pool: Executor, epoch: int, start: int, stop: int, stop_event: threading.Event, *, offset: int
    ) -> Chunk:
        """Read batches ``start..stop-1``, then queue each one's transform on ``pool``."""
        assert self.transform is not None
        chunk = self.read_chunk(epoch, start, stop, stop_event, offset=offset, transform=False)
        rows = chunk.rows[: len(chunk.batches)]  # a read stopped early has fewer batches than rows
        chunk.pending = queue_transforms(
            self.transform, chunk.batches, rows, pool,
            epoch=epoch, first=start, paths=self.source.paths, stop_event=stop_event,
        )  # fmt: skip
        chunk.batches = []
        return chunk

    def _record_transformed(
        self, chunk: Chunk, depth: int, control: Tuner | None, k: int, asked: float, got: float, done: Transformed
    ) -> None:
        """A transformed batch handed over: recorded on its own (batches of one read wait differently), and its
        wait told to the tuner (the read it came with was taken done, before its transforms)."""
        if control is not None:
            control.waited(got - asked)
        rows = chunk.rows[k]
        self.metrics.record_chunk(
            got - asked,
            0 if done.error is not None else 1,
            rows,
            rows * self.source.row_bytes,
            asked=asked,
            queue=got - max(chunk.done, done.done),
            depth=depth,
            read=0.0 if k else chunk.read_s,
            transform=done.seconds,
        )

    def _record(self, chunk: Chunk, handed: int, wait: float, asked: float, depth: int) -> None:
        """One record per read task the consumer took, not per batch: its batches are not slowed."""
        rows = sum(chunk.rows[:handed])
        self.metrics.record_chunk(
            wait,
            handed,
            rows,
            rows * self.source.row_bytes,
            asked=asked,
            queue=asked + wait - chunk.done,  # how long it sat done before the consumer took it
            depth=depth,
            read=chunk.read_s,
            transform=chunk.transform_s,
        )

    def _executor(self) -> ThreadPoolExecutor:
        # A forked child (a DataLoader worker) inherits the pool but not its threads: _here() gives it its own.
        local = self._here()
        if local.pool is None:
            local.pool = ThreadPoolExecutor(self.io_threads, thread_name_prefix="npyfeed")
            weakref.finalize(self, local.pool.shutdown, wait=False, cancel_futures=True)
        return local.pool


@dataclass
class Chunk:
    """What one read task hands the consumer: the good batches, then the error of the first bad one."""

    batches: list[Batch]
    error: Exception | None = None
    rows: list[int] = field(default_factory=list)  # rows of each batch (as read, before the transform)
    done: float = field(default_factory=time.perf_counter)  # when the read finished
    read_s: float = 0.0  # seconds reading storage
    transform_s: float = 0.0  # seconds in the transform
    pending: list[Pending] = field(default_factory=list)  # transforms queued, one per batch, instead of batches
