"""Where requests to object stores run: one asyncio loop per process on a daemon thread, and per store at most
``max_concurrency`` requests in flight, reads someone waits for served before read-ahead."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections import deque
from collections.abc import AsyncIterator

__all__ = ["Loop", "Slots"]


class Loop:
    """One asyncio event loop on a daemon thread, per process (recreated in a forked child)."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _pid = -1

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="npyfeed-remote", daemon=True).start()
                cls._loop, cls._pid = loop, os.getpid()
            return cls._loop


class Slots:
    """At most ``n`` requests in flight to a store; a freed slot goes to a waiting read someone waits for before
    any read-ahead. Used on the loop thread only."""

    def __init__(self, n: int) -> None:
        self._free = n
        self._waiting: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (deque(), deque())

    @contextlib.asynccontextmanager
    async def hold(self, background: bool) -> AsyncIterator[None]:
        await self._acquire(background)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, background: bool) -> None:
        if self._free:  # free slots exist only while nobody waits
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting[background]
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot just as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):  # not already skipped over by a release
                    queue.remove(waiter)
            raise

    def _release(self) -> None:
        for queue in self._waiting:
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1
