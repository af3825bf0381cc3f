"""Background reads stop within seconds when nobody waits for them, and nothing leaks across epochs.

The slow cases use a 50 ms/batch transform with small batches (64 per read task): before the fix, exit and
``break`` waited for whole 64-batch tasks (6.4 s at 100 ms/batch).
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from npyfeed import Loader

SLOW = 0.05
N = 20_000  # rows of ids.npy


class Counting:
    """A slow transform that records when each call started and counts those finished (it runs on several threads
    at once: list.append is atomic, ``+= 1`` is not)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.started: list[float] = []
        self.finished: list[float] = []

    @property
    def calls(self) -> int:
        return len(self.finished)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.started.append(time.monotonic())
        time.sleep(self.delay)
        self.finished.append(time.monotonic())
        return batch


def settles(transform: Counting, within: float) -> int:
    """Calls made once no new call started for 4 delays in a row; fails if that takes longer than ``within``."""
    deadline = time.monotonic() + within
    last, since = transform.calls, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(SLOW)
        if transform.calls != last:
            last, since = transform.calls, time.monotonic()
        elif time.monotonic() - since > 4 * SLOW:
            return last
    raise AssertionError(f"the transform still runs {within} s after the consumer left ({transform.calls} calls)")


@pytest.mark.parametrize("how", ["break", "del", "gc", "close"])
def test_background_work_stops_when_the_consumer_leaves(ids_path: str, how: str) -> None:
    transform = Counting(SLOW)
    loader = Loader(ids_path, batch_size=10, transform=transform, num_threads=2)
    assert loader.batches_per_read == 64
    it = iter(loader)
    for _ in range(3):
        next(it)
    if how == "break":
        it.close()  # what a for loop's break does to a generator it drops
    elif how == "del":
        del it
    elif how == "gc":
        cycle: list[object] = [it]
        cycle.append(cycle)
        del it, cycle
        gc.collect()
    else:
        loader.close()
    left = time.monotonic()
    settled = settles(transform, within=3.0)
    # Transforms running when the consumer left finish, and a thread already past its check of the stop may still
    # start one (one per thread at most); nothing after that, never the rest of a read's 64 batches. (Counted from
    # when the consumer left: transforms of different batches run in parallel while it takes its first batches.)
    late = sum(t > left for t in transform.started)
    assert late <= loader.io_threads, (late, settled)
    if how != "close":
        loader.close()


CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import npyfeed

    def slow(batch):
        time.sleep(float(sys.argv[2]))
        return batch

    loader = npyfeed.Loader(sys.argv[1], batch_size=10, transform=slow)
    it = iter(loader)
    for _ in range(3):
        next(it)
    print("ready", flush=True)
    if sys.argv[3] == "exit":
        sys.exit(0)
    for batch in it:
        pass
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["exit", "sigint"])
def test_exit_and_ctrl_c_mid_epoch_do_not_wait_for_whole_read_tasks(ids_path: str, how: str) -> None:
    delay = 0.1
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, ids_path, str(delay), how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as child:
        try:
            assert child.stdout is not None and child.stderr is not None
            assert child.stdout.readline().strip() == b"ready"
            start = time.monotonic()
            if how == "sigint":
                time.sleep(0.2)
                child.send_signal(signal.SIGINT)
            rc = child.wait(timeout=30)
            elapsed = time.monotonic() - start
            stderr = child.stderr.read().decode()
        finally:
            child.kill()
    if how == "sigint":
        assert rc != 0 and "KeyboardInterrupt" in stderr, stderr
    else:
        assert rc == 0, stderr
    # A 64-batch read task takes 6.4 s here; a whole-task wait would show. Margin for a loaded machine.
    assert elapsed < 2.5, f"took {elapsed:.1f} s to exit"


def rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) << 10
    return 0


def npyfeed_threads_since(before: set[threading.Thread]) -> list[threading.Thread]:
    """npyfeed's threads (named ``npyfeed*``) started since ``before`` and still alive: never other tests' threads."""
    return [t for t in threading.enumerate() if t.name.startswith("npyfeed") and t not in before]


@pytest.mark.slow
@pytest.mark.parametrize("shuffle", [False, True])
def test_1000_partially_consumed_epochs_leak_no_threads_and_no_memory(ids_path: str, shuffle: bool) -> None:
    before = set(threading.enumerate())  # threads of earlier tests may end meanwhile: only new ones count
    loader = Loader(ids_path, batch_size=16, shuffle=shuffle, seed=0)

    def partial_epochs(count: int) -> None:
        for epoch in range(count):
            it = iter(loader)
            for _ in range(1 + epoch % 3):
                next(it)
            del it

    partial_epochs(50)  # the pool's threads, buffers and allocator arenas reach their steady state
    gc.collect()
    time.sleep(0.3)
    threads, anon = len(npyfeed_threads_since(before)), rss_anon()
    partial_epochs(1000)
    gc.collect()
    time.sleep(0.3)
    grown = rss_anon() - anon
    now = len(npyfeed_threads_since(before))
    print(f"\nnpyfeed threads {threads} -> {now}, anonymous memory {grown / 2**20:+.1f} MiB")
    # The pool starts a thread per read until it has io_threads; none more, however many epochs were left.
    assert now <= max(threads, loader.io_threads)
    assert grown < 8 << 20, f"anonymous memory grew by {grown >> 20} MiB over 1000 partial epochs"
    assert loader.epoch == 1050
    loader.close()
    deadline = time.monotonic() + 10  # close() asks the pool's threads to end; they end within a read
    while npyfeed_threads_since(before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert npyfeed_threads_since(before) == []
