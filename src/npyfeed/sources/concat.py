"""Sources made of other sources: many shards seen as one (:class:`ConcatArray`), a row range (:class:`RowSlice`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from npyfeed.errors import ColumnMismatchError, ConfigError
from npyfeed.sources.base import AccessPattern, RowSource, index_rows, rows_as_bytes

__all__ = ["ConcatArray", "RowSlice"]


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
            rows_as_bytes(out)[order] = rows_as_bytes(ordered)  # bytes, padding included
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
