"""A ``keras.utils.PyDataset`` over a Loader, for Keras 3 on the JAX and PyTorch backends.

On the TensorFlow backend use :func:`npyfeed.adapters.tf_data.to_tf_dataset` instead: Keras turns any
``PyDataset`` into a single-threaded ``from_generator`` there.

Keras asks for batches by index. The dataset reads epoch ``start_epoch`` (by default ``loader.epoch``) until all its
batches were delivered, then the next one, so epochs 0, 1, 2, ... of ``model.fit`` get the orders
``loader.read_batch(e, i)`` gives, exactly as iterating the Loader would (batches asked for outside a Keras epoch,
e.g. to probe a signature, are read but not counted). Reads are stateless, so batches are read ahead on a thread
pool while Keras asks for them in order; Keras' own workers are not used (its pool starts reading before
``on_epoch_begin`` runs).

Pass ``shuffle=False`` to ``model.fit``: the loader already shuffles rows, and Keras' ``shuffle=True`` (its default)
only permutes the order of batch indices with Python's unseeded ``random``, which loses determinism and
read-ahead. Rows are still each read once per epoch either way.
"""

from __future__ import annotations

import threading
import warnings
from typing import TYPE_CHECKING, Any

from npyfeed import arguments as args
from npyfeed.adapters.epoch_reader import EpochReader, native_byte_order
from npyfeed.adapters.frameworks import require_keras
from npyfeed.errors import BatchOrderWarning

if TYPE_CHECKING:
    from npyfeed.adapters.feed import Feed

__all__ = ["LoaderPyDataset", "to_keras"]


require_keras()  # a clear ImportError, naming what to install, when Keras is missing
import keras  # noqa: E402


class LoaderPyDataset(keras.utils.PyDataset):
    """``len(loader)`` batches per epoch; epoch ``e`` batch ``i`` is ``loader.read_batch(e, i)``; the
    loader's cursor records each batch handed to Keras."""

    def __init__(self, loader: Feed, start_epoch: int, prefetch: int | None) -> None:
        # workers=1: Keras calls __getitem__ from its own loop; we read ahead ourselves (see module doc).
        super().__init__(workers=1, use_multiprocessing=False)
        self.loader = loader
        # The pass being read (epoch, offset): it moves on once all its batches were delivered. A pass over
        # the epoch a saved state resumes reads the rest of it, from the saved position.
        pending_epoch, pending_offset = loader.next_pass
        self.epoch = start_epoch
        self._offset = pending_offset if start_epoch == pending_epoch else 0
        self._seen: set[int] = set()  # batches of this pass delivered within Keras epochs
        self._in_epoch = False  # between on_epoch_begin and on_epoch_end
        self._prefetch = prefetch
        self._lock = threading.Lock()
        self._stream: EpochReader | None = None
        self._stream_next = 0
        self._cursor: Any = None  # the loader's cursor for this pass (Loader.begin), once Keras takes a batch
        self._warned = False

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_batches(self) -> int:
        """Keras' steps per epoch: ``len(loader)`` (the rest of a resumed epoch is a ``fit`` of
        ``steps_per_epoch=loader.num_batches(offset)``, as :class:`npyfeed.keras.LoaderCheckpoint` runs it)."""
        return len(self.loader)

    # An epoch ends when all its batches were delivered, not at on_epoch_end: on the JAX and PyTorch backends
    # fit() first runs a short "epoch" of one batch to build the model (on_epoch_begin, batch 0,
    # on_epoch_end), and with steps_per_epoch < len() one pass spans several Keras epochs.
    def on_epoch_begin(self) -> None:
        with self._lock:
            self._in_epoch = True

    def on_epoch_end(self) -> None:
        with self._lock:
            self._drop_stream()
            self._in_epoch = False

    def __getitem__(self, index: int) -> Any:
        if not args.is_int(index) or not 0 <= index < len(self):
            raise IndexError(f"batch {index!r} is out of range for {len(self)} batches per epoch")
        index = int(index)
        with self._lock:
            count = self.loader.num_batches(self._offset)
            if not self._in_epoch or index >= count:
                # Keras probing batches for a signature, or a user indexing: no effect on the position.
                # (Past the rest of a resumed epoch: the next epoch's batch, read but not counted.)
                epoch, offset = (self.epoch, self._offset) if index < count else (self.epoch + 1, 0)
                return native_byte_order(self.loader.read_batch(epoch, index, offset=offset))
            batch = self._take(index, count)
            if not self._seen:
                self._cursor = self.loader.begin(self.epoch)
            self._seen.add(index)
            self.loader.deliver(self._cursor, len(self._seen))
            if len(self._seen) == count:
                self.epoch, self._offset = self.epoch + 1, 0
                self._seen.clear()
                self._drop_stream()
            return native_byte_order(batch)

    def _take(self, index: int, count: int) -> Any:
        """Batch ``index`` of the pass, from the read-ahead stream (restarted there when Keras skips about)."""
        if self._stream is None or self._stream_next != index:
            self._drop_stream()
            if index not in (0, len(self._seen)) and not self._warned:
                self._warned = True
                warnings.warn(
                    "npyfeed: Keras asked for batches out of order (model.fit(shuffle=True) is Keras' "
                    "default); the loader's batch order and read-ahead are lost. Pass shuffle=False: "
                    "the loader already shuffles.",
                    BatchOrderWarning,
                    stacklevel=3,
                )
            indices = range(index, count)
            prefetch = self._prefetch
            self._stream = EpochReader(self.loader, self.epoch, indices, offset=self._offset, prefetch=prefetch)
        try:
            _, batch = self._stream.take()
        except BaseException:
            # The failed batch is asked for again on the next call, from a fresh stream.
            self._drop_stream()
            raise
        self._stream_next = index + 1  # where the read-ahead stream is, not what the consumer holds
        return batch

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def close(self) -> None:
        """Drop what was read ahead and stop the loader's read threads (they start again when needed)."""
        with self._lock:
            self._drop_stream()
        self.loader.close()

    def __repr__(self) -> str:
        return f"LoaderPyDataset({self.loader!r}, epoch {self.epoch})"


def to_keras(loader: Feed, *, start_epoch: int | None = None, prefetch: int | None = None) -> Any:
    """A ``keras.utils.PyDataset`` of ``loader``'s batches, for ``model.fit`` on any Keras 3 backend.

    Args:
        loader: the :class:`npyfeed.Loader` to read.
        start_epoch: the epoch read first (default ``loader.epoch``); each complete pass moves to the next.
        prefetch: batches read ahead (default: the loader's own read-ahead).

    >>> model.fit(loader.to_keras(), epochs=3, shuffle=False)  # doctest: +SKIP
    """
    start = args.integer("start_epoch", loader.epoch if start_epoch is None else start_epoch)
    prefetch = args.optional_positive_int("prefetch", prefetch)
    return LoaderPyDataset(loader, start, prefetch)
