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

# References to a free buffer: the pool's list entry, the loop variable, and getrefcount's own argument.
_FREE_REFS = 3
# Reference counts are exact only with the GIL; on a free-threaded build we never recycle.
_RECYCLE: bool = getattr(sys, "_is_gil_enabled", lambda: True)()


class BufferPool:
    """Up to ``capacity`` buffers per ``(shape, dtype)``, handed out again once no array refers to them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free: dict[tuple[tuple[int, ...], np.dtype[Any]], list[np.ndarray]] = {}
        self._lock = threading.Lock()
        self.reused = 0

    def empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """An uninitialised array of ``shape`` and ``dtype``: a recycled buffer when one is free."""
        if not _RECYCLE or self.capacity <= 0:
            return np.empty(shape, dtype)
        key = (shape, dtype)
        with self._lock:
            pool = self._free.setdefault(key, [])
            for buffer in pool:
                if sys.getrefcount(buffer) <= _FREE_REFS:
                    self.reused += 1
                    return buffer
            buffer = np.empty(shape, dtype)
            if len(pool) < self.capacity:
                pool.append(buffer)
            return buffer

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
