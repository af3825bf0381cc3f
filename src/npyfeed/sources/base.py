"""What every row source offers (:class:`RowSource`) and NumPy indexing on top of ``read_rows`` (:func:`index_rows`).

Every source reads a *sorted* set of rows straight into a caller's buffer (``read_rows``), which is what the
loader's threads call; ``__getitem__`` gives the ``np.load(path, mmap_mode="r")[key]`` semantics on top.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from npyfeed.storage.base import AccessPattern

__all__ = ["AccessPattern", "RowSource", "index_rows", "row_nbytes", "rows_as_bytes"]


@runtime_checkable
class RowSource(Protocol):
    """Random access to the rows (first-axis entries) of an array stored in files."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    @property
    def paths(self) -> tuple[str, ...]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, key: Any) -> Any: ...

    def read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Copy rows ``rows`` (int64, in range, any order) into ``out`` (shape ``(len(rows), *row_shape)``).

        Ascending runs read fastest: the loader passes each batch sorted, several batches per call.
        """
        ...

    def will_need(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Ask the kernel to start reading these ``[start, stop)`` row ranges; returns without waiting."""
        ...

    def advise(self, pattern: AccessPattern) -> None:
        """Tell the kernel how rows will be read next, so it tunes read-ahead."""
        ...


def index_rows(source: RowSource, key: Any) -> Any:
    """``np.load(path, mmap_mode="r")[key]`` for an int, slice, int array or bool mask, as an in-memory copy."""
    n = len(source)
    row_shape = source.shape[1:]
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        i = int(key)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of bounds for axis 0 with size {n}")
        out = np.empty((1, *row_shape), source.dtype)
        source.read_rows(np.array([i % n], np.int64), out)
        return out[0]
    if isinstance(key, slice):
        rows = np.arange(*key.indices(n), dtype=np.int64)
    elif isinstance(key, tuple):
        return _index_tuple(source, key)
    else:
        index = np.asarray(key)
        if index.dtype == np.bool_:
            if index.shape != (n,):
                raise IndexError(f"boolean index of shape {index.shape} does not match {n} rows")
            rows = np.flatnonzero(index).astype(np.int64)
        elif np.issubdtype(index.dtype, np.integer) or index.size == 0:
            rows = index.astype(np.int64).reshape(-1)
            bad = (rows < -n) | (rows >= n)
            if bad.any():
                raise IndexError(f"index {int(rows[bad][0])} is out of bounds for axis 0 with size {n}")
            rows = np.where(rows < 0, rows + n, rows)
            out = _read_any_order(source, rows)
            return out.reshape(index.shape + row_shape)
        else:
            raise IndexError(f"rows can be indexed by int, slice, int array or bool mask, not {type(key).__name__}")
    return _read_any_order(source, rows)


def _index_tuple(source: RowSource, key: tuple[Any, ...]) -> Any:
    """``a[first, *rest]``: read the rows ``first`` selects, then index them with a key of the same kind.

    Keeping the kind (int, slice, int array, bool mask) lets NumPy apply its own rules to the whole key: advanced
    indices broadcast together (``a[[0, 1], [0, 1]]`` is two elements, not a 2x2 block), and their result axes
    go first when a slice separates them (``a[1, :, [0, 1]]``).
    """
    if not key:
        return index_rows(source, slice(None))  # a[()] is the whole array
    first, rest = key[0], key[1:]
    if _is_integer(first):
        # One row read as a one-row array: a row of a 1-d array is a scalar (np.bytes_ for 'S' dtypes), which
        # cannot take the rest of the key.
        return index_rows(source, np.array([first], np.int64))[(0, *rest)]
    block = index_rows(source, first)
    if isinstance(first, slice):
        return block[(slice(None), *rest)]
    index = np.asarray(first)
    if index.dtype == np.bool_:
        return block[(np.ones(len(block), dtype=bool), *rest)]
    rows = block.reshape((index.size, *source.shape[1:]))
    return rows[(np.arange(index.size).reshape(index.shape), *rest)]


def _is_integer(key: Any) -> bool:
    return isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_))


def _read_any_order(source: RowSource, rows: np.ndarray) -> np.ndarray:
    """Read rows in any order, repeats allowed (``a[[3, 1, 1]]``).

    Each distinct row is read once, in file order, then gathered in memory into the order asked for.
    """
    if rows.size and (np.diff(rows) > 0).all():
        out = np.empty((rows.size, *source.shape[1:]), source.dtype)
        source.read_rows(rows, out)
        return out
    unique, inverse = np.unique(rows, return_inverse=True)
    unique_out = np.empty((unique.size, *source.shape[1:]), source.dtype)
    source.read_rows(unique, unique_out)
    out = np.empty((rows.size, *source.shape[1:]), source.dtype)
    np.take(rows_as_bytes(unique_out), inverse.reshape(-1), axis=0, out=rows_as_bytes(out))
    return out


def row_nbytes(array: Any) -> int:
    """Bytes of one row of ``array`` (anything with ``shape`` and ``dtype``: an array, a source, a header)."""
    return math.prod(array.shape[1:]) * array.dtype.itemsize


def rows_as_bytes(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array's rows as a ``(rows, row_nbytes)`` uint8 view.

    Moving rows through this view copies every byte, where NumPy copies a structured dtype field by field and
    leaves its padding bytes as the destination held them.
    """
    size = row_nbytes(a)
    if a.size == 0 or size == 0:
        return np.zeros((len(a), size), np.uint8)  # no bytes to move
    return a.reshape(-1).view(np.uint8).reshape(len(a), size)
