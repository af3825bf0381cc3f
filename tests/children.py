"""One epoch of a Loader in a child process (fork or spawn), for the tests of what a worker inherits."""

from __future__ import annotations

import multiprocessing
import queue
from typing import Any

import numpy as np
import pytest

import npyfeed

__all__ = ["epoch_in_child"]


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
