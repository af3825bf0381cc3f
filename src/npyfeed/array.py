"""Row sources (kept importable from here): see :mod:`npyfeed.sources` and :mod:`npyfeed.storage`."""

from npyfeed.sources import AccessPattern, ConcatArray, NpyArray, RowSlice, RowSource, index_rows

__all__ = ["AccessPattern", "ConcatArray", "NpyArray", "RowSlice", "RowSource", "index_rows"]
