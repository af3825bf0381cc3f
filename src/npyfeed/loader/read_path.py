"""The read path a Loader owns: batches fetched in chunks on read threads into recycled aligned buffers, then
transformed; the first bad batch's error delivered after the good ones before it, and the kernel asked to read
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np

from npyfeed.arguments import ShuffleMode
from npyfeed.loader.batch_errors import batch_error, check_rows
from npyfeed.loader.budget import PAGE, Plan, drop_page_tables, plan, read_windows
from npyfeed.loader.buffers import BufferPool
from npyfeed.loader.prefetch import PrefetchStats, Stopped, prefetch_ordered, stopping
from npyfeed.order.orders import BlockShuffle, Order, unwrap
from npyfeed.runs import runs
from npyfeed.shard import Layout, Shard
from npyfeed.sources.base import row_nbytes
from npyfeed.sources.columns import Columns
from npyfeed.storage.deadlines import read_scope
from npyfeed.storage.urls import is_url
from npyfeed.system import available_memory

Batch = Any

__all__ = ["ReadPath", "Schedule"]

# Kernel hints pay off when reads are slow (cold data): below this read speed a batch asks the kernel to queue
# all its rows at once (posix_fadvise WILLNEED) instead of faulting them in one page at a time.
_HINT_BELOW_BYTES_PER_S = 300e6
_REPLAN_SECONDS = 0.5  # how often reads re-measure the memory left (a few /proc and cgroup files)


class Schedule(Protocol):
    """What the read path asks its Loader: which rows each batch of an epoch reads, in which order and shard."""

    order: Order
    shard: Shard

    def batch_rows(self, epoch: int, index: int, *, offset: int = 0) -> np.ndarray: ...

    def layout(self, offset: int = 0) -> Layout: ...

    def num_batches(self, offset: int = 0) -> int: ...


@dataclass
class _Process:
    """The read path's resources in one process: threads, buffers, locks and the memory plan of this machine."""

    plan: Plan
    buffers: BufferPool
    cpu_slots: threading.BoundedSemaphore
    lock: threading.Lock = field(default_factory=threading.Lock)
    pool: ThreadPoolExecutor | None = None
    planned_at: float = field(default_factory=time.monotonic)
    pid: int = field(default_factory=os.getpid)


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
    ) -> None:
        self.schedule, self.source = schedule, source
        self.batch_size, self.shuffle, self.transform = batch_size, shuffle, transform
        self.num_threads, self.io_threads, self.prefetch = num_threads, io_threads, prefetch
        self.io_hints, self.read_bytes = io_hints, read_bytes
        self.stats = PrefetchStats()
        # What the kernel was asked so far: kept when pickled (a worker knows the file was streamed).
        # Block shuffles always hint: once per window of blocks, it costs nothing and turns reads sequential.
        self._hinting = io_hints is not False and (bool(io_hints) or shuffle == "block")
        self._hinted: set[tuple[int, int]] = set()
        self._prepared: set[int] = set()
        self._streamed = False
        self._rows_mapped = 0  # rows read since the page tables were last dropped
        self._process: _Process | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Configuration and hints travel to worker processes; threads, buffers and the plan do not."""
        return {**self.__dict__, "_process": None, "stats": PrefetchStats()}

    def _here(self) -> _Process:
        """This process's resources, made on first use here (a forked child must not wait on its parent's pool)."""
        local = self._process
        if local is None or local.pid != os.getpid():
            made = self.make_plan()  # this machine's budget, not the one a pickled loader was made on
            local = _Process(made, BufferPool(made.buffers), threading.BoundedSemaphore(self.num_threads))
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
        self, epoch: int, start: int, stop: int, stop_event: threading.Event | None = None, *, offset: int = 0
    ) -> Chunk:
        """Batches ``start..stop-1`` of ``epoch`` (of its rest from global position ``offset``); a failure is
        returned with the good batches before it, never raised. Its requests to object stores share one deadline
        from when it began (:func:`read_scope`)."""
        with read_scope():
            return self._read_chunk_in_scope(epoch, start, stop, stop_event, offset)

    def _read_chunk_in_scope(
        self, epoch: int, start: int, stop: int, stop_event: threading.Event | None, offset: int
    ) -> Chunk:
        try:
            columns, per_batch = self._read_rows(epoch, start, stop, stop_event, offset)
        except Stopped:
            return Chunk([])
        except Exception as e:
            if stop - start == 1 or isinstance(e, TimeoutError):
                # A timeout spent the read's deadline: it is the first batch's error (the one the consumer waits
                # for), not a reason to read each batch again, each waiting as long.
                return Chunk([], batch_error(self.source.paths, epoch, start, "read", e))
            # Which batch failed? Read them one by one (the rare path), delivering those before it.
            batches: list[Batch] = []
            for index in range(start, stop):
                one = self.read_chunk(epoch, index, index + 1, stop_event, offset=offset)
                batches += one.batches
                if one.error is not None or not one.batches:
                    return Chunk(batches, one.error)
            return Chunk(batches)
        batches = []
        first = 0  # of the batch's rows in the chunk's columns
        for index, batch_rows in zip(range(start, stop), per_batch, strict=True):
            if stopping(stop_event):
                break  # nobody waits for these any more: exit must not wait for a whole chunk of transforms
            end = first + batch_rows.size
            batch = self.source.pack([column[first:end] for column in columns])
            first = end
            if self.transform is not None:
                try:
                    batch = self.transform(batch)
                    check_rows(batch, batch_rows.size, epoch, index, self.source.paths)
                except Exception as e:
                    return Chunk(batches, batch_error(self.source.paths, epoch, index, "transform", e))
            batches.append(batch)
        return Chunk(batches)

    def _read_rows(
        self, epoch: int, start: int, stop: int, stop_event: threading.Event | None, offset: int
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(one array per column holding the rows of batches ``start..stop-1``, each batch's sorted rows)."""
        if epoch not in self._prepared:
            self._prepare(epoch)
        per_batch = [self.schedule.batch_rows(epoch, i, offset=offset) for i in range(start, stop)]
        rows = per_batch[0] if len(per_batch) == 1 else np.concatenate(per_batch)
        hinting = self._hinting
        hint = None
        if hinting and self.shuffle == "block":
            self._hint(epoch, start, stop, offset)
        elif hinting:
            hint = self._hint_rows
        arrays = self.source.arrays
        local = self._here()
        outs = [local.buffers.empty((rows.size, *a.shape[1:]), a.dtype) for a in arrays]
        # Cold data: the rows were queued with the kernel at once, and this read may wait on storage alongside
        # up to `io_threads` others, since waiting holds no core. Warm data: at most `num_threads` copy at once.
        with contextlib.nullcontext() if hinting else local.cpu_slots:
            started = time.perf_counter()
            read_windows(
                arrays,
                rows,
                outs,
                self._current_plan().window_rows,
                hint,
                lambda: stopping(stop_event),
                self._count_mapped,
            )
            elapsed = time.perf_counter() - started
        if self.io_hints is None and self.shuffle != "block" and not self._streamed:
            self._hinting = rows.size * self.source.row_bytes < _HINT_BELOW_BYTES_PER_S * elapsed
        return outs, per_batch

    def _current_plan(self) -> Plan:
        """The plan, re-measured against the memory left at most every ``_REPLAN_SECONDS``: what the application
        allocates after the loader was made shrinks the windows of the reads that follow."""
        local, now = self._here(), time.monotonic()
        if now - local.planned_at > _REPLAN_SECONDS:
            local.planned_at = now
            local.plan = self.make_plan()
        return local.plan

    def _count_mapped(self, rows: int) -> None:
        """Drop the mappings' page tables once the rows read since the last drop could have filled their share."""
        local = self._here()
        trim = local.plan.trim_rows
        if not trim:
            return
        with local.lock:
            self._rows_mapped += rows
            due = self._rows_mapped >= trim
            if due:
                self._rows_mapped = 0
        if due:
            drop_page_tables(self.source)

    def _prepare(self, epoch: int) -> None:
        """Once per epoch, before its first read: set the kernel's read-ahead policy for this access pattern.

        Shuffled data that fits in memory is read whole, sequentially, on a background thread the first time: far
        faster than faulting it in row by row at random, and every later read is a page-cache hit. Data larger
        than memory is read by row instead, with per-batch hints (see ``io_hints``). Remote objects are never
        streamed whole (there is no page cache to fill, only a bounded read-ahead pool): a block shuffle fetches
        its windows ahead instead, each block once.
        """
        with self._here().lock:
            if epoch in self._prepared:
                return
            self._prepared.add(epoch)
            stream = (
                self.shuffle != "none"
                and self.io_hints is not False
                and not self._streamed
                and not any(is_url(p) for p in self.source.paths)
                and len(self.source) * self.source.row_bytes <= available_memory() // 2
            )
            self._streamed = self._streamed or stream
        self.source.advise("sequential" if self.shuffle == "none" else "random")
        if stream:
            whole = [(0, len(self.source))]
            threading.Thread(target=self.source.will_need, args=(whole,), name="npyfeed-stream", daemon=True).start()
            if self.io_hints is None:
                self._hinting = False  # row hints would only scatter the stream with random reads

    def _hint(self, epoch: int, start: int, stop: int, offset: int) -> None:
        """Block shuffles: whole blocks, once per window of blocks, and the next window too."""
        order = self.schedule.order
        inner = unwrap(order)
        if self.schedule.shard.count == 1 and isinstance(inner, BlockShuffle):
            # Whole blocks, once per window, and the next window too, so storage streams across window edges.
            window_rows = inner.block_rows * inner.window_blocks
            layout = self.schedule.layout(offset)
            first = layout.positions(start)[0] // window_rows
            last = min(layout.positions(stop - 1)[1] // window_rows + 1, (len(self.source) - 1) // window_rows)
            with self._here().lock:
                todo = [w for w in range(first, last + 1) if (epoch, w) not in self._hinted]
                if len(self._hinted) > 1024:
                    self._hinted.clear()
                self._hinted.update((epoch, w) for w in todo)
            ranges = []
            for w in todo:
                lo = w * window_rows
                ranges += order.hint_ranges(epoch, lo, min(lo + window_rows, len(self.source)))
        else:
            ranges = []
        self.source.will_need(ranges)

    def _hint_rows(self, rows: np.ndarray) -> None:
        """Queue the reads of ``rows`` with the kernel; neighbours sharing a page are one request."""
        widest = max(1, max(row_nbytes(a) for a in self.source.arrays))
        self.source.will_need(runs(np.sort(rows), gap=max(1, PAGE // widest) - 1))  # rows sharing a page: one range

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
        step = self.batches_per_read if indices.step == 1 else 1
        stop = indices.stop if len(indices) else indices.start
        stop_event = threading.Event()
        jobs = (
            (i, partial(self.read_chunk, epoch, i, min(i + step, stop), stop_event, offset=offset))
            for i in indices[::step]
        )
        current = self.plan
        geometry = current if step == current.batches_per_read and prefetch is None else self.make_plan(step, prefetch)
        self.stats = PrefetchStats()
        try:
            for first, chunk in prefetch_ordered(
                jobs, self._executor(), geometry.depth, max_depth=geometry.max_depth, stats=self.stats
            ):
                got = range(first, first + len(chunk.batches) * indices.step, indices.step)
                yield from zip(got, chunk.batches, strict=True)
                if chunk.error is not None:
                    raise chunk.error
        finally:
            stop_event.set()  # reads still running stop at their next batch or window

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
