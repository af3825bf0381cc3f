"""Loaders in child processes (fork or spawn): one epoch, for the tests of what a worker inherits; several ranks at
once, for the tests of distributed runs."""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import npyfeed

__all__ = ["epoch_in_child", "run_ranks"]


def _child_epoch(loader: npyfeed.Loader, results: Any) -> None:
    try:
        results.put(("ok", np.concatenate(list(loader))))
    except BaseException as e:  # reported to the parent, which checks it
        results.put((type(e).__name__, str(e)))


def epoch_in_child(method: str, loader: npyfeed.Loader, timeout: float = 60.0) -> tuple[str, Any]:
    """One epoch of ``loader`` in a child started by ``method``: ``("ok", rows)`` or ``(error type, message)``.
    A child that does not answer within ``timeout`` seconds fails the test (and is killed)."""
    ctx = multiprocessing.get_context(method)
    results = ctx.Queue()
    child = ctx.Process(target=_child_epoch, args=(loader, results))
    child.start()
    try:
        return results.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"an epoch in a {method} child did not end within {timeout:g} s")
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()


def run_ranks(
    target: Callable[..., None], count: int, *args: Any, method: str = "spawn", timeout: float = 120.0
) -> None:
    """Run ``target(rank, count, *args)`` in ``count`` child processes at once (ranks ``0 .. count - 1``); each must
    exit with status 0 within ``timeout`` seconds (all together), or the test fails and the rest are killed."""
    ctx = multiprocessing.get_context(method)
    children = [ctx.Process(target=target, args=(rank, count, *args)) for rank in range(count)]
    for child in children:
        child.start()
    deadline = time.monotonic() + timeout
    try:
        for rank, child in enumerate(children):
            child.join(timeout=max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                pytest.fail(f"rank {rank} of {count} did not end within {timeout:g} s")
            assert child.exitcode == 0, f"rank {rank} of {count} exited with status {child.exitcode}"
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join(timeout=10)
