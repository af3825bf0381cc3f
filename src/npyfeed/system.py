"""What the machine offers: cores and the memory this process may use (cgroup limits included)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["available_memory", "cpu_count"]


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_limit() -> int | None:
    """This process's cgroup memory limit in bytes (v1 or v2), or None without one.

    The limit, not limit minus usage: usage counts page cache, which the kernel reclaims under the limit.
    """
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        rel = rel.lstrip("/")
        if controllers == "":  # cgroup v2
            base = Path("/sys/fs/cgroup") / rel
            limit = _read_int(base / "memory.max")
        elif "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / rel
            limit = _read_int(base / "memory.limit_in_bytes")
        else:
            continue
        if limit is not None and limit < 1 << 60:
            return limit
    return None


def available_memory() -> int:
    """Memory this process can use, page cache included: the smaller of available RAM and its cgroup limit."""
    meminfo = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                meminfo = int(line.split()[1]) * 1024
                break
    except OSError:
        meminfo = 0
    room = _cgroup_limit()
    candidates = [m for m in (meminfo or None, room) if m is not None]
    return min(candidates) if candidates else 1 << 62
