"""Python calls made on TensorFlow's threads (``tf.numpy_function``), drained before the interpreter shuts down.

Why: once interpreter finalization begins, Python makes any other thread that tries to take the GIL exit on the
spot (``PyThread_exit_thread``; newer Pythons block it forever instead). A ``tf.data`` iterator still referenced
at exit (a script that ends, raises, or gets a ``KeyboardInterrupt`` while ``it = iter(ds)`` is alive) keeps its
``numpy_function`` calls running on tf.data's threads. A call that needs the GIL after that point never
completes, and the iterator's destructor, run when the main module's globals are cleared, waits for it forever
(``ParallelMapDatasetOp::Iterator::~Iterator``), or the unwinding of the killed thread aborts the process
(``terminate called without an active exception``).

So every call passes through one :class:`Gate`. An ``atexit`` handler (``atexit`` runs before finalization,
while threads can still take the GIL) closes it and waits until no call is in flight and none has arrived for a
short while: calls arriving after that fail at once, tf.data's buffers fill with those errors and it starts no
more calls, so the iterator's destructor has nothing to wait for. The wait is bounded by the slowest call in
flight (one read, or one transform) plus the quiet period.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from npyfeed.errors import NpyfeedError

__all__ = ["GATE", "Gate", "InterpreterExiting"]

T = TypeVar("T")

_QUIET_S = 0.2  # no call for this long after closing: tf.data's buffers are full and it has stopped calling
_MAX_WAIT_S = 60.0  # give up waiting (a call stuck in user code must not turn an exit into a hang of our own)


class InterpreterExiting(NpyfeedError, RuntimeError):
    """A read was asked for after the interpreter began to exit; nothing will consume it."""


class Gate:
    """Counts calls in flight; once closed, refuses new ones and lets :meth:`drain` wait for the rest."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._closed = False
        self._last_call = 0.0
        self._installed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, counted as in flight; :class:`InterpreterExiting` once the gate is closed."""
        with self._cond:
            self._last_call = time.monotonic()
            if self._closed:
                raise InterpreterExiting("npyfeed: the interpreter is exiting; no more batches are read")
            self._active += 1
        try:
            return fn(*args)
        finally:
            with self._cond:
                self._active -= 1
                self._last_call = time.monotonic()
                self._cond.notify_all()

    def install(self) -> None:
        """Drain at interpreter exit. Called once TensorFlow is imported, so this runs before its own handlers."""
        with self._cond:
            if not self._installed:
                self._installed = True
                atexit.register(self.drain)

    def drain(self, quiet: float = _QUIET_S, timeout: float = _MAX_WAIT_S) -> bool:
        """Close the gate and wait until no call is in flight or arrives for ``quiet`` seconds (``False``: gave up)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return False
                if self._active == 0:
                    idle = now - self._last_call
                    if idle >= quiet:
                        return True
                    self._cond.wait(min(quiet - idle, deadline - now))
                else:
                    self._cond.wait(deadline - now)


GATE = Gate()
