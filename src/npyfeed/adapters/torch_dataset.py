"""A PyTorch ``IterableDataset`` of a Loader's batches, for ``DataLoader(dataset, batch_size=None)``.

The batches are already batched, so the DataLoader must not batch again: pass ``batch_size=None``.

- ``num_workers=0`` (recommended): batches are read ahead on ``loader.num_threads`` threads in the main process
  (local files: gathers from a read-only mapping, which release the GIL; object stores: ranged GETs in flight)
  and handed over without a copy (``torch.from_numpy``).
- ``num_workers=k``: worker ``w`` reads batches ``w, w + k, w + 2k, ...`` of each epoch; the DataLoader takes
  results from workers in turn, so batches still come in order ``0, 1, 2, ...``. Each worker reopens the files
  (a ``.npy`` array pickles as its path), nothing is copied up front, but every batch then crosses a process
  boundary through shared memory: use workers only when the transform is heavy Python work.

Start methods (``DataLoader(multiprocessing_context=...)``): local files work with ``"fork"`` (Linux's default),
``"spawn"`` and ``"forkserver"``. For object stores (``s3://``, ``gs://``, ``https://``, cached or not) use
``"spawn"`` or ``"forkserver"``: the object-store client does not survive fork, so a forked worker refuses with a
:class:`~npyfeed.errors.ConfigError` naming them instead of hanging. A spawned worker pays for its start-up
(importing torch, reopening the files) once per epoch unless ``persistent_workers=True``.

Every ``iter()`` over the DataLoader is the next epoch, starting at ``start_epoch`` (default ``loader.epoch``), with
or without workers, persistent or not. In the main process the Loader's cursor counts (iterating the dataset moves
``loader.epoch`` and ``loader.get_state()`` as iterating the loader does); workers keep epoch counters in shared
memory, one per worker, so fresh worker processes continue the count. ``set_epoch(e)`` makes the next iteration
epoch ``e`` (``DistributedSampler`` style).

``state_dict()`` / ``load_state_dict()`` (the protocol of torchdata's ``StatefulDataLoader``): with
``num_workers=0`` they save and restore the position after the last batch delivered, as :meth:`Loader.get_state`
does, and restored on another shard count (``shard="auto"`` under another ``WORLD_SIZE``) the rest of the epoch is
shared out among the new ranks. With workers, ``StatefulDataLoader`` keeps each worker's position (epoch, batches
it delivered) with the batches it delivers and restores them into a DataLoader with the same ``num_workers``: the
rest of the epoch, then whole epochs.

JAX users need none of this: ``for batch in loader`` yields NumPy batches (``jax.device_put`` takes them as is).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from multiprocessing.sharedctypes import RawArray
from typing import TYPE_CHECKING, Any

import numpy as np

from npyfeed import arguments as args
from npyfeed.adapters.epoch_reader import EpochReader, native_byte_order, rebuild
from npyfeed.adapters.frameworks import require_torch
from npyfeed.errors import ConfigError

if TYPE_CHECKING:
    from npyfeed.adapters.feed import Feed

__all__ = ["LoaderIterableDataset", "to_torch"]

_MAX_WORKERS = 256  # epoch counters kept in shared memory: one for the main process, one per worker


require_torch()  # a clear ImportError, naming what to install, when PyTorch is missing
import torch  # noqa: E402


def _as_tensors(batch: Any) -> Any:
    """NumPy leaves as tensors sharing their memory; what torch cannot hold (strings) stays NumPy."""
    if isinstance(batch, Mapping):
        return {k: _as_tensors(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return rebuild(batch, [_as_tensors(v) for v in batch])
    if not isinstance(batch, np.ndarray) or batch.dtype.kind in "SUOVMm" or batch.dtype.names is not None:
        return batch
    batch = native_byte_order(batch)
    if not batch.flags.writeable:  # from_numpy warns on read-only memory (a transform may return a view)
        batch = batch.copy()
    try:
        return torch.from_numpy(batch)
    except TypeError:  # a dtype this torch lacks: leave it to the user
        return batch


class LoaderIterableDataset(torch.utils.data.IterableDataset):
    """One epoch of ``loader`` per iteration, split by batch across DataLoader workers."""

    def __init__(self, loader: Feed, as_tensors: bool, prefetch: int | None) -> None:
        self.loader = loader
        self.as_tensors = as_tensors
        self._prefetch = prefetch
        # The main process reads the passes the loader's cursor begins. Workers cannot reach it: slot w + 1
        # counts worker w's iterations in shared memory (a worker started for a later epoch, non-persistent
        # workers, sees how many its predecessors ran), from the pass that was next when the dataset was made.
        # A RawArray (no lock): each slot has one writer (set_epoch writes between epochs), and a lock's SemLock
        # made in the default (fork) context cannot be sent to spawn or forkserver workers; the shared heap can.
        self._first = loader.next_pass
        self._epochs = RawArray("q", [self._first[0]] * (_MAX_WORKERS + 1))
        self._worker_state: dict[str, int] | None = None  # in a worker: its position, for StatefulDataLoader
        self._skip: tuple[int, int] | None = None  # in a worker: (epoch, batches of it already delivered)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration in the main process reads."""
        return self.loader.epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration (in the main process and in every worker) read ``epoch``."""
        self.loader.set_epoch(args.integer("epoch", epoch))
        self._restart()

    def _restart(self) -> None:
        """Workers continue from the loader's next pass."""
        self._first = self.loader.next_pass
        self._epochs[:] = [self._first[0]] * len(self._epochs)

    def _claim(self, slot: int) -> int:
        epoch = int(self._epochs[slot])
        self._epochs[slot] = epoch + 1
        return epoch

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        if info is None:
            return self._delivered(self.loader.begin())
        if info.num_workers > _MAX_WORKERS:
            raise ConfigError(f"at most {_MAX_WORKERS} DataLoader workers, got {info.num_workers}")
        epoch = self._claim(info.id + 1)
        offset = self._first[1] if epoch == self._first[0] else 0
        skip, self._skip = (self._skip[1] if self._skip is not None and self._skip[0] == epoch else 0), None
        self._worker_state = {"epoch": epoch, "offset": offset, "delivered": skip}
        indices = range(info.id + skip * info.num_workers, self.loader.num_batches(offset), info.num_workers)
        return self._worker_batches(epoch, offset, indices, skip)

    def _delivered(self, cursor: Any) -> Iterator[Any]:
        """The pass ``cursor`` begins, read ahead on threads; the loader's cursor moves as each batch is yielded."""
        indices = range(self.loader.num_batches(cursor.offset))
        reader = EpochReader(self.loader, cursor.epoch, indices, offset=cursor.offset, prefetch=self._prefetch)
        try:
            for index, batch in reader:
                self.loader.deliver(cursor, index + 1)
                yield _as_tensors(batch) if self.as_tensors else batch
        finally:
            reader.close()

    def _worker_batches(self, epoch: int, offset: int, indices: range, done: int) -> Iterator[Any]:
        """A worker process: one read at a time, the DataLoader runs the workers in parallel."""
        for index in indices:
            batch = self.loader.read_batch(epoch, index, offset=offset)
            done += 1
            self._worker_state = {"epoch": epoch, "offset": offset, "delivered": done}
            yield _as_tensors(batch) if self.as_tensors else batch

    # -- the torchdata StatefulDataLoader protocol ------------------------------------------------------------
    # num_workers=0: the loader's state (any shard count can restore it). With workers, StatefulDataLoader asks
    # each worker for its own state, snapshotted with the batches it delivers, and hands it back to the same
    # worker on resume: the epoch, the pass's offset and how many of this worker's batches were delivered.
    def state_dict(self) -> dict[str, Any]:
        """The loader state after the last batch delivered in the main process (see :meth:`Loader.get_state`),
        or, in a DataLoader worker, that worker's position (restored by as many workers)."""
        info = torch.utils.data.get_worker_info()
        if info is None:
            return self.loader.get_state()
        epoch = int(self._epochs[info.id + 1])
        position = self._worker_state or {"epoch": epoch, "offset": 0, "delivered": 0}
        return {"npyfeed_worker": {**position, "num_workers": info.num_workers}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the batch ``state`` was taken at, on this or another shard count."""
        worker = state.get("npyfeed_worker") if isinstance(state, dict) else None
        if worker is None:
            self.loader.set_state(state)
            self._restart()
            return
        info = torch.utils.data.get_worker_info()
        if info is None or info.num_workers != worker["num_workers"]:
            raise ConfigError(
                f"a DataLoader worker's state restores only with num_workers={worker['num_workers']}, got "
                f"{0 if info is None else info.num_workers}"
            )
        epoch, offset = args.integer("epoch", worker["epoch"]), args.integer("offset", worker["offset"])
        self._epochs[info.id + 1] = epoch
        self._first = (epoch, offset)
        self._skip = (epoch, args.integer("delivered", worker["delivered"]))

    def __reduce__(self) -> tuple[Any, ...]:
        # The shared epoch counters travel as such (DataLoader hands the dataset to workers it spawns), not as
        # part of a pickled __dict__.
        return _restore, (self.loader, self._epochs, self._first, self.as_tensors, self._prefetch)

    def __repr__(self) -> str:
        return f"LoaderIterableDataset({self.loader!r}, next epoch {self.epoch})"


def _restore(loader: Feed, epochs: Any, first: tuple[int, int], as_tensors: bool, prefetch: int | None) -> Any:
    dataset = LoaderIterableDataset(loader, as_tensors, prefetch)
    dataset._epochs, dataset._first = epochs, first
    return dataset


def to_torch(
    loader: Feed, *, start_epoch: int | None = None, as_tensors: bool = True, prefetch: int | None = None
) -> Any:
    """A ``torch.utils.data.IterableDataset`` of ``loader``'s batches; use it with ``DataLoader(batch_size=None)``.

    Args:
        loader: the :class:`npyfeed.Loader` to read.
        start_epoch: the epoch of the first iteration (default ``loader.epoch``); each iteration is the next.
        as_tensors: turn NumPy leaves into tensors (zero-copy); ``False`` yields the NumPy batches.
        prefetch: batches read ahead in the main process (default: the loader's own read-ahead).

    >>> data = torch.utils.data.DataLoader(loader.to_torch(), batch_size=None)  # doctest: +SKIP
    >>> for epoch in range(3):  # doctest: +SKIP
    ...     for x, y in data: ...
    """
    start = args.integer("start_epoch", loader.epoch if start_epoch is None else start_epoch)
    prefetch = args.optional_positive_int("prefetch", prefetch)
    as_tensors = args.flag("as_tensors", as_tensors)
    if start != loader.epoch:
        loader.set_epoch(start)
    return LoaderIterableDataset(loader, as_tensors, prefetch)
