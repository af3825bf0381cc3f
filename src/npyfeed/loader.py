"""The Loader: batches of rows, in sequential or shuffled epochs, read ahead on a small thread pool.

>>> import numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
>>> np.save(path, np.arange(10, dtype=np.float32))
>>> loader = Loader(path, batch_size=4, shuffle=True, seed=0)
>>> len(loader)
3
>>> sorted(np.concatenate(list(loader)).tolist()) == list(range(10))
True
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from npyfeed import arguments as args
from npyfeed.arguments import ShuffleMode
from npyfeed.budget import PAGE, Plan, drop_page_tables, hint_ranges, plan, read_windows
from npyfeed.buffers import BufferPool
from npyfeed.columns import Columns, Source
from npyfeed.errors import ConfigError, NpyfeedError, RemoteShuffleWarning, WorkerError
from npyfeed.order import BlockShuffle, ChunkCache, GlobalShuffle, Order, Sequential
from npyfeed.prefetch import PrefetchStats, Stopped, prefetch_ordered, stopping
from npyfeed.remote_order import default_geometry, global_shuffle_warning
from npyfeed.shard import Layout, Shard
from npyfeed.state import loader_state, restore_state
from npyfeed.storage.urls import is_url
from npyfeed.system import available_memory, cpu_count

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["Loader", "ShuffleMode"]

Batch = Any
"""One batch: an ndarray, a tuple or a dict of ndarrays, shaped like the source (or what ``transform`` returns)."""

# Kernel hints pay off when reads are slow (cold data): below this read speed a batch asks the kernel to queue
# all its rows at once (posix_fadvise WILLNEED) instead of faulting them in one page at a time.
_HINT_BELOW_BYTES_PER_S = 300e6
_READ_BYTES = 4 << 20  # one read task fetches about this much (several small batches at once)
_REPLAN_SECONDS = 0.5  # how often reads re-measure the memory left (a few /proc and cgroup files)


class Loader:
    """Batches of rows from ``.npy`` files, in sequential or shuffled epochs, with bounded read-ahead.

    Args:
        source: anything :func:`npyfeed.open` accepts: a path, a glob or list of shards, or a tuple or dict of
            those (aligned columns such as ``(x, y)`` or ``{"image": ..., "label": ...}``).
        batch_size: rows per batch.
        shuffle: ``False`` (file order), ``True`` or ``"global"`` (a uniform shuffle of all rows), or ``"block"``
            (contiguous blocks in random order, rows mixed within windows of blocks: near-sequential I/O for
            cold or slow storage; see :class:`npyfeed.order.BlockShuffle`).
        seed: the shuffle seed; ``None`` draws one (kept in :meth:`get_state`, so a resume is exact).
        drop_remainder: drop the last, smaller batch of each epoch.
        transform: ``transform(batch) -> batch`` applied to every batch on the read threads.
        shard: this worker's share of each epoch: ``(index, count)``, a :class:`Shard`, a
            ``tf.distribute.InputContext``, or ``"auto"`` (from the engine or launcher, see
            :func:`npyfeed.shard.resolve`). Worker ``i`` reads global batches ``i, i + count, ...``.
        block_rows, window_blocks: block-shuffle geometry. Default: 1 MiB blocks, 16 per window for local files;
            8 MiB blocks, as many per window as three windows fit in ``prefetch_bytes`` (4 by default) on object
            stores (see :mod:`npyfeed.remote_order`). A default geometry gives way to the one of a saved state.
        num_threads: reads copying at once (default: the number of cores, at least 2).
        io_threads: reads waiting on storage at once when the data is cold (default: ``4 x num_threads``, at
            most 16): a read blocked on disk holds no core, so more of them keep the device's queue deep.
        prefetch: batches read ahead (default: grows from ``2 x num_threads`` while the consumer waits,
            within a memory budget: a quarter of what this process may still use, container limits included,
            counting the pages and page tables reads touch; see :mod:`npyfeed.budget`).
        io_hints: ask the kernel to queue each batch's rows before reading them: ``None`` decides from the read
            speed it sees (on when reads are slow, i.e. the data is not in page cache).
        epoch: the epoch the first ``iter()`` starts.
        storage_options: object-store configuration for URL sources (credentials, endpoint, request tuning, a
            local cache with ``cache_dir`` and ``cache_size``); see docs/object-storage.md.

    Each ``iter(loader)`` is the next epoch. Within a batch, rows come in file order: the shuffle decides which
    rows form each batch, and the rows of a batch are read in one sorted, coalesced pass.
    """

    def __init__(
        self,
        source: Source,
        batch_size: int,
        *,
        shuffle: bool | ShuffleMode = False,
        seed: int | None = None,
        drop_remainder: bool = False,
        transform: Callable[[Batch], Batch] | None = None,
        shard: Shard | tuple[int, int] | str | Any = None,
        block_rows: int | None = None,
        window_blocks: int | None = None,
        num_threads: int | None = None,
        io_threads: int | None = None,
        prefetch: int | None = None,
        io_hints: bool | None = None,
        epoch: int = 0,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.source = Columns.of(source, storage_options=storage_options)
        self.batch_size = args.positive_int("batch_size", batch_size)
        self.shuffle: ShuffleMode = args.shuffle_mode(shuffle)
        if seed is not None and not args._is_int(seed):
            raise ConfigError(f"seed must be an int or None, got {seed!r} ({type(seed).__name__})")
        self.seed = int(seed) if seed is not None else secrets.randbits(63)
        self.drop_remainder = args.flag("drop_remainder", drop_remainder)
        if transform is not None and not callable(transform):
            raise ConfigError(f"transform must be callable, got {transform!r}")
        self.transform = transform
        self.shard = Shard.of(args.shard_arg(shard))
        self.num_threads = args.optional_positive_int("num_threads", num_threads) or min(16, max(2, cpu_count()))
        self.io_threads = max(
            self.num_threads, args.optional_positive_int("io_threads", io_threads) or min(16, 4 * self.num_threads)
        )
        self._cpu_slots = threading.BoundedSemaphore(self.num_threads)
        self.prefetch = args.optional_positive_int("prefetch", prefetch)
        self.io_hints = args.optional_flag("io_hints", io_hints)
        epoch = args.integer("epoch", epoch)
        given = (
            args.optional_positive_int("block_rows", block_rows),
            args.optional_positive_int("window_blocks", window_blocks),
        )
        self._geometry_given = given
        default = default_geometry(self.source) if None in given else (0, 0)
        block, window = (g or d for g, d in zip(given, default, strict=True))
        self.order: Order = self._make_order(block, window)
        self._layout = Layout(
            len(self.source), self.batch_size, self.shard.count, self.shard.index, self.drop_remainder
        )
        batches = -(-len(self.source) // self.batch_size)
        if self.shard.count > 1 and len(self.source) > 0 and (self.shard.count > batches or not len(self._layout)):
            raise ConfigError(
                f"shard count {self.shard.count} is more than the {batches} batches per epoch of "
                f"{len(self.source)} rows in batches of {self.batch_size}: use at most {batches} shards (or smaller "
                "batches)"
            )
        self._resumed = self._layout  # the layout of epoch `_resumed_epoch`, the rest of an epoch after set_state
        self._resumed_epoch = -1
        self._next_epoch, self._next_batch = epoch, 0
        self._position = (epoch, 0)
        # Block shuffles always hint: once per window of blocks, it costs nothing and turns reads sequential.
        self._hinting = self.io_hints is not False and (bool(self.io_hints) or self.shuffle == "block")
        self._hinted: set[tuple[int, int]] = set()
        self._prepared: set[int] = set()
        self._streamed = False
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = os.getpid()
        self._plan = self._make_plan()
        self._planned_at = time.monotonic()
        self._rows_mapped = 0  # rows read since the page tables were last dropped
        self._buffers = BufferPool(self._plan.buffers)
        self.stats = PrefetchStats()
        if self.shuffle == "global":
            self._warn_remote_shuffle(block)

    def _warn_remote_shuffle(self, block_rows: int) -> None:
        """Once per Loader: the request rate a global shuffle over an object store implies (if it is high)."""
        # Rows are gathered (sorted and merged) a read window at a time: several batches, at most window_rows.
        gathered = min(self.batch_size * self._plan.batches_per_read, self._plan.window_rows)
        warning = global_shuffle_warning(self.source, self.batch_size, block_rows, gathered)
        if warning is not None:
            warnings.warn(warning, RemoteShuffleWarning, stacklevel=3)

    def _make_plan(self, batches_per_read: int | None = None, prefetch: int | None = None) -> Plan:
        """The read geometry within the memory budget (see :mod:`npyfeed.budget`)."""
        row_bytes = [int(np.prod(a.shape[1:], dtype=np.int64)) * a.dtype.itemsize for a in self.source.arrays]
        return plan(
            batch_size=self.batch_size,
            row_bytes=row_bytes,
            file_bytes=[len(self.source) * b for b in row_bytes],
            random=self.shuffle == "global",
            num_threads=self.num_threads,
            io_threads=self.io_threads,
            read_bytes=_READ_BYTES,
            batches_per_read=batches_per_read,
            prefetch=self.prefetch if prefetch is None else prefetch,
        )

    def _make_order(self, block_rows: int, window_blocks: int) -> Order:
        n = len(self.source)
        make_order = getattr(self.source, "make_order", None)  # a source that defines its own order (a Mix)
        if make_order is not None:
            order: Order = make_order(self.shuffle, self.seed, block_rows, window_blocks)
            return order
        if self.shuffle == "global":
            return ChunkCache(GlobalShuffle(n, self.seed))
        if self.shuffle == "block":
            return ChunkCache(BlockShuffle(n, self.seed, block_rows, window_blocks))
        return Sequential(n)

    # -- sizes ------------------------------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        """Rows per epoch read by this shard."""
        return self._layout.num_positions

    def __len__(self) -> int:
        """Batches per epoch (the same on every shard)."""
        return len(self._layout)

    def layout(self, epoch: int) -> Layout:
        """Which positions of ``epoch`` this shard reads: all of it, or the rest of an epoch after a resume."""
        return self._resumed if epoch == self._resumed_epoch else self._layout

    def num_batches(self, epoch: int) -> int:
        """Batches of ``epoch``: ``len(loader)``, or fewer in an epoch resumed mid-way by :meth:`set_state`."""
        return len(self.layout(epoch))

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` starts."""
        return self._next_epoch

    def __repr__(self) -> str:
        return (
            f"Loader({self.source!r}, batch_size={self.batch_size}, shuffle={self.shuffle!r}, seed={self.seed}, "
            f"batches={len(self)})"
        )

    # -- reading batches: a pure function of (seed, epoch, index) ---------------------------------------------
    def batch_rows(self, epoch: int, index: int) -> np.ndarray:
        """The sorted row indices of batch ``index`` of ``epoch``."""
        layout = self.layout(epoch)
        if isinstance(index, bool) or not 0 <= index < len(layout):
            raise IndexError(f"batch {index} is out of range for {len(layout)} batches in epoch {epoch}")
        rows = self.order.rows(epoch, *layout.positions(index))
        rows.sort()
        return rows

    def read_batch(self, epoch: int, index: int) -> Batch:
        """Batch ``index`` of ``epoch``, transformed. Stateless and thread-safe: what every adapter calls."""
        return self.read_batches(epoch, index, index + 1)[0]

    def read_batches(self, epoch: int, start: int, stop: int) -> list[Batch]:
        """Batches ``start..stop-1`` of ``epoch``, read in one pass into one buffer per column, transformed.

        Each batch's rows are sorted (file order) and the batches laid end to end, so a sequential epoch is one
        contiguous copy and a shuffled one a single gather: NumPy's per-call cost is paid once per chunk. A
        failure raises an error naming the batch that failed, its epoch, the files and the original cause.
        """
        chunk = self._read_chunk(epoch, start, stop)
        if chunk.error is not None:
            raise chunk.error
        return chunk.batches

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
        widest = max(1, max(int(np.prod(a.shape[1:], dtype=np.int64)) * a.dtype.itemsize for a in self.source.arrays))
        self.source.will_need(hint_ranges(rows, max(1, PAGE // widest)))

    # -- epochs -----------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        """The next epoch (or the rest of the one a :meth:`set_state` pointed at)."""
        epoch, start = self._next_epoch, self._next_batch
        self._next_epoch, self._next_batch = epoch + 1, 0
        self._position = (epoch, start)
        return self._epoch_batches(epoch, start)

    @property
    def batches_per_read(self) -> int:
        """Batches one read task fetches together: about 4 MiB at a time, so small batches amortize overheads
        (fewer when the memory budget is tight)."""
        return self._plan.batches_per_read

    def _epoch_batches(self, epoch: int, start: int) -> Iterator[Batch]:
        count = self.num_batches(epoch)
        for index, batch in self.iter_batches(epoch, range(start, count)):
            self._position = (epoch, index + 1) if index + 1 < count else (epoch + 1, 0)
            yield batch

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

    def close(self) -> None:
        """Stop the read threads (a later ``iter()`` starts new ones)."""
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checkpointing (see npyfeed.state) ------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """A small JSON-able dict: where the consumer is (the batches it received, not those read ahead).

        All shards at the same synchronous step give the same position, and any worker count can restore it.
        """
        return loader_state(self)

    def set_state(self, state: dict[str, Any]) -> None:
        """Make the next ``iter()`` continue exactly after the last batch delivered when ``state`` was taken.

        The state may come from a job with another shard count: this shard then reads its share of the rest of
        the saved epoch (:meth:`num_batches` of it, the same on every shard), and later epochs are whole. A block
        geometry this loader chose by default (not given as ``block_rows``/``window_blocks``) becomes the saved
        one, so a state saved reading local files resumes reading the same files from a store, and back.
        """
        saved = self._adoptable_geometry(state)
        if saved is None:
            epoch, position = restore_state(self, state)
        else:  # a geometry chosen by default follows the state's (saved reading locally, resumed remotely)
            order = self.order
            self.order = self._make_order(*saved)
            try:
                epoch, position = restore_state(self, state)
            except BaseException:
                self.order = order
                raise
        if state["seed"] != self.seed:
            self.seed = state["seed"]
            self.order = self._make_order(*self._block_geometry())
        resumed = Layout(
            len(self.source), self.batch_size, self.shard.count, self.shard.index, self.drop_remainder, position
        )
        if len(resumed) == 0:
            epoch, resumed = epoch + 1, self._layout
        self._resumed, self._resumed_epoch = resumed, epoch
        self._next_epoch, self._next_batch = epoch, 0
        self._position = (epoch, 0)

    def _adoptable_geometry(self, state: Any) -> tuple[int, int] | None:
        """The block geometry of a saved block-shuffle state, when it differs from this loader's only in values
        this loader chose by default (not ``block_rows=``/``window_blocks=`` given explicitly)."""
        saved = state.get("order") if isinstance(state, dict) and self.shuffle == "block" else None
        if not (isinstance(saved, list) and len(saved) == 2 and all(args._is_int(v) and v > 0 for v in saved)):
            return None
        wanted = tuple(g or v for g, v in zip(self._geometry_given, saved, strict=True))
        if wanted != tuple(saved) or wanted == self._block_geometry():
            return None
        return int(saved[0]), int(saved[1])

    def _block_geometry(self) -> tuple[int, int]:
        order = self.order.order if isinstance(self.order, ChunkCache) else self.order
        if isinstance(order, BlockShuffle):
            return order.block_rows, order.window_blocks
        return 1, 1

    # -- pickling: worker processes get the configuration and position, not threads or buffers -----------------
    _UNPICKLED = ("_lock", "_cpu_slots", "_pool", "_buffers", "stats", "_plan")

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._UNPICKLED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._cpu_slots = threading.BoundedSemaphore(self.num_threads)
        self._pool = None
        self._plan = self._make_plan()  # this machine's budget, not the one the loader was pickled on
        self._planned_at = time.monotonic()
        self._buffers = BufferPool(self._plan.buffers)
        self.stats = PrefetchStats()

    # -- framework adapters (each imports its framework lazily) -----------------------------------------------
    def to_tf_dataset(self, **kwargs: Any) -> tf.data.Dataset:
        """A ``tf.data.Dataset`` of this loader's batches; see :func:`npyfeed.tf_data.to_tf_dataset`."""
        from npyfeed.tf_data import to_tf_dataset

        return to_tf_dataset(self, **kwargs)

    def to_keras(self, **kwargs: Any) -> Any:
        """A ``keras.utils.PyDataset`` (Keras 3, any backend); see :func:`npyfeed.keras_dataset.to_keras`."""
        from npyfeed.keras_dataset import to_keras

        return to_keras(self, **kwargs)

    def to_torch(self, **kwargs: Any) -> Any:
        """A torch ``IterableDataset`` for ``DataLoader(batch_size=None)``; see :mod:`npyfeed.torch_dataset`."""
        from npyfeed.torch_dataset import to_torch

        return to_torch(self, **kwargs)


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
