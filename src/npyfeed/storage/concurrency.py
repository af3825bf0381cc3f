"""Where requests to object stores run: one asyncio loop per process on a daemon thread, coroutines on it that any
thread can wait for or cancel (:class:`Running`), and per store at most ``max_concurrency`` requests in flight,
reads someone waits for served before read-ahead, earlier reads before later ones."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Generic, TypeVar

__all__ = ["Loop", "Running", "Slots"]

T = TypeVar("T")


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
    any read-ahead, and among those to the one that must end first (the read that began first: a consumer's
    first batch is not queued behind the batches read ahead of it). Used on the loop thread only."""

    def __init__(self, n: int) -> None:
        self._free = n
        # Per kind (waited for, read-ahead): a heap of (end, arrival, waiter).
        self._waiting: tuple[list[tuple[float, int, asyncio.Future[None]]], ...] = ([], [])
        self._arrivals = itertools.count()

    @contextlib.asynccontextmanager
    async def hold(self, background: bool, end: float = 0.0) -> AsyncIterator[None]:
        await self._acquire(background, end)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, background: bool, end: float) -> None:
        if self._free:  # free slots exist only while nobody waits
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting[background], (end, next(self._arrivals), waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot just as it was cancelled: pass it on
            # else: left in the heap, done (cancelled): a release skips it
            raise

    def _release(self) -> None:
        for heap in self._waiting:
            while heap:
                waiter = heapq.heappop(heap)[2]
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1


class Running(Generic[T]):
    """The coroutine ``make()`` running on the process's loop, started from any thread.

    :attr:`future` completes only once the coroutine has ended, so a cancelled read (:meth:`cancel`) has stopped
    writing into its caller's buffers before its caller sees the cancellation; ``run_coroutine_threadsafe``'s
    future reports a cancellation at once, while the task may still be running.
    """

    def __init__(self, make: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self.future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._loop = Loop.get()
        self._task: asyncio.Task[T] | None = None
        self._cancelled = False
        self._loop.call_soon_threadsafe(self._start, make)

    def _start(self, make: Callable[[], Coroutine[Any, Any, T]]) -> None:
        if self._cancelled:  # cancelled before it began: no request was made
            self.future.cancel()
            return
        self._task = self._loop.create_task(make())
        self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            self.future.cancel()
        elif (error := task.exception()) is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(task.result())

    def cancel(self) -> None:
        """Cancel the coroutine (from any thread; nothing waits): its requests are dropped, queued ones never sent."""
        self._loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        self._cancelled = True
        if self._task is not None:
            self._task.cancel()
