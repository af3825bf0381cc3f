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
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from npyfeed.buffers import BufferPool
from npyfeed.columns import Columns, Source
from npyfeed.errors import ConfigError
from npyfeed.order import BlockShuffle, ChunkCache, GlobalShuffle, Order, Sequential
from npyfeed.prefetch import PrefetchStats, prefetch_ordered
from npyfeed.shard import Layout, Shard
from npyfeed.state import loader_state, restore_state
from npyfeed.system import available_memory, cpu_count

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["Loader", "ShuffleMode"]

ShuffleMode = Literal["none", "global", "block"]
Batch = Any
"""One batch: an ndarray, a tuple or a dict of ndarrays, shaped like the source (or what ``transform`` returns)."""

# Kernel hints pay off when reads are slow (cold data): below this read speed a batch asks the kernel to queue
# all its rows at once (posix_fadvise WILLNEED) instead of faulting them in one page at a time.
_HINT_BELOW_BYTES_PER_S = 300e6
_BLOCK_BYTES = 1 << 20  # default block-shuffle block: 1 MiB of rows, one efficient sequential read
_WINDOW_BLOCKS = 16  # default blocks mixed together: a 16 MiB window (measured best cold under a 256 MiB cap)
_PREFETCH_BYTES = 256 << 20  # read-ahead memory bound when the user sets no depth
_READ_BYTES = 4 << 20  # one read task fetches about this much (several small batches at once)


def _shuffle_mode(shuffle: bool | str) -> ShuffleMode:
    if shuffle is True:
        return "global"
    if shuffle is False or shuffle is None:
        return "none"
    if shuffle in ("none", "global", "block"):
        return shuffle  # type: ignore[return-value]
    raise ConfigError(f"shuffle must be True, False, 'global' or 'block', got {shuffle!r}")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _optional_positive_int(name: str, value: Any) -> int | None:
    return None if value is None else _positive_int(name, value)


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
        block_rows, window_blocks: block-shuffle geometry (default: 1 MiB blocks, 16 per window).
        num_threads: reads copying at once (default: the number of cores, at least 2).
        io_threads: reads waiting on storage at once when the data is cold (default: ``4 x num_threads``, at
            most 16): a read blocked on disk holds no core, so more of them keep the device's queue deep.
        prefetch: batches read ahead (default: grows from ``2 x num_threads`` while the consumer waits,
            bounded by 256 MiB of batches).
        io_hints: ask the kernel to queue each batch's rows before reading them: ``None`` decides from the read
            speed it sees (on when reads are slow, i.e. the data is not in page cache).
        epoch: the epoch the first ``iter()`` starts.

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
    ) -> None:
        self.source = Columns.of(source)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.shuffle: ShuffleMode = _shuffle_mode(shuffle)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ConfigError(f"seed must be an int or None, got {seed!r}")
        self.seed = int(seed) if seed is not None else secrets.randbits(63)
        self.drop_remainder = bool(drop_remainder)
        if transform is not None and not callable(transform):
            raise ConfigError(f"transform must be callable, got {transform!r}")
        self.transform = transform
        self.shard = Shard.of(shard)
        self.num_threads = _optional_positive_int("num_threads", num_threads) or min(16, max(2, cpu_count()))
        self.io_threads = max(
            self.num_threads, _optional_positive_int("io_threads", io_threads) or min(16, 4 * self.num_threads)
        )
        self._cpu_slots = threading.BoundedSemaphore(self.num_threads)
        self.prefetch = _optional_positive_int("prefetch", prefetch)
        self.io_hints = io_hints
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"epoch must be a non-negative int, got {epoch!r}")
        row_bytes = max(1, self.source.row_bytes)
        block = _optional_positive_int("block_rows", block_rows) or max(1, _BLOCK_BYTES // row_bytes)
        window = _optional_positive_int("window_blocks", window_blocks) or _WINDOW_BLOCKS
        self.order: Order = self._make_order(block, window)
        self._layout = Layout(
            len(self.source), self.batch_size, self.shard.count, self.shard.index, self.drop_remainder
        )
        self._resumed = self._layout  # the layout of epoch `_resumed_epoch`, the rest of an epoch after set_state
        self._resumed_epoch = -1
        self._next_epoch, self._next_batch = epoch, 0
        self._position = (epoch, 0)
        # Block shuffles always hint: once per window of blocks, it costs nothing and turns reads sequential.
        self._hinting = io_hints is not False and (bool(io_hints) or self.shuffle == "block")
        self._hinted: set[tuple[int, int]] = set()
        self._prepared: set[int] = set()
        self._streamed = False
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._buffers = BufferPool(self._depths(self.batches_per_read)[1] + self.num_threads + 2)
        self.stats = PrefetchStats()

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
        contiguous copy and a shuffled one a single gather: NumPy's per-call cost is paid once per chunk.
        """
        if epoch not in self._prepared:
            self._prepare(epoch)
        per_batch = [self.batch_rows(epoch, i) for i in range(start, stop)]
        rows = per_batch[0] if len(per_batch) == 1 else np.concatenate(per_batch)
        hinting = self._hinting
        if hinting:
            self._hint(epoch, start, stop, rows)
        # Cold data: the rows were queued with the kernel at once, and this read may wait on storage alongside
        # up to `io_threads` others, since waiting holds no core. Warm data: at most `num_threads` copy at once.
        with contextlib.nullcontext() if hinting else self._cpu_slots:
            started = time.perf_counter()
            columns = self.source.read_rows(rows, self._buffers)
            elapsed = time.perf_counter() - started
        if self.io_hints is None and self.shuffle != "block" and not self._streamed:
            self._hinting = rows.size * self.source.row_bytes < _HINT_BELOW_BYTES_PER_S * elapsed
        batches = []
        offset = 0
        for batch_rows in per_batch:
            end = offset + batch_rows.size
            batch = self.source.pack([column[offset:end] for column in columns])
            batches.append(self.transform(batch) if self.transform is not None else batch)
            offset = end
        return batches

    def _prepare(self, epoch: int) -> None:
        """Once per epoch, before its first read: set the kernel's read-ahead policy for this access pattern.

        Shuffled data that fits in memory is read whole, sequentially, on a background thread the first time: far
        faster than faulting it in row by row at random, and every later read is a page-cache hit. Data larger
        than memory is read by row instead, with per-batch hints (see ``io_hints``).
        """
        with self._lock:
            if epoch in self._prepared:
                return
            self._prepared.add(epoch)
            stream = (
                self.shuffle != "none"
                and self.io_hints is not False
                and not self._streamed
                and len(self.source) * self.source.row_bytes <= available_memory() // 2
            )
            self._streamed = self._streamed or stream
        self.source.advise("sequential" if self.shuffle == "none" else "random")
        if stream:
            whole = [(0, len(self.source))]
            threading.Thread(target=self.source.will_need, args=(whole,), name="npyfeed-stream", daemon=True).start()
            if self.io_hints is None:
                self._hinting = False  # row hints would only scatter the stream with random reads

    def _hint(self, epoch: int, start: int, stop: int, rows: np.ndarray) -> None:
        if self.shuffle == "block" and self.shard.count == 1:
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
            ordered = np.sort(rows)
            breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
            starts = ordered[np.concatenate(([0], breaks))]
            stops = ordered[np.concatenate((breaks - 1, [ordered.size - 1]))] + 1
            ranges = list(zip(starts.tolist(), stops.tolist(), strict=True))
        self.source.will_need(ranges)

    # -- epochs -----------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        """The next epoch (or the rest of the one a :meth:`set_state` pointed at)."""
        epoch, start = self._next_epoch, self._next_batch
        self._next_epoch, self._next_batch = epoch + 1, 0
        self._position = (epoch, start)
        return self._epoch_batches(epoch, start)

    @property
    def batches_per_read(self) -> int:
        """Batches one read task fetches together: about 4 MiB at a time, so small batches amortize overheads."""
        batch_bytes = max(1, self.batch_size * self.source.row_bytes)
        return max(1, min(64, _READ_BYTES // batch_bytes))

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
        jobs = (
            (i, _bound_read(self, epoch, i, min(i + step * indices.step, stop), indices.step)) for i in indices[::step]
        )
        depth, max_depth = self._depths(step, prefetch)
        self.stats = PrefetchStats()
        paths = ", ".join(self.source.paths[:3])
        for first, batches in prefetch_ordered(
            jobs,
            self._executor(),
            depth,
            max_depth=max_depth,
            describe=lambda i: f"batches from {i} of epoch {epoch} ({paths})",
            stats=self.stats,
        ):
            yield from zip(range(first, first + len(batches) * indices.step, indices.step), batches, strict=True)

    def _depths(self, batches_per_read: int, prefetch: int | None = None) -> tuple[int, int]:
        """(initial, maximum) reads in flight, bounded by a memory budget for read-ahead."""
        prefetch = self.prefetch if prefetch is None else prefetch
        if prefetch is not None:
            depth = max(1, -(-prefetch // batches_per_read))
            return depth, depth
        read_bytes = max(1, self.batch_size * self.source.row_bytes * batches_per_read)
        budget = min(_PREFETCH_BYTES, available_memory() // 8)
        ceiling = max(2, budget // read_bytes)
        initial = min(2 * self.num_threads, ceiling)
        # Growing past 2 reads per I/O thread buys nothing: reads are then the bottleneck, not the queue.
        return initial, max(initial, min(2 * self.io_threads, ceiling))

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.io_threads, thread_name_prefix="npyfeed")
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        return self._pool

    def close(self) -> None:
        """Stop the read threads (a later ``iter()`` starts new ones)."""
        if self._pool is not None:
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
        the saved epoch (:meth:`num_batches` of it, the same on every shard), and later epochs are whole.
        """
        epoch, position = restore_state(self, state)
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

    def _block_geometry(self) -> tuple[int, int]:
        order = self.order.order if isinstance(self.order, ChunkCache) else self.order
        if isinstance(order, BlockShuffle):
            return order.block_rows, order.window_blocks
        return 1, 1

    # -- pickling: worker processes get the configuration and position, not threads or buffers -----------------
    _UNPICKLED = ("_lock", "_cpu_slots", "_pool", "_buffers", "stats")

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._UNPICKLED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._cpu_slots = threading.BoundedSemaphore(self.num_threads)
        self._pool = None
        self._buffers = BufferPool(self._depths(self.batches_per_read)[1] + self.num_threads + 2)
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


def _bound_read(loader: Loader, epoch: int, start: int, stop: int, step: int) -> Callable[[], list[Batch]]:
    if step == 1:
        return lambda: loader.read_batches(epoch, start, stop)
    return lambda: [loader.read_batch(epoch, start)]
