"""A source's rows a block at a time, in bounded memory, for :func:`npyfeed.write.convert.convert`.

C-order sources (one file or shards) are read as consecutive rows into one reused buffer; a Fortran-order file
is read by a blocked transpose: rows ``[a, b)`` are one contiguous strip per column, read with ``pread`` and
transposed in memory into C-order rows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np

from npyfeed.errors import NpyFormatError
from npyfeed.sources import NpyArray, RowSource

__all__ = ["block_rows", "fortran_blocks", "queue_strips", "row_blocks"]


def block_rows(row_bytes: int, memory_bytes: int) -> int:
    return max(1, memory_bytes // max(1, row_bytes))


def row_blocks(array: RowSource, memory_bytes: int) -> Iterator[np.ndarray]:
    """C-order sources (one file or shards): consecutive rows, read straight into a reused buffer."""
    row_shape = tuple(array.shape[1:])
    step = block_rows(array.dtype.itemsize * math.prod(row_shape), memory_bytes)
    array.advise("sequential")
    buffer = np.empty((min(step, len(array)), *row_shape), array.dtype)
    for start in range(0, len(array), step):
        stop = min(start + step, len(array))
        out = buffer[: stop - start]
        array.read_rows(np.arange(start, stop, dtype=np.int64), out)
        yield out


def fortran_blocks(array: NpyArray, memory_bytes: int) -> Iterator[np.ndarray]:
    """A blocked transpose: rows ``[a, b)`` of a Fortran file are one contiguous strip per column.

    Each strip is read with one ``pread`` into a column-major block, which is then transposed in memory into
    C-order rows. Strips are ``memory_bytes / (2 x row_bytes)`` elements long: long sequential reads, while
    memory stays two blocks. (Page faults on a mapping would be wrong here: each fault reads the kernel's whole
    read-around window, megabytes, for every strip, and under a memory cap those pages are evicted before the
    next block uses them.) Bytes are moved raw, so padding of structured dtypes comes along.
    """
    if getattr(array.storage, "map_array", None) is None:  # not a local file: the storage gathers elements
        yield from row_blocks(array, memory_bytes)
        return
    h = array.header
    n, rest, itemsize = h.shape[0], h.shape[1:], h.dtype.itemsize
    per_row, k = math.prod(rest), len(rest)
    step = max(1, memory_bytes // max(1, 2 * array.row_bytes))
    fd = os.open(array.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead past each strip: it is never used
        unit = np.dtype(f"u{itemsize}") if itemsize in (1, 2, 4, 8) else np.dtype((np.void, itemsize))
        strips = np.empty((per_row, min(step, n) * itemsize), np.uint8)
        buffer = np.empty((min(step, n), *rest), h.dtype)
        queue_strips(fd, h.data_offset, n, per_row, itemsize, 0, min(step, n))
        for start in range(0, n, step):
            count = min(step, n - start)
            size = count * itemsize
            # Queue the next block's strips with the kernel now: they arrive while this block is transposed and
            # written, and the device sees hundreds of reads at once instead of one at a time.
            queue_strips(fd, h.data_offset, n, per_row, itemsize, start + step, min(start + 2 * step, n))
            for column in range(per_row):
                offset = h.data_offset + (column * n + start) * itemsize
                view = memoryview(strips[column, :size])  # type: ignore[arg-type]
                if os.preadv(fd, [view], offset) != size:
                    raise NpyFormatError(f"{array.path}: file ended inside column {column} (truncated?)")
            out = buffer[:count]
            # Transpose whole elements (a uint of the item's size, else raw void records), not single bytes.
            laid = strips[:, :size].view(unit).reshape(*rest[::-1], count)
            out.reshape(-1).view(unit).reshape(count, *rest)[...] = laid.transpose(k, *range(k - 1, -1, -1))
            yield out
    finally:
        os.close(fd)


def queue_strips(fd: int, base: int, n: int, columns: int, itemsize: int, start: int, stop: int) -> None:
    """``posix_fadvise(WILLNEED)`` on rows ``[start, stop)`` of every column: asynchronous reads, no waiting."""
    if stop <= start or not hasattr(os, "posix_fadvise"):
        return
    length = (stop - start) * itemsize
    for column in range(columns):
        offset = base + (column * n + start) * itemsize
        # The kernel reads at most its read-ahead window per call and ignores the rest: ask in 128 KiB pieces.
        for piece in range(offset, offset + length, 128 << 10):
            os.posix_fadvise(fd, piece, min(128 << 10, offset + length - piece), os.POSIX_FADV_WILLNEED)
