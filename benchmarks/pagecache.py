"""Put files in the page cache (warm runs) or take everything out of it (cold runs, root only)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["can_drop_caches", "drop_caches", "warm"]

_DROP = Path("/proc/sys/vm/drop_caches")


def can_drop_caches() -> str | None:
    """None if :func:`drop_caches` will work, else the reason it will not."""
    if os.geteuid() != 0:
        return "cold runs need root (to write /proc/sys/vm/drop_caches)"
    if not _DROP.exists():
        return f"{_DROP} not found"
    return None


def drop_caches() -> None:
    """Write back dirty pages, then drop the page cache, dentries and inodes."""
    os.sync()
    _DROP.write_text("3\n")


def warm(paths: list[str], block_bytes: int = 8 << 20) -> None:
    """Read each file once so its pages are cached (they stay: the data is far smaller than RAM)."""
    buf = memoryview(bytearray(block_bytes))
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            while os.readv(fd, [buf]):
                pass
        finally:
            os.close(fd)
