"""Real cgroup-v1 memory caps for the tests that read or convert files larger than the memory they may use.

:func:`memory_cap` makes a uniquely named group under ``/sys/fs/cgroup/memory`` with a limit (swap capped too,
where swap is accounted), yields its folder, and removes it afterwards: a child process joins it by writing its
pid to ``<group>/cgroup.procs``. Without root or a v1 memory controller, the test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CGROUP_ROOT", "memory_cap", "oom_kills", "peak_usage"]

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


@contextlib.contextmanager
def memory_cap(limit: int, name: str = "test") -> Iterator[Path]:
    """A memory cgroup capped at ``limit`` bytes for the duration of the block (removed even when the block fails)."""
    import pytest

    if os.geteuid() != 0 or not (CGROUP_ROOT / "memory.limit_in_bytes").exists():
        pytest.skip("needs root and a cgroup-v1 memory controller at /sys/fs/cgroup/memory")
    group = CGROUP_ROOT / f"npyfeed-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit))
    except OSError as e:
        with contextlib.suppress(OSError):
            group.rmdir()
        pytest.skip(f"cannot create a memory cgroup ({e})")
    swap = group / "memory.memsw.limit_in_bytes"
    if swap.exists():
        with contextlib.suppress(OSError):  # no swap accounting: nothing to cap
            swap.write_text(str(limit))
    try:
        yield group
    finally:
        _remove(group)


def peak_usage(group: Path) -> int:
    """The most memory the group was ever charged (bytes)."""
    return int((group / "memory.max_usage_in_bytes").read_text())


def oom_kills(group: Path) -> int:
    """How many processes the kernel OOM-killed in the group."""
    for line in (group / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def _remove(group: Path) -> None:
    """Move any process left in the group to the root group, then remove it (retried: an exiting child lingers)."""
    for _ in range(50):
        with contextlib.suppress(OSError):
            for pid in (group / "cgroup.procs").read_text().split():
                (CGROUP_ROOT / "cgroup.procs").write_text(pid)
            group.rmdir()
            return
        time.sleep(0.1)
