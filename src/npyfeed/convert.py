"""Rewrite data in the layout that reads fastest (public module): see :mod:`npyfeed.write.convert`."""

from npyfeed.write.convert import ConvertResult, convert

__all__ = ["ConvertResult", "convert"]
