"""Copying bytes out of chunk files on disk with ``pread``: the records of one chunk (neighbours within a few KiB
in one call, consecutive records straight into consecutive rows), or a byte range across chunks. Each returns False,
having read nothing useful, when a chunk is not on disk: the caller fetches it, or the rows, from the store."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from npyfeed.storage.ranges import plan_requests

__all__ = ["LOCAL_GAP", "OpenChunk", "pread_exact", "read_bytes", "read_records"]

# Rows in one chunk closer than this are read with one pread (reading a few KiB more from the page cache is cheaper
# than another system call).
LOCAL_GAP = 16 << 10

OpenChunk = Callable[[int], "int | None"]
"""``open_chunk(k)``: a descriptor of chunk ``k`` on disk (the caller's to close), or None."""


def read_records(
    open_chunk: OpenChunk, chunk_bytes: int, k: int, rel: np.ndarray, positions: np.ndarray, out2: np.ndarray
) -> bool:
    """Records at byte offsets ``rel`` (sorted) of chunk ``k`` into rows ``positions`` of ``out2``; False if
    the chunk is not on disk (nothing read)."""
    fd = open_chunk(k)
    if fd is None:
        return False
    try:
        record_bytes = out2.shape[1]
        shift = int(rel[0]) % record_bytes
        local = (rel - shift) // record_bytes
        for req in plan_requests(local, record_bytes, LOCAL_GAP, chunk_bytes):
            rows = positions[req.start : req.end]
            start = shift + req.first * record_bytes
            count = req.end - req.start
            if req.records == count and int(rows[-1]) - int(rows[0]) == count - 1:
                target = out2[int(rows[0]) : int(rows[0]) + count]  # consecutive records into consecutive rows
                if not pread_exact(fd, target, start):
                    return False
                continue
            buffer = np.empty((req.records, record_bytes), np.uint8)
            if not pread_exact(fd, buffer, start):
                return False
            out2[rows] = buffer[local[req.start : req.end] - req.first]
        return True
    finally:
        os.close(fd)


def read_bytes(open_chunk: OpenChunk, chunk_bytes: int, offset: int, out: np.ndarray) -> bool:
    """Bytes ``[offset, offset + out.size)`` into ``out`` (uint8), chunk by chunk; False if a chunk is not on
    disk."""
    done = 0
    while done < out.size:
        k, at = divmod(offset + done, chunk_bytes)
        piece = min(out.size - done, chunk_bytes - at)
        fd = open_chunk(k)
        if fd is None:
            return False
        try:
            if not pread_exact(fd, out[done : done + piece], at):
                return False
        finally:
            os.close(fd)
        done += piece
    return True


def pread_exact(fd: int, out: np.ndarray, offset: int) -> bool:
    """Fill ``out`` from ``fd`` at ``offset``; False if the file ends first."""
    view = memoryview(out.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            return False
        done += n
    return True
