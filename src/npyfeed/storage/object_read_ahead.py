"""An object's read-ahead without a cache: ranges fetched ahead of use into a bounded memory pool.

The Loader announces the blocks of each block-shuffle window before it reads them (``ObjectFile.will_need``), so
every block is downloaded once, in ``request_bytes`` pieces, however its rows are spread over batches; gathers
copy the records that lie in those pieces out of them. Every range hinted is fetched, however small: a label
column's blocks (a few KiB) are fetched once per window, not once per batch (the Loader leaves a global shuffle's
small row runs to the gathers, which merge them: ``npyfeed.loader.kernel_hints``). Read sparsely (a shard of a
block shuffle hints only its own rows of each window: runs a few rows apart), consecutive hinted ranges closer than
``gap_bytes`` share a piece, as a gather's rows share a request. The pool holds at most ``prefetch_bytes``: a range
not read yet is never evicted for a later one, a piece is let go once every hinted record in it was read, and only
ranges the reads moved past make room. Hints given inside a read with a
:class:`~npyfeed.storage.deadlines.Stop` are cancelled when it is set: read-ahead ends when its consumer leaves.
(With a ``cache_dir`` the chunk cache reads ahead instead: :mod:`npyfeed.storage.cache.read_ahead`.)
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
from npyfeed.storage.concurrency import Running
from npyfeed.storage.deadlines import Stop, current_stop, ends_at, stopped_by
from npyfeed.storage.versions import ObjectVersion

__all__ = ["MIN_PREFETCH", "ObjectReadAhead"]

# Row hints smaller than this are better left to the gathers (merged with their neighbours there): the Loader does
# not send them (see npyfeed.loader.kernel_hints), nor does the chunk cache fetch ahead for them.
MIN_PREFETCH = 64 << 10


class _Ahead:
    """A range fetched ahead of use: its download, the bytes of it that were hinted (the rest are gaps between
    hinted ranges), the records copied out of it so far, and when it was last asked for or read from (in bytes the
    gathers had asked for by then: the pool's clock)."""

    __slots__ = ("active", "copied", "future", "needed", "running")

    def __init__(self, running: Running[np.ndarray], needed: int, now: int) -> None:
        self.running = running
        self.future: concurrent.futures.Future[np.ndarray] = running.future
        self.needed = needed
        self.copied = 0
        self.active = now


def _pieces(ranges: Sequence[tuple[int, int]], size: int, step: int, gap: int | None) -> list[tuple[int, int, int]]:
    """``(start, end, hinted bytes)`` pieces of at most ``step`` bytes for the byte ranges hinted, in their order:
    a range larger than ``step`` in pieces of its own, consecutive smaller ones closer than ``gap`` in one (None:
    none merged)."""
    out: list[tuple[int, int, int]] = []
    merging = False  # the last piece is whole hinted ranges: the next may join it
    reach = -1 if gap is None else gap
    for start, end in ranges:
        start, end = max(0, start), min(end, size)
        if end <= start:
            continue
        if merging and out[-1][1] <= start <= out[-1][1] + reach and end - out[-1][0] <= step:
            out[-1] = (out[-1][0], end, out[-1][2] + end - start)
            continue
        merging = end - start <= step
        out += [(a, min(a + step, end), min(a + step, end) - a) for a in range(start, end, step)]
    return out


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
        self._held = 0  # bytes of the ranges in _ahead
        self.served = 0
        """Bytes of records gathers copied out of the pool (the rest they fetched themselves)."""
        # (starts, ends, pieces) of _ahead by start, made again when a range is added (ranges dropped since are
        # skipped): a gather finds its records' pieces by a search, not by a pass over a shard's thousands of runs.
        self._index: tuple[np.ndarray, np.ndarray, list[tuple[int, int]]] | None = None
        # Ranges hinted while the pool was full of ranges not read yet, oldest first, with the Stop of the read
        # that hinted them and their hinted bytes: fetched as room frees, or at once by the gather that needs them
        # (never per batch).
        self._queued: OrderedDict[tuple[int, int], tuple[Stop | None, int]] = OrderedDict()
        self._queued_bytes = 0

    @property
    def pieces(self) -> list[tuple[int, int]]:
        """The byte ranges held or being fetched, oldest first."""
        with self._lock:
            return list(self._ahead)

    def will_need(self, client: StoreClient, ranges: Sequence[tuple[int, int]], gap: int | None = None) -> None:
        """Start fetching these byte ranges into the pool (bounded by ``prefetch_bytes``; never waits); consecutive
        ones closer than ``gap`` bytes in one piece (None: each in pieces of its own)."""
        opts = client.options
        with self._lock:
            asked: set[tuple[int, int]] = set()  # this call's pieces: never evicted by the call itself
            for a, b, needed in _pieces(ranges, self._size, opts.request_bytes, gap):
                piece = (a, b)
                asked.add(piece)
                if piece in self._ahead and self._ahead[piece].future.cancelled():
                    self._drop(piece)  # its consumer left: fetched anew for this one
                if piece in self._ahead:
                    self._ahead.move_to_end(piece)
                    self._ahead[piece].active = self._gathered
                    continue
                if piece in self._queued:
                    continue
                size = piece[1] - piece[0]
                while self._held + size > client.options.prefetch_bytes:
                    # A range not yet read is needed sooner than this later one: only stale ranges make room.
                    # When the pool is full of live ones (a consumer slower than its hints, reads running
                    # ahead), this one waits in the queue until room frees or a gather needs it.
                    stale = self._stale(asked, client.options.prefetch_bytes)
                    if stale is None:
                        self._queue(piece, needed, client.options.prefetch_bytes)
                        break
                    self._drop(stale).running.cancel()  # not fetched if not started yet
                else:
                    self._start(client, piece, needed)

    def _start(
        self,
        client: StoreClient,
        piece: tuple[int, int],
        needed: int,
        waited_until: float | None = None,
        stop: Stop | None = None,
    ) -> None:
        """Start fetching ``piece`` (``needed`` of its bytes hinted) into the pool (under the lock): as read-ahead,
        by its own deadline, or as a read someone waits for until ``waited_until`` (a gather needs it now: it must
        not queue behind others). Cancelled when ``stop`` is set (default: the Stop of the read this thread is in)."""
        background = waited_until is None
        ends = time.monotonic() + client.options.deadline if waited_until is None else waited_until
        stop = stop if stop is not None else current_stop()
        fetch = functools.partial(self._fetch_piece, client, *piece, ends, stop, background)
        with stopped_by(stop):  # the coroutine is cancelled when the read that hinted it is left, not this one
            running = client.submit(fetch)
        self._ahead[piece] = _Ahead(running, needed, self._gathered)
        self._held += piece[1] - piece[0]
        self._index = None

    def _drop(self, piece: tuple[int, int]) -> _Ahead:
        """Forget a range of the pool (under the lock)."""
        self._held -= piece[1] - piece[0]
        return self._ahead.pop(piece)

    def _lookup(self) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """The pool's ranges sorted by start, with ranges dropped since (under the lock)."""
        if self._index is None:
            pieces = sorted(self._ahead)
            bounds = np.array(pieces, np.int64).reshape(-1, 2)
            self._index = (bounds[:, 0].copy(), bounds[:, 1].copy(), pieces)
        return self._index

    def _queue(self, piece: tuple[int, int], needed: int, prefetch_bytes: int) -> None:
        """Queue a hinted range for later (under the lock); the queue forgets its oldest past 4 pools' worth (a
        hint larger than that, e.g. a whole object, is mostly left to the gathers)."""
        self._queued[piece] = (current_stop(), needed)
        self._queued_bytes += piece[1] - piece[0]
        while self._queued_bytes > 4 * prefetch_bytes:
            self._unqueue(next(iter(self._queued)))

    def _unqueue(self, piece: tuple[int, int]) -> None:
        del self._queued[piece]
        self._queued_bytes -= piece[1] - piece[0]

    def _admit(self, client: StoreClient) -> None:
        """Fetch queued ranges while the pool has room (under the lock); those whose consumer left are dropped."""
        while self._queued:
            piece, (stop, needed) = next(iter(self._queued.items()))
            if stop is not None and stop.is_set():
                self._unqueue(piece)
                continue
            if self._held + piece[1] - piece[0] > client.options.prefetch_bytes:
                return
            self._unqueue(piece)
            self._start(client, piece, needed, stop=stop)  # the hinting read's: a gather may be another consumer's

    def _stale(self, asked: set[tuple[int, int]], prefetch_bytes: int) -> tuple[int, int] | None:
        """The oldest range fetched ahead that the reads have moved past: not asked for, nor read from, while the
        gathers asked for twice the pool's bytes (a consumer that left its epoch, a hint never followed)."""
        horizon = self._gathered - 2 * prefetch_bytes
        for piece, entry in self._ahead.items():
            if piece not in asked and entry.active < horizon:
                return piece
        return None

    async def _fetch_piece(
        self, client: StoreClient, start: int, end: int, ends: float, stop: Stop | None, background: bool
    ) -> np.ndarray:
        got: list[np.ndarray] = []

        def sink(_: int, data: Any) -> None:
            got.append(np.frombuffer(data, np.uint8))  # a read-only view of the body: no copy until a gather's

        await client.fetch_async(self._key, self._version, [(start, end)], sink, ends, background=background, stop=stop)
        return got[-1]

    def count(self, nbytes: int) -> None:
        """Move the pool's clock: a gather asked for ``nbytes``."""
        with self._lock:
            self._gathered += nbytes

    def take(
        self, client: StoreClient, base: int, record_bytes: int, indices: np.ndarray, out2: np.ndarray
    ) -> np.ndarray | None:
        """Copy the records that lie inside fetched-ahead ranges; return the positions still to fetch (None: all)."""
        offsets = base + indices * record_bytes
        ends = ends_at(client.options.deadline)  # this read's deadline: waiting for a read-ahead counts against it
        with self._lock:
            if self._queued:
                # Queued ranges this gather needs are fetched now, whole, while the pool holds under twice its
                # size: gathered per batch instead, a block's rows would cost a request each time.
                queued = np.array(list(self._queued), np.int64).reshape(-1, 2)
                first = np.minimum(np.searchsorted(offsets, queued[:, 0], "left"), offsets.size - 1)
                needed = (offsets[first] >= queued[:, 0]) & (offsets[first] <= queued[:, 1] - record_bytes)
                for a, b in queued[needed].tolist():
                    if self._held + b - a > 2 * client.options.prefetch_bytes:
                        break
                    hinted = self._queued[(a, b)][1]
                    self._unqueue((a, b))
                    self._start(client, (a, b), hinted, waited_until=ends)
            if not self._ahead:
                return None
            starts, piece_ends, pieces = self._lookup()
            # The piece starting last at or before each record (pieces do not overlap), if the record ends in it:
            # consecutive runs of positions, one per piece they fall in.
            at = np.searchsorted(starts, offsets, "right") - 1
            inside = (at >= 0) & (offsets + record_bytes <= piece_ends[np.maximum(at, 0)])
            found = np.flatnonzero(inside)
            if found.size == 0:
                return None
            cuts = np.flatnonzero(np.diff(at[found])) + 1
            firsts, lasts = found[np.r_[0, cuts]], found[np.r_[cuts - 1, found.size - 1]]
            spans = zip(firsts.tolist(), (lasts + 1).tolist(), strict=True)
            live = [(lo, hi, pieces[at[lo]]) for lo, hi in spans if pieces[at[lo]] in self._ahead]
            entries = [(lo, hi, piece, self._ahead[piece].future) for lo, hi, piece in live]
        todo = np.ones(indices.size, bool)
        copied: list[tuple[tuple[int, int], concurrent.futures.Future[np.ndarray], int, int]] = []
        for lo, hi, (start, end), future in entries:
            try:
                buffer = future.result(timeout=max(0.0, ends - time.monotonic()))
            except TimeoutError:
                if future.done():
                    raise  # the read-ahead's own deadline passed: the server is not answering
                what = f"waiting for the read-ahead of bytes [{start}, {end})"
                raise client.timeout_error(self._key, what) from None
            except Exception:
                with self._lock:
                    if (start, end) in self._ahead:
                        self._drop((start, end))
                continue  # the gather fetches these rows itself (and reports the error if it persists)
            shift = (offsets[lo] - start) % record_bytes
            count = (buffer.size - shift) // record_bytes
            records = buffer[shift : shift + count * record_bytes].reshape(count, record_bytes)
            np.take(records, (offsets[lo:hi] - start - shift) // record_bytes, axis=0, out=out2[lo:hi])
            todo[lo:hi] = False
            copied.append(((start, end), future, hi - lo, count))
        if not copied:
            return None
        with self._lock:
            freed = False
            self.served += (indices.size - int(todo.sum())) * record_bytes
            for piece, future, n, count in copied:
                entry = self._ahead.get(piece)
                if entry is not None and entry.future is future:
                    entry.copied += n
                    entry.active = self._gathered
                    # Every record hinted in it was read (a merged piece's gaps hold other readers' rows): its
                    # memory goes to later ranges.
                    if entry.copied >= min(count, entry.needed // record_bytes):
                        self._drop(piece)
                        freed = True
            if freed:
                self._admit(client)
        return np.flatnonzero(todo)

    def clear(self) -> None:
        """Drop every range (downloads still queued or running are cancelled)."""
        with self._lock:
            dropped, self._ahead, self._index = list(self._ahead.values()), OrderedDict(), None
            self._held = 0
            self._queued.clear()
            self._queued_bytes = 0
        for entry in dropped:
            entry.running.cancel()
