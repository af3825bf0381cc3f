"""CPU cores a runner used during its timed window, and cores other processes used meanwhile.

The first says how much of the machine a loader needs for its rate; the second flags a measurement disturbed by
something else running (the machine is shared while the library is being written).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from benchmarks.memory import process_tree

__all__ = ["CpuMeter", "machine_busy_s", "tree_cpu_s"]

_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds all cores spent running tasks since boot (user, nice, system, steal).

    Interrupt time is left out: it is mostly the completion of our own reads, not another process's work.
    """
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = fields[:8]
    return (user + nice + system + steal) / _TICK


def _process_cpu_s(pid: int, reaped_children: bool) -> float:
    """utime + stime of ``pid`` (+ cutime + cstime: children it has already waited for)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = [int(v) for v in text.rsplit(")", 1)[1].split()[11:15]]  # the name, in parentheses, may hold spaces
    return sum(fields if reaped_children else fields[:2]) / _TICK


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used by ``pid``, its live descendants, and the children it reaped (exited workers)."""
    tree = process_tree(pid)
    return _process_cpu_s(pid, True) + sum(_process_cpu_s(p, False) for p in tree[1:])


class CpuMeter:
    """``start()`` then ``stop()`` returns ``(cores used by this process tree, cores used by everything else)``."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._t = self._own = self._busy = 0.0

    def start(self) -> None:
        self._t, self._own, self._busy = time.perf_counter(), tree_cpu_s(self.pid), machine_busy_s()

    def stop(self) -> tuple[float, float]:
        wall = time.perf_counter() - self._t
        own = tree_cpu_s(self.pid) - self._own
        other = machine_busy_s() - self._busy - own
        return (own / wall, max(0.0, other) / wall) if wall > 0 else (0.0, 0.0)
