"""An object's read-ahead without a cache: ranges fetched ahead of use into a bounded memory pool.

The Loader announces the blocks of each block-shuffle window before it reads them (``ObjectFile.will_need``), so
every block is downloaded once, in ``request_bytes`` pieces, however its rows are spread over batches; gathers
copy the records that lie in those pieces out of them. The pool holds at most ``prefetch_bytes``: a range not
read yet is never evicted for a later one, a range is let go once every record in it was read, and only ranges
the reads moved past make room. (With a ``cache_dir`` the chunk cache reads ahead instead:
:mod:`npyfeed.storage.cache.read_ahead`.)
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from npyfeed.storage.client import StoreClient
from npyfeed.storage.deadlines import ends_at
from npyfeed.storage.versions import ObjectVersion

__all__ = ["MIN_PREFETCH", "ObjectReadAhead"]

# Prefetched ranges smaller than this are left to the gathers (merged with their neighbours there).
MIN_PREFETCH = 64 << 10


class _Ahead:
    """A range fetched ahead of use: its download, the records copied out of it so far, and when it was last
    asked for or read from (in bytes the gathers had asked for by then: the pool's clock)."""

    __slots__ = ("active", "copied", "future")

    def __init__(self, future: concurrent.futures.Future[np.ndarray], now: int) -> None:
        self.future = future
        self.copied = 0
        self.active = now


class ObjectReadAhead:
    """The read-ahead pool of one object version (``key`` at ``version``, ``size`` bytes) in one process.

    Its methods take this process's client for the object's store (the object owns it). A forked child makes a
    new pool: the parent's futures would only be completed by the parent's threads.
    """

    def __init__(self, key: str, version: ObjectVersion, size: int) -> None:
        self._key = key
        self._version = version
        self._size = size
        self._lock = threading.Lock()
        # (start, end) -> ranges fetched ahead of use, oldest first; and the bytes gathers have asked for so far.
        self._ahead: OrderedDict[tuple[int, int], _Ahead] = OrderedDict()
        self._gathered = 0

    @property
    def pieces(self) -> list[tuple[int, int]]:
        """The byte ranges held or being fetched, oldest first."""
        with self._lock:
            return list(self._ahead)

    def will_need(self, client: StoreClient, ranges: Sequence[tuple[int, int]]) -> None:
        """Start fetching these byte ranges into the pool (bounded by ``prefetch_bytes``; never waits)."""
        step = client.options.request_bytes
        with self._lock:
            held = sum(b - a for a, b in self._ahead)
            asked: set[tuple[int, int]] = set()  # this call's pieces: never evicted by the call itself
            for start, end in ranges:
                start, end = max(0, start), min(end, self._size)
                if end - start < MIN_PREFETCH:
                    continue
                for a in range(start, end, step):
                    piece = (a, min(a + step, end))
                    asked.add(piece)
                    if piece in self._ahead:
                        self._ahead.move_to_end(piece)
                        self._ahead[piece].active = self._gathered
                        continue
                    size = piece[1] - piece[0]
                    while held + size > client.options.prefetch_bytes:
                        # A range not yet read is needed sooner than this later one: only stale ranges make room.
                        # When the pool is full of live ones (a hint larger than the pool, e.g. a whole object, or
                        # a consumer slower than its hints), the rest is fetched by the gathers, once.
                        stale = self._stale(asked, client.options.prefetch_bytes)
                        if stale is None:
                            return
                        self._ahead.pop(stale).future.cancel()  # not fetched if not started yet
                        held -= stale[1] - stale[0]
                    ends = time.monotonic() + client.options.deadline  # read-ahead: its own deadline, not a reader's
                    future = client.submit(functools.partial(self._fetch_piece, client, *piece, ends))
                    self._ahead[piece] = _Ahead(future, self._gathered)
                    held += size

    def _stale(self, asked: set[tuple[int, int]], prefetch_bytes: int) -> tuple[int, int] | None:
        """The oldest range fetched ahead that the reads have moved past: not asked for, nor read from, while the
        gathers asked for twice the pool's bytes (a consumer that left its epoch, a hint never followed)."""
        horizon = self._gathered - 2 * prefetch_bytes
        for piece, entry in self._ahead.items():
            if piece not in asked and entry.active < horizon:
                return piece
        return None

    async def _fetch_piece(self, client: StoreClient, start: int, end: int, ends: float) -> np.ndarray:
        buffer = np.empty(end - start, np.uint8)

        def sink(_: int, data: Any) -> None:
            buffer[:] = np.frombuffer(data, np.uint8)

        await client.fetch_async(self._key, self._version, [(start, end)], sink, ends, background=True)
        return buffer

    def count(self, nbytes: int) -> None:
        """Move the pool's clock: a gather asked for ``nbytes``."""
        with self._lock:
            self._gathered += nbytes

    def take(
        self, client: StoreClient, base: int, record_bytes: int, indices: np.ndarray, out2: np.ndarray
    ) -> np.ndarray | None:
        """Copy the records that lie inside fetched-ahead ranges; return the positions still to fetch (None: all)."""
        with self._lock:
            if not self._ahead:
                return None
            entries = [(piece, entry.future) for piece, entry in self._ahead.items()]
        offsets = base + indices * record_bytes
        todo = np.ones(indices.size, bool)
        hit = False
        ends = ends_at(client.options.deadline)  # this read's deadline: waiting for a read-ahead counts against it
        for (start, end), future in entries:
            lo = int(np.searchsorted(offsets, start, "left"))
            hi = int(np.searchsorted(offsets, end - record_bytes, "right"))
            if hi <= lo:
                continue
            try:
                buffer = future.result(timeout=max(0.0, ends - time.monotonic()))
            except TimeoutError:
                if future.done():
                    raise  # the read-ahead's own deadline passed: the server is not answering
                what = f"waiting for the read-ahead of bytes [{start}, {end})"
                raise client.timeout_error(self._key, what) from None
            except Exception:
                with self._lock:
                    self._ahead.pop((start, end), None)
                continue  # the gather fetches these rows itself (and reports the error if it persists)
            shift = (offsets[lo] - start) % record_bytes
            count = (buffer.size - shift) // record_bytes
            records = buffer[shift : shift + count * record_bytes].reshape(count, record_bytes)
            out2[lo:hi] = records[(offsets[lo:hi] - start - shift) // record_bytes]
            todo[lo:hi] = False
            hit = True
            with self._lock:
                entry = self._ahead.get((start, end))
                if entry is not None and entry.future is future:
                    entry.copied += hi - lo
                    entry.active = self._gathered
                    if entry.copied >= count:  # every record it holds was read: its memory goes to later ranges
                        del self._ahead[(start, end)]
        return np.flatnonzero(todo) if hit else None

    def clear(self) -> None:
        """Drop every range (their downloads finish and are discarded)."""
        with self._lock:
            self._ahead.clear()
