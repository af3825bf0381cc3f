"""The local cache's settings in ``storage_options``: ``cache_dir``, ``cache_size``, ``cache_chunk_bytes``.

``split_cache_options`` takes them out of ``storage_options`` (the rest configures the store) and validates them
once, where they enter, by :mod:`npyfeed.arguments`' rule: sizes are ints or strings of its size grammar such as
``"20GB"`` (20 * 10^9) or ``"512MiB"`` (512 * 2^20), within
bounds (:data:`MIN_CHUNK_BYTES`, :data:`MAX_CHUNK_BYTES`; a cache of at least one chunk), and a bad one is a
:class:`~npyfeed.ConfigError` naming the key, the value and the bound. ``cache_dir`` may start with ``~``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npyfeed import arguments
from npyfeed.errors import ConfigError

__all__ = [
    "CACHE_KEYS",
    "DEFAULT_CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    "MIN_CHUNK_BYTES",
    "TRAILER_BYTES",
    "CacheOptions",
    "split_cache_options",
]

CACHE_KEYS = ("cache_dir", "cache_size", "cache_chunk_bytes")
DEFAULT_CHUNK_BYTES = 4 << 20
MIN_CHUNK_BYTES = 64 << 10
"""Smallest ``cache_chunk_bytes``: a chunk is a file, a claim and a request; tiny chunks make a batch thousands of
each (``cache_chunk_bytes=1`` delivered no batch in 30 s)."""
MAX_CHUNK_BYTES = 1 << 30
"""Largest ``cache_chunk_bytes``: a missing chunk is fetched whole before any of its rows is served."""
TRAILER_BYTES = 48
"""Bytes a chunk file holds after its data (:data:`npyfeed.storage.cache.directory.TRAILER`)."""


@dataclass(frozen=True)
class CacheOptions:
    """Where the cache lives, how large it may grow, and the size of its chunks."""

    directory: str
    size: int
    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    def __post_init__(self) -> None:
        if self.size < self.chunk_bytes + TRAILER_BYTES:
            raise ConfigError(
                f"storage_options['cache_size'] is {self.size} bytes, smaller than one chunk "
                f"(storage_options['cache_chunk_bytes'] = {self.chunk_bytes} bytes): nothing could be cached; it must "
                f"be at least {self.chunk_bytes + TRAILER_BYTES} bytes"
            )


def split_cache_options(storage_options: Mapping[str, Any] | None) -> tuple[CacheOptions | None, dict[str, Any]]:
    """The cache's options (None without ``cache_dir``) and the remaining store options."""
    options = dict(storage_options or {})
    mine = {k: options.pop(k) for k in CACHE_KEYS if k in options}
    if not mine:
        return None, options
    directory = mine.get("cache_dir")
    if directory is None or not isinstance(directory, str | os.PathLike) or not os.fspath(directory):
        raise ConfigError(
            f"storage_options['cache_dir'] must be a directory path when cache options are given, got {directory!r}"
        )
    directory = str(Path(os.fspath(directory)).expanduser().absolute())
    chunk = arguments.size("storage_options['cache_chunk_bytes']", mine.get("cache_chunk_bytes", DEFAULT_CHUNK_BYTES))
    if not MIN_CHUNK_BYTES <= chunk <= MAX_CHUNK_BYTES:
        raise ConfigError(
            f"storage_options['cache_chunk_bytes'] = {mine['cache_chunk_bytes']!r} ({chunk} bytes) is out of bounds: "
            f"it must be between {MIN_CHUNK_BYTES} (64 KiB) and {MAX_CHUNK_BYTES} (1 GiB) bytes"
        )
    if "cache_size" in mine:
        size = arguments.size("storage_options['cache_size']", mine["cache_size"])
    else:
        size = _default_size(directory)
    return CacheOptions(directory, size, chunk), options


_default_sizes: dict[str, int] = {}


def _default_size(directory: str) -> int:
    """Half of the free space of the filesystem holding ``directory`` plus what the cache already holds there:
    the same limit for every object of a process (and for later jobs), however full the cache is."""
    if directory not in _default_sizes:
        probe = Path(directory)
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        try:
            held = int((Path(directory) / ".used").read_text())
        except (OSError, ValueError):
            held = 0
        _default_sizes[directory] = max(1, (shutil.disk_usage(probe).free + held) // 2)
    return _default_sizes[directory]
