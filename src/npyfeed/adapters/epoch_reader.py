"""Plumbing shared by the Keras and PyTorch adapters: read one epoch ahead, make byte order native.

The adapters read with :meth:`Loader.iter_batches` (pure), which shares the Loader's thread pool, chunked reads and
buffers, and record what their consumer received on the Loader's one cursor (:meth:`Loader.begin`,
:meth:`Loader.deliver`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from npyfeed.adapters.feed import Feed

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
    """Batches ``indices`` of ``epoch`` (of its rest from ``offset``) in order, read ahead by the loader
    (``prefetch`` overrides its depth). It reads; the loader's cursor records what the consumer received."""

    def __init__(self, loader: Feed, epoch: int, indices: range, *, offset: int = 0, prefetch: int | None = None):
        self.epoch, self.offset = epoch, offset
        self._batches: Iterator[tuple[int, Any]] = loader.iter_batches(epoch, indices, offset=offset, prefetch=prefetch)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return self._batches

    def take(self) -> tuple[int, Any]:
        """The next ``(index, batch)`` (``StopIteration`` at the end)."""
        return next(self._batches)

    def close(self) -> None:
        """Cancel what was read ahead."""
        self._batches.close()  # type: ignore[attr-defined]  # a generator
