"""Plumbing shared by the Keras and PyTorch adapters: read one epoch ahead, make byte order native.

The Loader's own ``iter()`` claims ``loader.epoch``; the adapters keep their own epoch count, so they read with
:meth:`Loader.iter_batches` (stateless), which shares the Loader's thread pool, chunked reads and buffers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from npyfeed.loader.loader import Loader

__all__ = ["EpochReader", "native_byte_order", "rebuild"]


def native_byte_order(batch: Any) -> Any:
    """``batch`` with every non-native array byte-swapped (a ``>f4`` file on x86): frameworks take native only."""
    if isinstance(batch, Mapping):
        return {k: native_byte_order(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return rebuild(batch, [native_byte_order(v) for v in batch])
    if isinstance(batch, np.ndarray) and batch.dtype.names is None and not batch.dtype.isnative:
        return batch.astype(batch.dtype.newbyteorder("="))
    return batch


def rebuild(sequence: tuple[Any, ...] | list[Any], items: list[Any]) -> Any:
    """A tuple, namedtuple or list like ``sequence`` holding ``items``."""
    if isinstance(sequence, list):
        return items
    return type(sequence)(*items) if hasattr(sequence, "_fields") else tuple(items)


class EpochReader:
    """Batches ``indices`` of ``epoch`` in order, read ahead by the loader (``prefetch`` overrides its depth)."""

    def __init__(self, loader: Loader, epoch: int, indices: range, prefetch: int | None = None) -> None:
        self.epoch = epoch
        self.next_index = indices.start if len(indices) else None
        self._batches: Iterator[tuple[int, Any]] = loader.iter_batches(epoch, indices, prefetch=prefetch)
        self._step = indices.step

    def __iter__(self) -> Iterator[Any]:
        for index, batch in self._batches:
            self.next_index = index + self._step
            yield batch

    def take(self) -> Any:
        """The next batch (``StopIteration`` at the end)."""
        index, batch = next(self._batches)
        self.next_index = index + self._step
        return batch

    def close(self) -> None:
        """Cancel what was read ahead."""
        self._batches.close()  # type: ignore[attr-defined]  # a generator
