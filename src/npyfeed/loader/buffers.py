"""Output buffers recycled once nobody holds them any more.

Every read fills a multi-megabyte buffer. Allocating a fresh one each time makes glibc ``mmap`` and ``munmap`` it,
and with several threads every ``munmap`` stops the other cores to flush their TLBs: measured here, that halves
the throughput of two read threads. So buffers are reused, but only when it is safe: a batch handed to the user
is a view whose ``base`` is the pooled buffer, so while the user (or a framework tensor aliasing it) keeps any
view, the buffer's reference count stays above the pool's own and it is not touched. Nothing is ever overwritten
under a live array; a buffer still held is simply replaced by a new one.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np

__all__ = ["BufferPool", "Ring"]

# TensorFlow shares a NumPy array's memory (instead of copying it) only when it is 64-byte aligned.
ALIGNMENT = 64
# Reference counts are exact only with the GIL; on a free-threaded build we never recycle.
_RECYCLE: bool = getattr(sys, "_is_gil_enabled", lambda: True)()


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(owner, array)``: an uninitialised ``array`` whose data is ``ALIGNMENT``-aligned, carved from ``owner``."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes == 0:  # nothing to align (and a zero-byte uint8 view cannot take a wider dtype)
        empty = np.empty(shape, dtype)
        return empty, empty
    owner = np.empty(nbytes + ALIGNMENT, np.uint8)
    skip = -owner.ctypes.data % ALIGNMENT
    return owner, owner[skip : skip + nbytes].view(dtype).reshape(shape)


class BufferPool:
    """Up to ``capacity`` buffers per ``(shape, dtype)``, handed out again once no array refers to them.

    A buffer is an aligned array carved from an owner array. Views a user makes of it point at the owner
    (NumPy collapses ``base`` to the array that owns the memory), so a buffer is free only when neither the array
    handed out nor its owner has references beyond the pool's own.
    """

    # References to a free pair: the pool's list entry, the loop variable, and getrefcount's own argument; the
    # owner has one more, from the array carved out of it.
    _FREE_ARRAY_REFS = 3
    _FREE_OWNER_REFS = 4

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free: dict[tuple[tuple[int, ...], np.dtype[Any]], list[tuple[np.ndarray, np.ndarray]]] = {}
        self._lock = threading.Lock()
        self.reused = 0

    def empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """An uninitialised, aligned array of ``shape`` and ``dtype``: a recycled buffer when one is free."""
        if not _RECYCLE or self.capacity <= 0:
            return aligned_empty(shape, dtype)[1]
        key = (shape, dtype)
        with self._lock:
            pool = self._free.setdefault(key, [])
            for owner, array in pool:
                if sys.getrefcount(array) <= self._FREE_ARRAY_REFS and sys.getrefcount(owner) <= self._FREE_OWNER_REFS:
                    self.reused += 1
                    return array
            pair = aligned_empty(shape, dtype)
            if len(pool) < self.capacity:
                pool.append(pair)
            return pair[1]

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


def _unheld(arrays: list[np.ndarray]) -> bool:
    """No reference to any of ``arrays`` but the list's, the loop variable's and getrefcount's argument."""
    return all(sys.getrefcount(array) <= 3 for array in arrays)


class Ring:
    """A few buffers reused in turn by one reader, each one allocation carved into an aligned array per column
    (``shapes``), and with each a ``(rows, row bytes)`` uint8 view of it to copy into.

    A buffer is taken again once nothing refers to its arrays or its allocation (the batches handed out are views of
    it), as in :class:`BufferPool`, without a lock: the ring belongs to one pass. Up
    to ``capacity`` are kept; past that, while the user holds them all, a fresh one is made each time.
    """

    def __init__(self, shapes: list[tuple[tuple[int, ...], np.dtype[Any]]], capacity: int) -> None:
        self.shapes, self.capacity = shapes, capacity
        self._kept: list[tuple[np.ndarray, list[np.ndarray], list[np.ndarray], int]] = []

    def _make(self) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        sizes = [int(np.prod(s, dtype=np.int64)) * d.itemsize for s, d in self.shapes]
        starts = [0]
        for size in sizes:
            starts.append(starts[-1] + -(-size // ALIGNMENT) * ALIGNMENT)
        owner = np.empty(starts[-1] + ALIGNMENT, np.uint8)
        skip = -owner.ctypes.data % ALIGNMENT
        arrays, raws = [], []
        for (shape, dtype), start, size in zip(self.shapes, starts, sizes, strict=False):
            raw = owner[skip + start : skip + start + size]
            arrays.append(raw.view(dtype).reshape(shape))
            raws.append(raw.reshape(shape[0], -1))
        return owner, arrays, raws

    def take(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``(arrays, raw views)`` of a buffer no array refers to any more (a new one if none is free)."""
        for owner, arrays, raws, free in self._kept:
            if sys.getrefcount(owner) <= free and _unheld(arrays):
                return arrays, raws
        owner, arrays, raws = self._make()
        if _RECYCLE and len(self._kept) < self.capacity:
            # Free means referred to only by the ring's entry, its arrays and views (each a view of the owner), the
            # loop variable above and getrefcount's own argument.
            self._kept.append((owner, arrays, raws, 3 + 2 * len(arrays)))
        return arrays, raws
