"""Row sources: one ``.npy`` file (:class:`NpyArray`), many shards as one (:class:`ConcatArray`), a row range.

Every source reads a *sorted* set of rows straight into a caller's buffer (``read_rows``), which is what the
loader's threads call; ``__getitem__`` gives the ``np.load(path, mmap_mode="r")[key]`` semantics on top.

Reads go through a read-only ``mmap`` gathered with ``np.take`` (which releases the GIL, so threads overlap),
with kernel hints: ``advise("random")`` stops the 8 MB read-around a random page fault would otherwise
trigger, ``advise("sequential")`` doubles read-ahead, and ``will_need(ranges)`` queues reads for many rows at
once without waiting, so a cold random batch keeps the device's queue deep instead of faulting page by page.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from npyfeed.errors import ColumnMismatchError, ConfigError, NpyFormatError
from npyfeed.format import MAX_HEADER_SIZE, NpyHeader, read_header

__all__ = ["ConcatArray", "NpyArray", "RowSlice", "RowSource", "index_rows"]

_WILLNEED_PIECE = 128 << 10  # the smallest read-ahead window Linux ships with (read_ahead_kb = 128)
AccessPattern = Literal["normal", "sequential", "random"]
_MADVISE = {"normal": "MADV_NORMAL", "sequential": "MADV_SEQUENTIAL", "random": "MADV_RANDOM"}
_FADVISE = {"normal": "POSIX_FADV_NORMAL", "sequential": "POSIX_FADV_SEQUENTIAL", "random": "POSIX_FADV_RANDOM"}


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
    block = index_rows(source, first)
    if isinstance(first, slice):
        return block[(slice(None), *rest)]
    if _is_integer(first):
        return block[np.newaxis][(0, *rest)]
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
    return unique_out[inverse.reshape(-1)]


class NpyArray:
    """One ``.npy`` file, validated at open, read by rows without loading it.

    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
    >>> np.save(path, np.arange(12, dtype=np.int16).reshape(4, 3))
    >>> a = NpyArray(path)
    >>> len(a), a.shape, a.dtype
    (4, (4, 3), dtype('int16'))
    >>> a[[3, 0]].tolist()
    [[9, 10, 11], [0, 1, 2]]
    """

    def __init__(self, path: str | os.PathLike[str], *, max_header_size: int = MAX_HEADER_SIZE) -> None:
        self._max_header_size = max_header_size
        self.header: NpyHeader = read_header(path, max_header_size=max_header_size)
        if not self.header.shape:
            raise NpyFormatError(
                f"{self.header.path}: invalid .npy 'shape' for a dataset: found (), expected at least one "
                "dimension (rows)"
            )
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._mmap: mmap.mmap | None = None
        self._view: np.ndarray | None = None

    # -- metadata ---------------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self.header.path

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.header.path,)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.header.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.header.dtype

    @property
    def ndim(self) -> int:
        return len(self.header.shape)

    @property
    def fortran_order(self) -> bool:
        return self.header.fortran_order

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.header.data_bytes

    def __len__(self) -> int:
        return self.header.shape[0]

    def __repr__(self) -> str:
        order = ", fortran_order" if self.fortran_order else ""
        return f"NpyArray({self.path!r}, shape={self.shape}, dtype={self.dtype}{order})"

    # -- pickling: worker processes reopen the file instead of copying a memmap ---------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "max_header_size": self._max_header_size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], max_header_size=state["max_header_size"])  # type: ignore[misc]

    # -- reading ------------------------------------------------------------------------------------------------
    def view(self) -> np.ndarray:
        """A read-only, zero-copy ndarray over the file's data (page cache backed, like ``np.load(mmap_mode="r")``)."""
        if self._view is None:
            with self._lock:
                if self._view is None:
                    self._open()
        assert self._view is not None
        return self._view

    def _open(self) -> None:
        h = self.header
        fd = os.open(h.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise NpyFormatError(f"{h.path}: cannot read as .npy: it is no longer a regular file")
        if info.st_size < h.data_offset + h.data_bytes:
            os.close(fd)
            raise NpyFormatError(
                f"{h.path}: truncated .npy: the file shrank to {info.st_size} bytes since it was opened "
                f"(needs {h.data_offset + h.data_bytes})"
            )
        order: Literal["C", "F"] = "F" if h.fortran_order else "C"
        if h.data_bytes == 0:
            view = np.empty(h.shape, h.dtype, order=order)
        else:
            self._mmap = mmap.mmap(fd, h.data_offset + h.data_bytes, access=mmap.ACCESS_READ)
            view = np.ndarray(h.shape, h.dtype, buffer=self._mmap, offset=h.data_offset, order=order)
        view.flags.writeable = False
        self._fd = fd
        self._view = view

    def read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        view = self.view()
        if rows.size == 0:
            return
        if rows[-1] - rows[0] == rows.size - 1 and (rows.size == 1 or (np.diff(rows) == 1).all()):
            # One run of consecutive rows: a plain slice copy (memcpy-speed, GIL released).
            np.copyto(out, view[rows[0] : rows[-1] + 1])
        else:
            # mode="clip" skips NumPy's buffered bounds check (rows are validated by the caller).
            np.take(view, rows, axis=0, out=out, mode="clip")

    def __getitem__(self, key: Any) -> Any:
        return index_rows(self, key)

    def will_need(self, ranges: Sequence[tuple[int, int]]) -> None:
        self.view()
        if self._fd is None or not hasattr(os, "posix_fadvise"):
            return
        base, row_bytes = self.header.data_offset, self.row_bytes
        if self.fortran_order and self.ndim > 1:
            ranges = [(0, len(self))]  # a Fortran row is spread over the whole file
            row_bytes = self.header.data_bytes // max(1, len(self))
        for start, stop in ranges:
            offset, end = base + start * row_bytes, base + stop * row_bytes
            # The kernel reads at most its read-ahead window per WILLNEED call (8 MiB here, often 128 KiB) and
            # silently ignores the rest, so long ranges go in pieces.
            for piece in range(offset, end, _WILLNEED_PIECE):
                os.posix_fadvise(self._fd, piece, min(_WILLNEED_PIECE, end - piece), os.POSIX_FADV_WILLNEED)

    def advise(self, pattern: AccessPattern) -> None:
        self.view()
        if self._mmap is not None and hasattr(mmap, _MADVISE[pattern]):
            self._mmap.madvise(getattr(mmap, _MADVISE[pattern]))
        if self._fd is not None and hasattr(os, _FADVISE[pattern]):
            os.posix_fadvise(self._fd, 0, 0, getattr(os, _FADVISE[pattern]))

    def close(self) -> None:
        """Release the file descriptor and mapping (views handed out earlier keep the mapping alive)."""
        with self._lock:
            self._view = None
            self._mmap = None  # unmapped when the last view of it is gone
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> NpyArray:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ConcatArray:
    """Several files holding consecutive rows of one array (``x_000.npy``, ``x_001.npy``...), seen as one."""

    def __init__(self, parts: Sequence[RowSource]) -> None:
        if not parts:
            raise ConfigError("ConcatArray needs at least one file")
        first = parts[0]
        for part in parts[1:]:
            if part.dtype != first.dtype or part.shape[1:] != first.shape[1:]:
                raise ColumnMismatchError(
                    f"{part.paths[0]}: rows of shape {part.shape[1:]} and dtype {part.dtype} cannot be "
                    f"concatenated with {first.paths[0]} (rows of shape {first.shape[1:]}, dtype {first.dtype})"
                )
        self.parts = tuple(parts)
        self._starts = np.cumsum([0] + [len(p) for p in parts], dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self._starts[-1]), *self.parts[0].shape[1:])

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.parts[0].dtype

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(p for part in self.parts for p in part.paths)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return f"ConcatArray({len(self.parts)} files, shape={self.shape}, dtype={self.dtype})"

    def _split(self, rows: np.ndarray) -> list[tuple[int, int, int]]:
        """(part, first, last) slices of a sorted row array that fall in each part."""
        cuts = np.searchsorted(rows, self._starts, side="left")
        return [(i, int(cuts[i]), int(cuts[i + 1])) for i in range(len(self.parts)) if cuts[i + 1] > cuts[i]]

    def read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        if rows.size > 1 and not (np.diff(rows) >= 0).all():
            order = np.argsort(rows, kind="stable")
            ordered = np.empty_like(out)
            self.read_rows(rows[order], ordered)
            out[order] = ordered
            return
        for i, a, b in self._split(rows):
            self.parts[i].read_rows(rows[a:b] - self._starts[i], out[a:b])

    def __getitem__(self, key: Any) -> Any:
        return index_rows(self, key)

    def will_need(self, ranges: Sequence[tuple[int, int]]) -> None:
        for start, stop in ranges:
            for i, part in enumerate(self.parts):
                lo, hi = max(start, int(self._starts[i])), min(stop, int(self._starts[i + 1]))
                if lo < hi:
                    part.will_need([(lo - int(self._starts[i]), hi - int(self._starts[i]))])

    def advise(self, pattern: AccessPattern) -> None:
        for part in self.parts:
            part.advise(pattern)


class RowSlice:
    """Rows ``[start, stop)`` of another source, without copying (train/validation splits)."""

    def __init__(self, base: RowSource, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= len(base):
            raise ConfigError(f"row range [{start}, {stop}) is outside {base.paths[0]} with {len(base)} rows")
        self.base, self.start, self.stop = base, start, stop

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.stop - self.start, *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.base.dtype

    @property
    def paths(self) -> tuple[str, ...]:
        return self.base.paths

    def __len__(self) -> int:
        return self.stop - self.start

    def __repr__(self) -> str:
        return f"RowSlice({self.base!r}, {self.start}, {self.stop})"

    def read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        self.base.read_rows(rows + self.start, out)

    def __getitem__(self, key: Any) -> Any:
        return index_rows(self, key)

    def will_need(self, ranges: Sequence[tuple[int, int]]) -> None:
        self.base.will_need([(a + self.start, b + self.start) for a, b in ranges])

    def advise(self, pattern: AccessPattern) -> None:
        self.base.advise(pattern)
