"""One ``.npy`` object read by rows through a storage backend (:class:`NpyArray`).

The header is parsed from the object's first bytes (:func:`npyfeed.format.load_header`), then every read is a
gather of fixed-size byte records: a C-order row is one record of ``row_bytes``; a Fortran-order row is
``prod(shape[1:])`` elements spread over the file, gathered as one-element records and put back in row order.
Bytes are copied as they are, so padding bytes of aligned structured dtypes match ``np.load`` exactly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from npyfeed.errors import NpyFormatError
from npyfeed.format import MAX_HEADER_SIZE, NpyHeader, load_header
from npyfeed.sources.base import AccessPattern, index_rows, row_nbytes
from npyfeed.storage import Storage, open_storage

__all__ = ["NpyArray"]

# Fortran-order reads build one int64 index per element; this many per gather keeps that list small.
_FORTRAN_ELEMENTS_PER_GATHER = 1 << 20


class NpyArray:
    """One ``.npy`` file (or object), validated at open, read by rows without loading it.

    ``source`` is a path, or any :class:`npyfeed.storage.Storage` (an object-store backend, say): the
    header is validated the same way either way, and the array owns the storage from then on.

    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
    >>> np.save(path, np.arange(12, dtype=np.int16).reshape(4, 3))
    >>> a = NpyArray(path)
    >>> len(a), a.shape, a.dtype
    (4, (4, 3), dtype('int16'))
    >>> a[[3, 0]].tolist()
    [[9, 10, 11], [0, 1, 2]]
    """

    def __init__(self, source: str | os.PathLike[str] | Storage, *, max_header_size: int = MAX_HEADER_SIZE) -> None:
        if isinstance(source, (str, os.PathLike)):
            storage = open_storage(source)
        elif isinstance(source, Storage):
            storage = source
        else:
            raise TypeError(
                f"NpyArray reads a path or a npyfeed.storage.Storage, not {type(source).__name__}: {source!r:.80}"
            )
        try:
            self.header: NpyHeader = load_header(storage, max_header_size=max_header_size)
            if not self.header.shape:
                raise NpyFormatError(
                    f"{self.header.path}: invalid .npy 'shape' for a dataset: found (), expected at least one "
                    "dimension (rows)"
                )
        except BaseException:
            storage.close()
            raise
        self.storage: Storage = storage
        self._max_header_size = max_header_size
        self._view: np.ndarray | None = None

    @classmethod
    def from_storage(cls, storage: Storage, *, max_header_size: int = MAX_HEADER_SIZE) -> NpyArray:
        """The array in ``storage`` (validated like a local file); the array closes the storage."""
        return cls(storage, max_header_size=max_header_size)

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
        return row_nbytes(self)

    @property
    def nbytes(self) -> int:
        return self.header.data_bytes

    def __len__(self) -> int:
        return self.header.shape[0]

    def __repr__(self) -> str:
        order = ", fortran_order" if self.fortran_order else ""
        return f"NpyArray({self.path!r}, shape={self.shape}, dtype={self.dtype}{order})"

    # -- pickling: worker processes reopen the storage (which checks it is the same version) --------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"storage": self.storage, "max_header_size": self._max_header_size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["storage"], max_header_size=state["max_header_size"])  # type: ignore[misc]

    # -- reading ------------------------------------------------------------------------------------------------
    def view(self) -> np.ndarray:
        """A read-only, zero-copy ndarray over a local file's data (like ``np.load(mmap_mode="r")``)."""
        if self._view is None:
            map_array = getattr(self.storage, "map_array", None)
            if map_array is None:
                raise TypeError(f"{self.path}: a zero-copy view needs a local file, not {type(self.storage).__name__}")
            h = self.header
            self._view = map_array(h.data_offset, h.shape, h.dtype, h.fortran_order)
        assert self._view is not None
        return self._view

    def read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        if rows.size == 0 or self.row_bytes == 0:
            return
        if out.dtype == self.dtype and out.flags.c_contiguous:
            self._read_bytes(rows, out.reshape(-1).view(np.uint8))
        else:  # an unusual buffer: read exact bytes into our own, then let NumPy convert
            tmp = np.empty((rows.size, *self.shape[1:]), self.dtype)
            self._read_bytes(rows, tmp.reshape(-1).view(np.uint8))
            np.copyto(out, tmp)

    @property
    def copies_runs(self) -> bool:
        """Whether :meth:`copy_run` can read this array: a local file in C order (a row is one run of bytes)."""
        return (
            hasattr(self.storage, "copy_run")
            and self.row_bytes > 0
            and (not self.header.fortran_order or self.ndim == 1)
        )

    def copy_run(self, start: int, out: np.ndarray) -> None:
        """Rows ``start..start + len(out) - 1`` (in range) into ``out``, a ``(rows, row_bytes)`` uint8 array, then
        the file checked as a read checks it after copying; :meth:`check` before the first run and every few MiB
        (see :meth:`npyfeed.storage.local.LocalFile.copy_run`). Only where :attr:`copies_runs`."""
        self.storage.copy_run(self.header.data_offset, self.row_bytes, start, out)  # type: ignore[attr-defined]

    def check(self) -> None:
        """Raise :class:`npyfeed.FileChangedError` if the file is no longer the version opened."""
        self.storage.check()

    def _read_bytes(self, rows: np.ndarray, dst: np.ndarray) -> None:
        h = self.header
        if not h.fortran_order or self.ndim == 1:
            self.storage.gather(h.data_offset, self.row_bytes, rows, dst)
            return
        # Fortran order: element (i, j1..jk) is at linear index i + n * (j1 + d1 * (j2 + ...)). Indices laid out
        # as (rest reversed, row) are ascending, so storage reads in file order; then transpose into rows.
        n, rest, itemsize = h.shape[0], h.shape[1:], h.dtype.itemsize
        per_row = math.prod(rest)
        out = dst.reshape(rows.size, *rest, itemsize)
        step = max(1, _FORTRAN_ELEMENTS_PER_GATHER // max(1, per_row))
        columns = np.arange(per_row, dtype=np.int64)[:, None] * n
        for start in range(0, rows.size, step):
            chunk = rows[start : start + step]
            tmp = np.empty(per_row * chunk.size * itemsize, np.uint8)
            self.storage.gather(h.data_offset, itemsize, (columns + chunk[None, :]).reshape(-1), tmp)
            k = len(rest)
            laid = tmp.reshape(*rest[::-1], chunk.size, itemsize)
            out[start : start + chunk.size] = laid.transpose(k, *range(k - 1, -1, -1), k + 1)

    def __getitem__(self, key: Any) -> Any:
        return index_rows(self, key)

    def will_need(self, ranges: Sequence[tuple[int, int]]) -> None:
        base, row_bytes = self.header.data_offset, self.row_bytes
        if self.fortran_order and self.ndim > 1:
            ranges = [(0, len(self))]  # a Fortran row is spread over the whole file
            row_bytes = self.header.data_bytes // max(1, len(self))
        self.storage.will_need([(base + start * row_bytes, base + stop * row_bytes) for start, stop in ranges])

    def advise(self, pattern: AccessPattern) -> None:
        self.storage.advise(pattern)

    def close(self) -> None:
        """Release the storage (views handed out earlier keep a local mapping alive)."""
        self._view = None
        self.storage.close()

    def __enter__(self) -> NpyArray:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
