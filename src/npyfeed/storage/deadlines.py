"""When a read must end: ``deadline`` seconds after it began, however its requests were queued or retried, or as
soon as nobody waits for it any more.

A caller that reads on behalf of someone waiting (the Loader's read of the batches its consumer asks for) opens a
:func:`read_scope`; every request made inside it, on that thread, to any store ends by the scope's start plus that
store's ``deadline`` (:func:`ends_at`), so a read of several windows and columns shares one deadline instead of
taking one each. Outside a scope a request's deadline counts from when it is made.

A scope may carry a :class:`Stop`: the event its reader sets when the consumer leaves (a ``break``, a dropped
iterator). Setting it cancels the requests made in the scope that are still queued or running, read-ahead
included, at once: nothing keeps downloading for a consumer that is gone. Work done later on another thread for
that read (the chunk cache's read-ahead jobs) carries its Stop there with :func:`stopped_by`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

__all__ = ["Stop", "current_stop", "ends_at", "read_scope", "stopped_by"]

_started: ContextVar[float | None] = ContextVar("npyfeed_read_started", default=None)
_stop: ContextVar[Stop | None] = ContextVar("npyfeed_read_stop", default=None)


class Stop(threading.Event):
    """An event that, once set, calls what was registered with it (``cancel`` of the requests of a read whose
    consumer left); registered callbacks are dropped when their request ends, so a long epoch holds none."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: dict[int, Callable[[], object]] = {}
        self._next = 0
        self._callbacks_lock = threading.Lock()

    def set(self) -> None:
        super().set()
        with self._callbacks_lock:
            callbacks, self._callbacks = list(self._callbacks.values()), {}
        for callback in callbacks:
            callback()

    def on_set(self, callback: Callable[[], object]) -> int:
        """Call ``callback`` when the event is set (now, if it already is); the handle for :meth:`discard`."""
        with self._callbacks_lock:
            if not self.is_set():
                self._next += 1
                self._callbacks[self._next] = callback
                return self._next
        callback()
        return 0

    def discard(self, handle: int) -> None:
        """Forget a callback (its request ended)."""
        with self._callbacks_lock:
            self._callbacks.pop(handle, None)


@contextlib.contextmanager
def read_scope(stop: Stop | None = None) -> Iterator[None]:
    """Requests made inside share one deadline, counted from now, and are cancelled when ``stop`` is set (an
    enclosing scope keeps its own start and stop)."""
    if _started.get() is not None:
        yield
        return
    token = _started.set(time.monotonic())
    stop_token = _stop.set(stop)
    try:
        yield
    finally:
        _stop.reset(stop_token)
        _started.reset(token)


@contextlib.contextmanager
def stopped_by(stop: Stop | None) -> Iterator[None]:
    """Requests made inside are cancelled when ``stop`` is set (the Stop of the read that asked for this work on
    another thread, e.g. a read-ahead job); their deadlines count as outside a scope, from when each is made."""
    token = _stop.set(stop)
    try:
        yield
    finally:
        _stop.reset(token)


def ends_at(deadline: float) -> float:
    """The ``time.monotonic()`` by which a request made now must end, for a store whose deadline is ``deadline``."""
    started = _started.get()
    return (time.monotonic() if started is None else started) + deadline


def current_stop() -> Stop | None:
    """The :class:`Stop` of the read this thread is in, if any."""
    return _stop.get()
