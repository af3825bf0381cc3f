"""Peak anonymous memory of a runner process and its workers, sampled on a background thread.

What is counted: ``RssAnon`` of the runner process (``/proc/self/status``: heap, arenas, NumPy buffers; not the
page cache nor a memmap's file pages, which are ``RssFile``), plus, for each descendant process (torch
``DataLoader`` or Keras multiprocessing workers), its ``Private_Dirty`` bytes from ``/proc/<pid>/smaps_rollup``:
the memory it allocated or copied after ``fork``. Pages still shared copy-on-write with the parent are thus
counted once, not once per worker (summing ``RssAnon`` over forked workers would count TF's 180 MB three times).
Shared memory (``RssShmem``, which torch uses to pass batches from workers) is not counted.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

__all__ = ["PeakAnonSampler", "private_dirty_bytes", "process_tree", "rss_anon_bytes"]

# Workers are sampled (and re-listed) 5x less often than the runner: smaps_rollup walks the page tables, which
# costs ~2 ms for a process with a big memmap resident, and takes its mmap lock.
_WORKER_EVERY = 5


def _proc_field(path: str, name: str) -> int:
    """A ``Name:  123 kB`` field of a /proc file, in bytes (0 if the process has exited)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(name):
            return int(line.split()[1]) * 1024
    return 0


def rss_anon_bytes(pid: int) -> int:
    """``RssAnon`` of one process in bytes."""
    return _proc_field(f"/proc/{pid}/status", "RssAnon:")


def private_dirty_bytes(pid: int) -> int:
    """Pages one process wrote that nobody else maps: for a forked worker, what it added to memory."""
    return _proc_field(f"/proc/{pid}/smaps_rollup", "Private_Dirty:")


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, gathered from every thread (a pool may be forked from any thread)."""
    kids: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return kids
    for task in tasks:
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += _children(p)
    return tree


class PeakAnonSampler:
    """Context manager: ``baseline`` on entry, then the peak of (runner + workers) anonymous memory until exit."""

    def __init__(self, interval_s: float = 0.01, pid: int | None = None) -> None:
        self.interval_s = interval_s
        self.pid = os.getpid() if pid is None else pid
        self.baseline = 0
        self.peak = 0
        self._workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="anon-sampler", daemon=True)

    def _sample_workers(self) -> None:
        self._workers = sum(private_dirty_bytes(p) for p in process_tree(self.pid)[1:])

    def sample(self) -> int:
        """One sample of the runner (workers as last sampled); also raises the recorded peak."""
        value = rss_anon_bytes(self.pid) + self._workers
        self.peak = max(self.peak, value)
        return value

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(self.interval_s):
            if tick % _WORKER_EVERY == 0:
                self._sample_workers()
            self.sample()
            tick += 1

    def __enter__(self) -> PeakAnonSampler:
        self._sample_workers()
        self.baseline = self.sample()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_workers()
        self.sample()

    @property
    def peak_above_baseline(self) -> int:
        """Peak minus the baseline taken on entry, in bytes."""
        return max(0, self.peak - self.baseline)
