"""What the machine offers: cores, and the memory this process may still use (container limits included).

Memory is what the kernel would let us add before it reclaims our own working set or kills us: the smallest of
``MemAvailable`` and, for every memory cgroup level above this process (cgroup v1 or v2, found through
``/proc/self/mountinfo`` so hybrid hierarchies work), its limit minus what it holds that cannot be reclaimed.
Page cache (``active_file`` + ``inactive_file``) is not counted as used: the kernel drops it under the limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CgroupMemory", "available_memory", "cgroup_memory", "cpu_count"]

_UNLIMITED = 1 << 60  # v1 reports "no limit" as a huge page-rounded number; v2 writes "max"


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class CgroupMemory:
    """One memory cgroup level: where it is, its limit and its usage, in bytes."""

    path: Path
    version: int  # 1 or 2
    limit: int
    usage: int
    reclaimable: int  # page cache the kernel can drop to stay under the limit

    @property
    def room(self) -> int:
        """Bytes this group can still take without reclaiming anything but page cache."""
        return max(0, self.limit - (self.usage - self.reclaimable))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return _UNLIMITED
    return int(text) if text.isdigit() else None


def _stat(path: Path) -> dict[str, int]:
    fields: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            fields[name] = int(value)
    return fields


def _mounts(proc: Path) -> list[tuple[str, Path, str, set[str]]]:
    """``(root, mount point, fs type, super options)`` of every cgroup mount, from ``mountinfo``."""
    found = []
    for line in (_read(proc / "self" / "mountinfo") or "").splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or not tail[0].startswith("cgroup"):
            continue
        found.append((fields[3], Path(fields[4]), tail[0], set(tail[2].split(","))))
    return found


def _level(path: Path, version: int) -> CgroupMemory | None:
    if version == 1:
        limit, usage = _int(path / "memory.limit_in_bytes"), _int(path / "memory.usage_in_bytes")
        stat = _stat(path / "memory.stat")
        cache = stat.get("total_active_file", stat.get("active_file", 0))
        cache += stat.get("total_inactive_file", stat.get("inactive_file", 0))
    else:
        limit, usage = _int(path / "memory.max"), _int(path / "memory.current")
        stat = _stat(path / "memory.stat")
        cache = stat.get("active_file", 0) + stat.get("inactive_file", 0)
    if limit is None or usage is None or limit >= _UNLIMITED:
        return None
    return CgroupMemory(path, version, limit, usage, min(cache, usage))


def cgroup_memory(proc: Path = Path("/proc")) -> list[CgroupMemory]:
    """Every memory-limited cgroup level this process is in, innermost first (v1 and v2; empty without one)."""
    mounts = _mounts(proc)
    levels: list[CgroupMemory] = []
    for line in (_read(proc / "self" / "cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, group = parts
        version = 2 if controllers == "" else 1
        if version == 1 and "memory" not in controllers.split(","):
            continue
        for root, point, fstype, options in mounts:
            if (version == 2) != (fstype == "cgroup2") or (version == 1 and "memory" not in options):
                continue
            rel = os.path.relpath(group, root) if group.startswith(root) else None
            if rel is None or rel.startswith(".."):
                continue
            here = (point / rel).resolve() if rel != "." else point
            while True:  # up to the mount point: any level may hold the tightest limit
                level = _level(here, version)
                if level is not None:
                    levels.append(level)
                if here == point or point not in here.parents:
                    break
                here = here.parent
            break
    return levels


def _meminfo_available(proc: Path) -> int | None:
    for line in (_read(proc / "meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def available_memory(proc: Path = Path("/proc")) -> int:
    """Bytes this process can still add (page cache included) before the machine or its container is full."""
    candidates = [level.room for level in cgroup_memory(proc)]
    meminfo = _meminfo_available(proc)
    if meminfo is not None:
        candidates.append(meminfo)
    return min(candidates) if candidates else 1 << 62
