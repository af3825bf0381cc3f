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

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from npyfeed import arguments as args
from npyfeed.arguments import ShuffleMode
from npyfeed.errors import RemoteShuffleWarning
from npyfeed.loader.checkpoints import Checkpoints
from npyfeed.loader.config import LoaderConfig
from npyfeed.loader.cursor import Cursor, Tracker
from npyfeed.loader.geometry import global_shuffle_warning
from npyfeed.loader.metrics import DataWait
from npyfeed.loader.ordering import Ordering
from npyfeed.loader.read_path import ReadPath
from npyfeed.order.orders import Order
from npyfeed.shard import Layout, Shard
from npyfeed.sources.columns import Columns, Source

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["Cursor", "Loader", "ShuffleMode"]

Batch = Any
"""One batch: an ndarray, a tuple or a dict of ndarrays, shaped like the source (or what ``transform`` returns)."""

_READ_BYTES = 4 << 20  # one read task fetches about this much (several small batches at once)


class Loader:
    """Batches of rows from ``.npy`` files, in sequential or shuffled epochs, with bounded read-ahead.

    Args:
        source: anything :func:`npyfeed.open` accepts: a path, a glob or list of shards, or a tuple or dict of
            those (aligned columns such as ``(x, y)`` or ``{"image": ..., "label": ...}``).
        batch_size: rows per batch.
        shuffle: ``False`` (file order), ``True`` or ``"global"`` (a uniform shuffle of all rows), or ``"block"``
            (contiguous blocks in random order, rows mixed within windows of blocks: near-sequential I/O for
            cold or slow storage; see :class:`npyfeed.order.orders.BlockShuffle`).
        seed: the shuffle seed; ``None`` draws one (kept in :meth:`get_state`, so a resume is exact).
        drop_remainder: drop the last, smaller batch of each epoch.
        transform: ``transform(batch) -> batch`` applied to every batch on the read threads, several batches at
            once, each handed over as soon as it is transformed.
        shard: this worker's share of each epoch: ``(index, count)``, a :class:`Shard`, a
            ``tf.distribute.InputContext``, or ``"auto"`` (from the engine or launcher, see
            :func:`npyfeed.launcher.resolve`). Worker ``i`` reads global batches ``i, i + count, ...``.
        block_rows: block-shuffle geometry, rows per block. Default: 1 MiB blocks, 16 per window for local files;
            8 MiB blocks, as many per window as three windows fit in ``prefetch_bytes`` (4 by default) on object
            stores (see :mod:`npyfeed.loader.geometry`). A default geometry gives way to the one of a saved state.
        window_blocks: block-shuffle geometry, blocks per window (see ``block_rows``).
        num_threads: reads copying at once (default: the number of cores, at least 2).
        io_threads: reads waiting on storage at once when the data is cold (default: ``4 x num_threads``, at
            most 16): a read blocked on disk holds no core, so more of them keep the device's queue deep.
        prefetch: batches read ahead (default: from ``2 x num_threads``, tuned while the consumer waits, within a
            memory budget: a quarter of what this process may still use, container limits included, counting the
            pages and page tables reads touch; see :mod:`npyfeed.loader.budget`).
        io_hints: ask the kernel to queue each batch's rows before reading them: ``None`` decides from the read
            speed it sees (on when reads are slow, i.e. the data is not in page cache).
        epoch: the epoch the first ``iter()`` starts.
        autotune: adjust the read-ahead depth and the reads at once (up to ``io_threads``) while iterating, from
            how long the consumer waits, within the memory budget; a ``num_threads`` or ``prefetch`` given stays
            fixed. ``None`` (default) or ``True``: on; ``False``: off (the depth then grows only after the
            consumer waited twice in a row). What it chose: :attr:`tuning`. See :mod:`npyfeed.loader.autotune`.
        storage_options: object-store configuration for URL sources (credentials, endpoint, request tuning, a
            local cache with ``cache_dir`` and ``cache_size``); see docs/object-storage.md.

    Each ``iter(loader)`` is the next epoch. Within a batch, rows come in file order: the shuffle decides which
    rows form each batch, and the rows of a batch are read in one sorted, coalesced pass. A pass in file order over
    warm local files, with no ``transform`` or ``prefetch`` given, is copied on the consumer's thread instead of
    read ahead (see :mod:`npyfeed.loader.in_order`).
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
        autotune: bool | None = None,
    ) -> None:
        self.source = Columns.of(source, storage_options=storage_options)
        config = LoaderConfig.of(
            batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_remainder=drop_remainder,
            transform=transform,
            shard=shard,
            block_rows=block_rows,
            window_blocks=window_blocks,
            num_threads=num_threads,
            io_threads=io_threads,
            prefetch=prefetch,
            io_hints=io_hints,
            epoch=epoch,
            autotune=autotune,
        )
        self.batch_size = config.batch_size
        self.shuffle: ShuffleMode = config.shuffle
        self.drop_remainder = config.drop_remainder
        self.transform = config.transform
        self.shard = config.shard
        self.num_threads = config.num_threads
        self.io_threads = config.io_threads
        self.prefetch = config.prefetch
        self.io_hints = config.io_hints
        block, window = config.geometry(self.source)
        # The seed and order (a restored state's replace them, see set_state).
        self._ordering = Ordering(config, self.source, block, window)
        self._layout = config.layout(self.source)
        self._tracker = Tracker(config.epoch)  # the consumer's position: the one cursor every adapter moves
        self._checkpoints = Checkpoints(self._ordering, self._tracker, self.layout)
        self.read_path = ReadPath(
            self,
            self.source,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            transform=self.transform,
            num_threads=self.num_threads,
            io_threads=self.io_threads,
            prefetch=self.prefetch,
            io_hints=self.io_hints,
            read_bytes=_READ_BYTES,
            tune_depth=config.tune_depth,
            tune_threads=config.tune_threads,
        )
        self.read_path.metrics.rank, self.read_path.metrics.ranks = self.shard.index, self.shard.count
        if self.shuffle == "global":
            self._warn_remote_shuffle(block)

    def _warn_remote_shuffle(self, block_rows: int) -> None:
        """Once per Loader: the request rate a global shuffle over an object store implies (if it is high)."""
        # Rows are gathered (sorted and merged) a read window at a time: several batches, at most window_rows.
        read_plan = self.read_path.plan
        gathered = min(self.batch_size * read_plan.batches_per_read, read_plan.window_rows)
        warning = global_shuffle_warning(self.source, self.batch_size, block_rows, gathered)
        if warning is not None:
            warnings.warn(warning, RemoteShuffleWarning, stacklevel=3)

    @property
    def seed(self) -> int:
        """The shuffle seed (drawn if none was given; a restored state's after :meth:`set_state`)."""
        return self._ordering.seed

    @property
    def order(self) -> Order:
        """Which row is at each position of an epoch (see :mod:`npyfeed.order.orders`)."""
        return self._ordering.order

    # -- sizes ------------------------------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        """Rows per epoch read by this shard."""
        return self._layout.num_positions

    def __len__(self) -> int:
        """Batches per epoch (the same on every shard)."""
        return len(self._layout)

    def layout(self, offset: int = 0) -> Layout:
        """Which positions of an epoch this shard reads: all of it, or the rest from global position ``offset``
        (the position a saved state resumes at)."""
        if offset == 0:
            return self._layout
        shard = self.shard
        return Layout(len(self.source), self.batch_size, shard.count, shard.index, self.drop_remainder, offset)

    def num_batches(self, offset: int = 0) -> int:
        """Batches of a pass over an epoch from global position ``offset``: ``len(loader)`` from 0, fewer from a
        position a saved state resumes at."""
        return len(self.layout(offset))

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` starts."""
        return self._tracker.next_pass[0]

    @property
    def next_pass(self) -> tuple[int, int]:
        """``(epoch, offset)`` the next ``iter()`` reads: the rest of a resumed epoch from ``offset``, or a whole
        epoch (offset 0)."""
        return self._tracker.next_pass

    @property
    def cursor(self) -> Cursor:
        """What the consumer received: ``delivered`` batches of the pass over ``epoch`` from ``offset``
        (a ``ConfigError`` while a tf.data pipeline keeps the position instead, see :meth:`get_state`)."""
        return self._tracker.position()

    def begin(self, epoch: int | None = None) -> Cursor:
        """Begin the next pass (or one over ``epoch``), as ``iter()`` does; adapters that count their own epochs
        call it, then :meth:`deliver` as their consumer receives batches."""
        return self._tracker.begin(epoch)

    def deliver(self, cursor: Cursor, delivered: int) -> None:
        """The consumer now holds ``delivered`` batches of the pass ``cursor`` (from :meth:`begin`) names: what it
        received, not what was read ahead."""
        self._tracker.deliver(cursor, delivered)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` read the whole of ``epoch``."""
        self._tracker.reset(args.integer("epoch", epoch))

    def track_elsewhere(self, checkpoint: str) -> None:
        """A consumer whose position the Loader cannot see (tf.data) takes over: :meth:`get_state` then raises a
        ``ConfigError`` naming ``checkpoint`` until the Loader is iterated again."""
        self._tracker.elsewhere(checkpoint)

    def __repr__(self) -> str:
        return (
            f"Loader({self.source!r}, batch_size={self.batch_size}, shuffle={self.shuffle!r}, seed={self.seed}, "
            f"batches={len(self)})"
        )

    # -- reading batches: a pure function of (seed, epoch, offset, index) ------------------------------------
    def batch_rows(self, epoch: int, index: int, *, offset: int = 0) -> np.ndarray:
        """The sorted row indices of batch ``index`` of ``epoch`` (of its rest from global position ``offset``)."""
        layout = self.layout(offset)
        if not args.is_int(index) or not 0 <= index < len(layout):
            where = f"epoch {epoch}" + (f" from position {offset}" if offset else "")
            raise IndexError(f"batch {index} is out of range for {len(layout)} batches in {where}")
        rows = self.order.rows(epoch, *layout.positions(index))
        rows.sort()
        return rows

    def read_batch(self, epoch: int, index: int, *, offset: int = 0) -> Batch:
        """Batch ``index`` of ``epoch`` (of its rest from global position ``offset``), transformed. Pure and
        thread-safe: what every adapter calls; the same arguments give the same rows whatever the loader's cursor."""
        return self.read_batches(epoch, index, index + 1, offset=offset)[0]

    def read_batches(self, epoch: int, start: int, stop: int, *, offset: int = 0) -> list[Batch]:
        """Batches ``start..stop-1`` of ``epoch`` (from ``offset``), read in one pass into one buffer per column.

        Each batch's rows are sorted (file order) and the batches laid end to end, so a sequential epoch is one
        contiguous copy and a shuffled one a single gather: NumPy's per-call cost is paid once per chunk. A
        failure raises an error naming the batch that failed, its epoch, the files and the original cause.
        """
        chunk = self.read_path.read_chunk(epoch, start, stop, offset=offset)
        if chunk.error is not None:
            raise chunk.error
        return chunk.batches

    # -- epochs -----------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        """The next epoch (or the rest of the one a :meth:`set_state` pointed at)."""
        return self._epoch_batches(self._tracker.begin())

    def _epoch_batches(self, cursor: Cursor) -> Iterator[Batch]:
        deliver = self._tracker.deliver
        for index, batch in self.iter_batches(cursor.epoch, offset=cursor.offset):
            deliver(cursor, index + 1)
            yield batch

    def iter_batches(
        self, epoch: int, indices: range | None = None, *, offset: int = 0, prefetch: int | None = None
    ) -> Iterator[tuple[int, Batch]]:
        """``(index, batch)`` for batches ``indices`` (default: all) of ``epoch`` (of its rest from global position
        ``offset``), read ahead on the thread pool.

        Pure: unlike ``iter(loader)`` it neither begins a pass nor moves the cursor, so framework adapters (and
        workers reading every k-th batch) share the read path and record what their consumer received themselves
        (:meth:`begin`, :meth:`deliver`).
        """
        return self.read_path.iter_batches(epoch, indices, offset=offset, prefetch=prefetch)

    @property
    def batches_per_read(self) -> int:
        """Batches one read task fetches together: about 4 MiB at a time, so small batches amortize overheads
        (fewer when the memory budget is tight)."""
        return self.read_path.batches_per_read

    @property
    def metrics(self) -> DataWait:
        """How long the consumer waited for each batch, and where the time went, across epochs: ``snapshot()``
        gives a dict (wait p50/p95/p99, rows/s, bytes/s, storage/transform/queue seconds), ``reset()`` starts
        over. Batches read through ``iter(loader)``, ``to_torch`` and ``to_keras`` count here, and through
        ``to_tf_dataset(data_wait=True)`` those its iterators hand over. See docs/observe.md."""
        return self.read_path.metrics

    @property
    def tuning(self) -> dict[str, Any]:
        """What autotuning chose in this process, JSON-able: ``depth`` (read tasks ahead, of
        :attr:`batches_per_read` batches each) and ``concurrency`` (reads copying at once) now, their bounds
        (``max_depth`` from the memory budget, ``max_concurrency`` = ``io_threads``), which of them it tunes, and
        counters (``windows`` judged, steps ``grown``, ``undone``, ``shrunk``). See docs/observe.md."""
        return self.read_path.tuning

    def close(self) -> None:
        """Stop the read threads (a later ``iter()`` starts new ones)."""
        self.read_path.close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checkpointing (see npyfeed.loader.checkpoints) ---------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """A small JSON-able dict: where the consumer is (the batches it received, not those read ahead).

        All shards at the same synchronous step give the same position, and any worker count can restore it. A
        loader feeding ``to_tf_dataset()`` cannot see what its consumer received: it raises a ``ConfigError``
        naming ``tf.train.Checkpoint(iterator=...)``, the checkpoint that can.
        """
        return self._checkpoints.get_state()

    def state_after(self, epoch: int, delivered: int, *, offset: int = 0) -> dict[str, Any]:
        """The state after a consumer received ``delivered`` batches of ``epoch`` (of its rest from ``offset``):
        what adapters that count delivered batches themselves (Keras' trained batches) save."""
        return self._checkpoints.state_after(epoch, delivered, offset=offset)

    def set_state(self, state: dict[str, Any]) -> None:
        """Make the next ``iter()`` continue exactly after the last batch delivered when ``state`` was taken.

        The state may come from a job with another shard count: this shard then reads its share of the rest of
        the saved epoch (:meth:`num_batches` of it, the same on every shard), and later epochs are whole. A block
        geometry this loader chose by default (not given as ``block_rows``/``window_blocks``) becomes the saved
        one, so a state saved reading local files resumes reading the same files from a store, and back.
        """
        self._checkpoints.set_state(state)

    # -- framework adapters (each imports its framework lazily) -----------------------------------------------
    def to_tf_dataset(
        self,
        *,
        output_signature: Any = None,
        start_epoch: int | None = None,
        num_parallel_calls: int | None = None,
        threads: int | None = None,
        prefetch: int | None = None,
        native: bool = False,
        epochs: int | None = 1,
        targets: str | Sequence[str] | None = None,
        sample_weights: str | None = None,
        data_wait: bool = False,
        views: bool = False,
    ) -> tf.data.Dataset:
        """A ``tf.data.Dataset`` of this loader's batches: one epoch per iterator, ``len(loader)`` elements.

        Args:
            output_signature: a nest of ``tf.TensorSpec`` for the batches, instead of deriving it from the headers.
            start_epoch: the epoch of the first iterator (default :attr:`epoch`); later iterators count up from it.
            num_parallel_calls: reads at once (default ``tf.data.AUTOTUNE``).
            threads: a private tf.data thread pool of this size for the reads (default: tf.data's shared pool).
            prefetch: batches read ahead of the consumer (default ``tf.data.AUTOTUNE``).
            native: build the pipeline from TensorFlow ops only, no Python in the graph (tf.data service, TPUs).
            epochs: with ``native=True``, how many consecutive epochs the dataset holds (``None``: endless).
            targets: for dict batches, the key (or keys) of the targets: elements become ``(inputs, targets)``.
            sample_weights: with ``targets``, the key of per-row weights: ``(inputs, targets, sample_weights)``.
            data_wait: count the consumer's wait for each element in :attr:`metrics` (off by default: its cost).
            views: for files that never change while the dataset lives, zero-copy views of them instead of copies
                (file order, local files, no transform); a file changed under it changes (or kills) what was read.

        Details: :func:`npyfeed.adapters.tf_data.to_tf_dataset`.
        """
        from npyfeed.adapters.tf_data import to_tf_dataset  # the one upward edge: lazy, delegation only (DESIGN.md)

        return to_tf_dataset(
            self,
            output_signature=output_signature,
            start_epoch=start_epoch,
            num_parallel_calls=num_parallel_calls,
            threads=threads,
            prefetch=prefetch,
            native=native,
            epochs=epochs,
            targets=targets,
            sample_weights=sample_weights,
            data_wait=data_wait,
            views=views,
        )

    def to_keras(self, *, start_epoch: int | None = None, prefetch: int | None = None) -> Any:
        """A ``keras.utils.PyDataset`` of this loader's batches, for ``model.fit`` on any Keras 3 backend.

        Args:
            start_epoch: the epoch read first (default :attr:`epoch`); each complete pass moves to the next.
            prefetch: batches read ahead (default: the loader's own read-ahead).

        Pass ``shuffle=False`` to ``fit``: the loader shuffles. Details:
        :func:`npyfeed.adapters.keras_dataset.to_keras`.
        """
        from npyfeed.adapters.keras_dataset import to_keras  # the one upward edge: lazy, delegation only (DESIGN.md)

        return to_keras(self, start_epoch=start_epoch, prefetch=prefetch)

    def to_torch(self, *, start_epoch: int | None = None, as_tensors: bool = True, prefetch: int | None = None) -> Any:
        """A torch ``IterableDataset`` of this loader's batches, for ``DataLoader(dataset, batch_size=None)``.

        Args:
            start_epoch: the epoch of the first iteration (default :attr:`epoch`); each iteration is the next.
            as_tensors: turn NumPy leaves into tensors (zero-copy); ``False`` yields the NumPy batches.
            prefetch: batches read ahead in the main process (default: the loader's own read-ahead).

        DataLoader workers: any start method for local files; ``multiprocessing_context="spawn"`` (or
        ``"forkserver"``) for object stores. Details: :func:`npyfeed.adapters.torch_dataset.to_torch`.
        """
        from npyfeed.adapters.torch_dataset import to_torch  # the one upward edge: lazy, delegation only (DESIGN.md)

        return to_torch(self, start_epoch=start_epoch, as_tensors=as_tensors, prefetch=prefetch)
