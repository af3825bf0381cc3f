"""The local cache's settings in ``storage_options``: ``cache_dir``, ``cache_size``, ``cache_chunk_bytes``.

``split_cache_options`` takes them out of ``storage_options`` (the rest configures the store) and validates them
once, where they enter: sizes are ints or strings such as ``"20GB"`` (10^9) or ``"512MiB"`` (2^20), within
bounds (:data:`MIN_CHUNK_BYTES`, :data:`MAX_CHUNK_BYTES`; a cache of at least one chunk), and a bad one is a
:class:`~npyfeed.ConfigError` naming the key, the value and the bound. ``cache_dir`` may start with ``~``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npyfeed.errors import ConfigError

__all__ = [
    "CACHE_KEYS",
    "DEFAULT_CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    "MIN_CHUNK_BYTES",
    "TRAILER_BYTES",
    "CacheOptions",
    "parse_size",
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

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object, field: str) -> int:
    """Bytes from an int or a string such as ``"20GB"`` (10^9), ``"1.5GiB"`` (2^30) or ``"512MiB"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        result = value
    elif isinstance(value, str) and (match := _SIZE.match(value)) and match.group(2).lower() in _UNITS:
        result = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    else:
        raise ConfigError(
            f"storage_options[{field!r}] must be a number of bytes (an int, or a string like '20GB', '512MiB'), "
            f"got {value!r}"
        )
    if result < 1:
        raise ConfigError(f"storage_options[{field!r}] must be at least 1 byte, got {value!r}")
    return result


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
    chunk = parse_size(mine.get("cache_chunk_bytes", DEFAULT_CHUNK_BYTES), "cache_chunk_bytes")
    if not MIN_CHUNK_BYTES <= chunk <= MAX_CHUNK_BYTES:
        raise ConfigError(
            f"storage_options['cache_chunk_bytes'] = {mine['cache_chunk_bytes']!r} ({chunk} bytes) is out of bounds: "
            f"it must be between {MIN_CHUNK_BYTES} (64 KiB) and {MAX_CHUNK_BYTES} (1 GiB) bytes"
        )
    size = parse_size(mine["cache_size"], "cache_size") if "cache_size" in mine else _default_size(directory)
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
