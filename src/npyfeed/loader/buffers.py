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

__all__ = ["BufferPool"]

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
