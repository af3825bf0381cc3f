"""How a :class:`~npyfeed.loader.loader.Loader` reads: batches fetched in chunks on its read threads, the first bad
batch's error delivered after the good ones before it, and the kernel asked to read ahead (a whole file streamed
once per process when it fits in memory, whole blocks per window of a block shuffle, a batch's rows at once when
reads are slow).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from npyfeed.arguments import ShuffleMode
from npyfeed.errors import ConfigError, NpyfeedError, WorkerError
from npyfeed.loader.budget import PAGE, Plan, drop_page_tables, read_windows
from npyfeed.loader.buffers import BufferPool
from npyfeed.loader.prefetch import PrefetchStats, Stopped, prefetch_ordered, stopping
from npyfeed.order.orders import Order
from npyfeed.runs import runs
from npyfeed.shard import Layout, Shard
from npyfeed.sources.base import row_nbytes
from npyfeed.sources.columns import Columns
from npyfeed.storage.urls import is_url
from npyfeed.system import available_memory

Batch = Any

__all__ = ["BatchReads"]

# Kernel hints pay off when reads are slow (cold data): below this read speed a batch asks the kernel to queue
# all its rows at once (posix_fadvise WILLNEED) instead of faulting them in one page at a time.
_HINT_BELOW_BYTES_PER_S = 300e6
_REPLAN_SECONDS = 0.5  # how often reads re-measure the memory left (a few /proc and cgroup files)


class BatchReads:
    """The Loader's read path, as a mixin: the configuration it reads is the Loader's (declared here), and the
    state it keeps is set up by :meth:`_init_reads` (and again after unpickling)."""

    source: Columns
    shuffle: ShuffleMode
    transform: Callable[[Batch], Batch] | None
    order: Order
    shard: Shard
    num_threads: int
    io_threads: int
    io_hints: bool | None
    stats: PrefetchStats

    def _init_hints(self) -> None:
        """What the kernel was asked so far (kept when the loader is pickled: a worker knows the file streamed)."""
        # Block shuffles always hint: once per window of blocks, it costs nothing and turns reads sequential.
        self._hinting = self.io_hints is not False and (bool(self.io_hints) or self.shuffle == "block")
        self._hinted: set[tuple[int, int]] = set()
        self._prepared: set[int] = set()
        self._streamed = False
        self._rows_mapped = 0  # rows read since the page tables were last dropped

    def _init_reads(self) -> None:
        """The read path's state (threads, buffers and locks are made anew in each process)."""
        self._lock = threading.Lock()
        self._cpu_slots = threading.BoundedSemaphore(self.num_threads)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = os.getpid()
        self._plan: Plan = self._make_plan()  # this machine's budget, not the one a pickled loader was made on
        self._planned_at = time.monotonic()
        self._buffers = BufferPool(self._plan.buffers)
        self.stats = PrefetchStats()

    # -- what the Loader provides ------------------------------------------------------------------------------
    def _make_plan(self, batches_per_read: int | None = None, prefetch: int | None = None) -> Plan:
        raise NotImplementedError

    def _block_geometry(self) -> tuple[int, int]:
        raise NotImplementedError

    def batch_rows(self, epoch: int, index: int) -> np.ndarray:
        raise NotImplementedError

    def layout(self, epoch: int) -> Layout:
        raise NotImplementedError

    def num_batches(self, epoch: int) -> int:
        raise NotImplementedError

    @property
    def batches_per_read(self) -> int:
        """Batches one read task fetches together: about 4 MiB at a time, so small batches amortize overheads
        (fewer when the memory budget is tight)."""
        return self._plan.batches_per_read

    # -- reads ---------------------------------------------------------------------------------------------------

    def _read_chunk(self, epoch: int, start: int, stop: int, stop_event: threading.Event | None = None) -> _Chunk:
        """Like :meth:`read_batches`, but a failure is returned with the good batches before it, never raised."""
        try:
            columns, per_batch = self._read_rows(epoch, start, stop, stop_event)
        except Stopped:
            return _Chunk([])
        except Exception as e:
            if stop - start == 1:
                return _Chunk([], self._batch_error(epoch, start, "read", e))
            # Which batch failed? Read them one by one (the rare path), delivering those before it.
            batches: list[Batch] = []
            for index in range(start, stop):
                one = self._read_chunk(epoch, index, index + 1, stop_event)
                batches += one.batches
                if one.error is not None or not one.batches:
                    return _Chunk(batches, one.error)
            return _Chunk(batches)
        batches = []
        offset = 0
        for index, batch_rows in zip(range(start, stop), per_batch, strict=True):
            if stopping(stop_event):
                break  # nobody waits for these any more: exit must not wait for a whole chunk of transforms
            end = offset + batch_rows.size
            batch = self.source.pack([column[offset:end] for column in columns])
            offset = end
            if self.transform is not None:
                try:
                    batch = self.transform(batch)
                    _check_rows(batch, batch_rows.size, epoch, index, self.source.paths)
                except Exception as e:
                    return _Chunk(batches, self._batch_error(epoch, index, "transform", e))
            batches.append(batch)
        return _Chunk(batches)

    def _read_rows(
        self, epoch: int, start: int, stop: int, stop_event: threading.Event | None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(one array per column holding the rows of batches ``start..stop-1``, each batch's sorted rows)."""
        if epoch not in self._prepared:
            self._prepare(epoch)
        per_batch = [self.batch_rows(epoch, i) for i in range(start, stop)]
        rows = per_batch[0] if len(per_batch) == 1 else np.concatenate(per_batch)
        hinting = self._hinting
        hint = None
        if hinting and self.shuffle == "block":
            self._hint(epoch, start, stop)
        elif hinting:
            hint = self._hint_rows
        arrays = self.source.arrays
        outs = [self._buffers.empty((rows.size, *a.shape[1:]), a.dtype) for a in arrays]
        # Cold data: the rows were queued with the kernel at once, and this read may wait on storage alongside
        # up to `io_threads` others, since waiting holds no core. Warm data: at most `num_threads` copy at once.
        with contextlib.nullcontext() if hinting else self._cpu_slots:
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
        now = time.monotonic()
        if now - self._planned_at > _REPLAN_SECONDS:
            self._planned_at = now
            self._plan = self._make_plan()
        return self._plan

    def _count_mapped(self, rows: int) -> None:
        """Drop the mappings' page tables once the rows read since the last drop could have filled their share."""
        trim = self._plan.trim_rows
        if not trim:
            return
        with self._lock:
            self._rows_mapped += rows
            due = self._rows_mapped >= trim
            if due:
                self._rows_mapped = 0
        if due:
            drop_page_tables(self.source)

    def _batch_error(self, epoch: int, index: int, stage: str, error: Exception) -> Exception:
        """The error the consumer gets for batch ``index``: what failed where, the original as ``__cause__``."""
        paths = ", ".join(self.source.paths[:3]) + (", ..." if len(self.source.paths) > 3 else "")
        where = f"batch {index} of epoch {epoch} ({paths})"
        wrapped: Exception | None = None
        if isinstance(error, ConfigError) and f"batch {index} of epoch {epoch}" in str(error):
            wrapped = error  # already names the batch (a transform returning other rows)
        elif isinstance(error, NpyfeedError) and not isinstance(error, WorkerError):
            with contextlib.suppress(Exception):
                wrapped = type(error)(f"{error} (reading {where})")
        if wrapped is None:
            wrapped = WorkerError(f"reading {where} failed: {type(error).__name__}: {error} (in the {stage})")
        if wrapped is not error:
            wrapped.__cause__ = error
        wrapped.epoch, wrapped.batch = epoch, index  # type: ignore[attr-defined]
        return wrapped

    def _prepare(self, epoch: int) -> None:
        """Once per epoch, before its first read: set the kernel's read-ahead policy for this access pattern.

        Shuffled data that fits in memory is read whole, sequentially, on a background thread the first time: far
        faster than faulting it in row by row at random, and every later read is a page-cache hit. Data larger
        than memory is read by row instead, with per-batch hints (see ``io_hints``). Remote objects are never
        streamed whole (there is no page cache to fill, only a bounded read-ahead pool): a block shuffle fetches
        its windows ahead instead, each block once.
        """
        with self._lock:
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

    def _hint(self, epoch: int, start: int, stop: int) -> None:
        """Block shuffles: whole blocks, once per window of blocks, and the next window too."""
        if self.shard.count == 1:
            # Whole blocks, once per window, and the next window too, so storage streams across window edges.
            window_rows = self._block_geometry()[0] * self._block_geometry()[1]
            layout = self.layout(epoch)
            first = layout.positions(start)[0] // window_rows
            last = min(layout.positions(stop - 1)[1] // window_rows + 1, (len(self.source) - 1) // window_rows)
            with self._lock:
                todo = [w for w in range(first, last + 1) if (epoch, w) not in self._hinted]
                if len(self._hinted) > 1024:
                    self._hinted.clear()
                self._hinted.update((epoch, w) for w in todo)
            ranges = []
            for w in todo:
                lo = w * window_rows
                ranges += self.order.hint_ranges(epoch, lo, min(lo + window_rows, len(self.source)))
        else:
            ranges = []
        self.source.will_need(ranges)

    def _hint_rows(self, rows: np.ndarray) -> None:
        """Queue the reads of ``rows`` with the kernel; neighbours sharing a page are one request."""
        widest = max(1, max(row_nbytes(a) for a in self.source.arrays))
        self.source.will_need(runs(np.sort(rows), gap=max(1, PAGE // widest) - 1))  # rows sharing a page: one range

    def iter_batches(
        self, epoch: int, indices: range | None = None, *, prefetch: int | None = None
    ) -> Iterator[tuple[int, Batch]]:
        """``(index, batch)`` for batches ``indices`` (default: all) of ``epoch``, read ahead on the thread pool.

        Stateless: unlike ``iter(loader)`` it neither claims nor moves :attr:`epoch`, so framework adapters that
        keep their own epoch count (and workers reading every k-th batch) share the read path.
        """
        count = self.num_batches(epoch)
        indices = range(count) if indices is None else indices
        if indices.step < 0 or (len(indices) and not 0 <= indices[0] <= indices[-1] < count):
            raise IndexError(f"batches {indices} are out of range for {count} batches in epoch {epoch}")
        step = self.batches_per_read if indices.step == 1 else 1
        stop = indices.stop if len(indices) else indices.start
        stop_event = threading.Event()
        jobs = (
            (i, partial(self._read_chunk, epoch, i, min(i + step, stop) if step > 1 else i + 1, stop_event))
            for i in indices[::step]
        )
        geometry = self._plan if step == self._plan.batches_per_read and prefetch is None else None
        geometry = geometry or self._make_plan(step, prefetch)
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
        if self._pool_pid != os.getpid():
            # A forked child (a DataLoader worker) inherits the pool but not its threads: waiting on it would hang.
            self._pool, self._pool_pid = None, os.getpid()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.io_threads, thread_name_prefix="npyfeed")
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        return self._pool


@dataclass
class _Chunk:
    """What one read task hands the consumer: the good batches, then the error of the first bad one."""

    batches: list[Batch]
    error: Exception | None = None


def _leaves(batch: Any) -> Iterator[Any]:
    if isinstance(batch, dict):
        for value in batch.values():
            yield from _leaves(value)
    elif isinstance(batch, (tuple, list)):
        for value in batch:
            yield from _leaves(value)
    else:
        yield batch


def _check_rows(batch: Batch, rows: int, epoch: int, index: int, paths: tuple[str, ...]) -> None:
    """A transform must keep a batch's rows: every array it returns has ``rows`` entries along axis 0."""
    for leaf in _leaves(batch):
        shape = getattr(leaf, "shape", None)
        if shape is not None and len(shape) >= 1 and shape[0] is not None and int(shape[0]) != rows:
            raise ConfigError(
                f"transform returned {int(shape[0])} rows for batch {index} of epoch {epoch} ({paths[0]}), "
                f"expected {rows}: a transform maps a batch to a batch of the same rows (filter rows in the "
                "training step, or return a mask column)"
            )
