"""Peak anonymous memory of a process tree, sampled on a background thread.

We sum ``RssAnon`` (from ``/proc/<pid>/status``) over the process and its descendants, so worker processes
(torch ``DataLoader``, Keras multiprocessing) count too. ``RssAnon`` excludes the page cache and file-backed
mappings (a memmap's pages are ``RssFile``), and also shared memory (``RssShmem``, which torch uses to hand
batches from workers to the parent): it is the memory a loader itself allocates.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import TracebackType

__all__ = ["PeakAnonSampler", "rss_anon_bytes", "process_tree"]

_TREE_REFRESH_S = 0.25  # re-list descendants this often; reading the status of known pids is cheaper


def rss_anon_bytes(pid: int) -> int:
    """``RssAnon`` of one process in bytes (0 if it has exited)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``, gathered from every thread (a pool may be forked from any thread)."""
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            kids += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
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
    """Context manager: ``baseline`` on entry, then the peak of the tree's ``RssAnon`` until exit."""

    def __init__(self, interval_s: float = 0.01, pid: int | None = None) -> None:
        self.interval_s = interval_s
        self.pid = os.getpid() if pid is None else pid
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="anon-sampler", daemon=True)

    def sample(self, pids: list[int]) -> int:
        """One sample: the sum over ``pids``; also raises the recorded peak."""
        value = sum(rss_anon_bytes(p) for p in pids)
        self.peak = max(self.peak, value)
        return value

    def _run(self) -> None:
        pids, listed_at = process_tree(self.pid), time.monotonic()
        while not self._stop.wait(self.interval_s):
            if time.monotonic() - listed_at > _TREE_REFRESH_S:
                pids, listed_at = process_tree(self.pid), time.monotonic()
            self.sample(pids)

    def __enter__(self) -> PeakAnonSampler:
        self.baseline = self.sample(process_tree(self.pid))
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.sample(process_tree(self.pid))
        self._stop.set()
        self._thread.join()

    @property
    def peak_above_baseline(self) -> int:
        """Peak minus the baseline taken on entry, in bytes."""
        return max(0, self.peak - self.baseline)
