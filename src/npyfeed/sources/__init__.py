"""Row sources: one ``.npy`` object (:class:`NpyArray`), many shards as one (:class:`ConcatArray`), a row range."""

from npyfeed.sources.array import NpyArray
from npyfeed.sources.base import AccessPattern, RowSource, index_rows
from npyfeed.sources.concat import ConcatArray, RowSlice

__all__ = ["AccessPattern", "ConcatArray", "NpyArray", "RowSlice", "RowSource", "index_rows"]
