"""A private local directory of verified chunks of remote objects (``storage_options={"cache_dir": ...}``).

One idea per module:

- :mod:`~npyfeed.storage.cache.options`: the settings and their bounds;
- :mod:`~npyfeed.storage.cache.private_dir`: a directory of this user's only (0700/0600, owner and mode checked,
  a marker), whose files are opened only as regular files;
- :mod:`~npyfeed.storage.cache.directory`: the chunks' space, and eviction of the cache's own files only;
- :mod:`~npyfeed.storage.cache.claims`: one writer per chunk among processes, waited for at most a deadline;
- :mod:`~npyfeed.storage.cache.chunk_file`: a chunk file's trailer (length, CRC, key, boot) and its verification;
- :mod:`~npyfeed.storage.cache.cached_object`: an object's rows read through its chunks;
- :mod:`~npyfeed.storage.cache.read_ahead`: the threads that fetch chunks a Loader announced ahead of use.
"""

from __future__ import annotations

from npyfeed.storage.cache.cached_object import CachedObject
from npyfeed.storage.cache.directory import ChunkDirectory, chunk_directory
from npyfeed.storage.cache.options import CacheOptions, split_cache_options

__all__ = ["CacheOptions", "CachedObject", "ChunkDirectory", "chunk_directory", "split_cache_options"]
