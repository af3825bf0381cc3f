"""A cgroup-v1 memory cap for one benchmark process (needs root).

The cap counts anonymous memory *and* page cache charged to the group, so a 256 MiB cap on a 1 GiB file means
at most ~256 MiB of the file can be cached: shuffled reads must mostly come from the device.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from types import TracebackType

__all__ = ["CGROUP_ROOT", "MemoryCgroup", "cgroup_available"]

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
_serial = itertools.count()  # a fresh group per run: a group whose processes linger cannot be removed at once


def cgroup_available() -> str | None:
    """None if a memory cgroup can be made here, else the reason why not."""
    if os.geteuid() != 0:
        return "needs root"
    if not (CGROUP_ROOT / "memory.limit_in_bytes").exists():
        return f"no cgroup-v1 memory controller at {CGROUP_ROOT}"
    return None


class MemoryCgroup:
    """A child memory cgroup with a hard limit; ``wrap(cmd)`` runs a command inside it from its first byte."""

    def __init__(self, name: str, limit_bytes: int) -> None:
        self.path = CGROUP_ROOT / f"{name}-{os.getpid()}-{next(_serial)}"
        self.limit_bytes = limit_bytes

    def _read_int(self, name: str) -> int:
        return int((self.path / name).read_text().split()[0])

    def __enter__(self) -> MemoryCgroup:
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(self.limit_bytes))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # The group can only be removed once its processes are gone; they normally are when we get here.
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)

    def wrap(self, cmd: list[str]) -> list[str]:
        """``cmd`` prefixed by a shell that joins the group and then ``exec``s it, so nothing runs outside."""
        join = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
        return ["/bin/sh", "-c", join, str(self.path), *cmd]

    @property
    def max_usage_bytes(self) -> int:
        """Peak memory charged to the group (anonymous + page cache)."""
        return self._read_int("memory.max_usage_in_bytes")

    @property
    def oom_kills(self) -> int:
        """Processes the kernel killed for hitting the cap (0 if the kernel does not report it)."""
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0
