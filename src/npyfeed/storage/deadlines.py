"""When a read must end: ``deadline`` seconds after it began, however its requests were queued or retried.

A caller that reads on behalf of someone waiting (the Loader's read of the batches its consumer asks for) opens a
:func:`read_scope`; every request made inside it, on that thread, to any store ends by the scope's start plus that
store's ``deadline`` (:func:`ends_at`), so a read of several windows and columns shares one deadline instead of
taking one each. Outside a scope a request's deadline counts from when it is made.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["ends_at", "read_scope"]

_started: ContextVar[float | None] = ContextVar("npyfeed_read_started", default=None)


@contextlib.contextmanager
def read_scope() -> Iterator[None]:
    """Requests made inside share one deadline, counted from now (an enclosing scope keeps its own start)."""
    if _started.get() is not None:
        yield
        return
    token = _started.set(time.monotonic())
    try:
        yield
    finally:
        _started.reset(token)


def ends_at(deadline: float) -> float:
    """The ``time.monotonic()`` by which a request made now must end, for a store whose deadline is ``deadline``."""
    started = _started.get()
    return (time.monotonic() if started is None else started) + deadline
