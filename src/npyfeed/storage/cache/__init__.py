"""A private local directory of verified chunks of remote objects (``storage_options={"cache_dir": ...}``).

One idea per module: :mod:`~npyfeed.storage.cache.options` (the settings and their bounds),
:mod:`~npyfeed.storage.cache.directory` (the directory: space and eviction), :mod:`~npyfeed.storage.cache.claims`
(one writer per chunk among processes), :mod:`~npyfeed.storage.cache.cached_object` (an object's rows read through
the chunks).
"""

from __future__ import annotations

from npyfeed.storage.cache.cached_object import CachedObject
from npyfeed.storage.cache.directory import ChunkDirectory, chunk_directory
from npyfeed.storage.cache.options import CacheOptions, split_cache_options

__all__ = ["CacheOptions", "CachedObject", "ChunkDirectory", "chunk_directory", "split_cache_options"]
