"""The process's chunk read-ahead: a queue of jobs (chunks a Loader will need) served by a few daemon threads.

Started on first use, and again in a forked child (which inherits the queue but not its threads). A job is only a
hint: it never raises; the gather that needs its chunks fetches them itself and reports errors.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

__all__ = ["JOB_BYTES", "submit"]

_THREADS = 2
JOB_BYTES = 32 << 20
"""Bytes of chunks one job fetches together (its requests in flight at once)."""
_queues: dict[int, queue.SimpleQueue[Callable[[], None]]] = {}
_lock = threading.Lock()


def submit(job: Callable[[], None]) -> None:
    """Run ``job`` on one of the process's read-ahead threads."""
    with _lock:
        jobs = _queues.get(os.getpid())
        if jobs is None:
            jobs = _queues[os.getpid()] = queue.SimpleQueue()
            for _ in range(_THREADS):
                threading.Thread(target=_serve, args=(jobs,), name="npyfeed-cache-ahead", daemon=True).start()
    jobs.put(job)


def _serve(jobs: queue.SimpleQueue[Callable[[], None]]) -> None:
    while True:
        jobs.get()()
