"""Rows of a remote object read through the local chunk cache (:mod:`npyfeed.storage.cache.directory`).

The object is cut into aligned chunks of ``cache_chunk_bytes``. A gather works out which chunks its rows touch,
opens those on disk, fetches the missing ones whole (each chunk once, however many threads or processes ask for it
at the same time; all of a batch's missing chunks in one set of concurrent range requests, written straight to
disk, so memory stays at the requests in flight), then copies the rows out of the chunk files with ``pread``
(neighbours within a few KiB in one call) into the caller's buffer. Rows in a chunk the cache has no room for are
fetched from the store as without a cache. Chunks are keyed by URL, version (size and ETag) and index: a replaced
object is a new key, and its old chunks are deleted when the new version is first cached.

A chunk another process is writing is waited for at most ``wait_seconds`` (the storage ``deadline``) per gather,
however many chunks it holds; then (and for every later gather while that same claim is held: a stopped process
keeps it forever) the rows are fetched from the store here.

Read-ahead jobs carry the :class:`~npyfeed.storage.deadlines.Stop` of the read that hinted them: once its consumer
leaves, jobs not started do nothing, and running ones have their requests cancelled and give up their claims. A
gather that waited for a chunk such a job was fetching fetches it itself.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from npyfeed.storage.cache import claims, read_ahead
from npyfeed.storage.cache.chunk_reads import read_bytes, read_records
from npyfeed.storage.cache.directory import TRAILER, ChunkDirectory, chunk_directory
from npyfeed.storage.deadlines import Stop, current_stop, stopped_by

__all__ = ["CachedObject"]

_CLAIMS_AT_ONCE = 64  # chunks fetched together (each holds an open file while it is written)

Fetch = Callable[[Sequence[tuple[int, int]], Callable[[int, Any], None]], None]


class CachedObject:
    """One version of one object in a :class:`ChunkDirectory`.

    ``fetch(ranges, sink)`` fetches byte ranges of that version from the store (``sink(i, data)`` per range, on
    any thread); ``request_bytes`` bounds one range request; ``wait_seconds`` bounds a gather's wait for chunks
    other processes are writing.
    """

    def __init__(
        self,
        cache: ChunkDirectory,
        name: str,
        version: object,
        size: int,
        fetch: Fetch,
        request_bytes: int,
        wait_seconds: float,
    ) -> None:
        self.cache = cache
        self.name = name
        self.size = size
        self.chunk_bytes = cache.options.chunk_bytes
        self.chunks = -(-size // self.chunk_bytes)
        self._fetch = fetch
        self._request_bytes = request_bytes
        self._wait_seconds = wait_seconds
        self.directory = cache.root / hashlib.sha256(name.encode()).hexdigest()[:32]
        self._version = hashlib.sha256(repr(version).encode()).hexdigest()[:16]
        self._key = f"{name}\0{version!r}\0{self.chunk_bytes}"
        self._cleaned = False
        self._after_fork()

    def _after_fork(self) -> None:
        """Fresh per-process state (a forked worker inherits locks and fetches in flight of its parent's threads)."""
        self._pid = os.getpid()
        self.cache = chunk_directory(self.cache.options)
        self.cache.wait_at_most(self._wait_seconds)
        self._lock = threading.Lock()
        self._inflight: dict[int, concurrent.futures.Future[bool]] = {}
        self._queued: set[int] = set()  # chunks waiting for the read-ahead threads
        self._stuck: set[tuple[int, tuple[int, int]]] = set()  # (chunk, claim file) waited on in vain: not again

    def path(self, k: int) -> Path:
        return self.directory / f"{self._version}-{self.chunk_bytes}-{k}"

    def length(self, k: int) -> int:
        return min(self.chunk_bytes, self.size - k * self.chunk_bytes)

    def digest(self, k: int) -> bytes:
        """What a chunk file's trailer holds to say whose chunk it is (URL, version, chunk size and index)."""
        return hashlib.sha256(f"{self._key}\0{k}".encode()).digest()[:8]

    # -- chunks -------------------------------------------------------------------------------------------------
    def open(self, k: int) -> int | None:
        """A descriptor of chunk ``k`` on disk, or None."""
        return self.cache.open(self.path(k), self.length(k), self.digest(k))

    def fetch_missing(self, ks: Iterable[int]) -> None:
        """Fetch the chunks of ``ks`` that are not on disk (read-ahead)."""
        missing = []
        for k in ks:
            fd = self.open(k)
            if fd is None:
                missing.append(k)
            else:
                os.close(fd)
        if missing:
            self._fill(missing)

    def _fill(self, ks: list[int]) -> None:
        """Fetch chunks ``ks`` into the cache: each once per process (other threads wait for it) and once among
        processes (see :func:`~npyfeed.storage.cache.claims.claim`)."""
        if self._pid != os.getpid():
            self._after_fork()
        mine: dict[int, concurrent.futures.Future[bool]] = {}
        theirs: list[tuple[int, concurrent.futures.Future[bool]]] = []
        with self._lock:
            for k in ks:
                if k in self._inflight:
                    theirs.append((k, self._inflight[k]))
                else:
                    mine[k] = self._inflight[k] = concurrent.futures.Future()
        try:
            if mine:
                self._fill_claimed(list(mine))
        except BaseException as e:
            for future in mine.values():
                future.set_exception(e)
            raise
        finally:
            with self._lock:
                for k in mine:
                    self._inflight.pop(k, None)
            for future in mine.values():
                if not future.done():
                    future.set_result(True)
        again = []
        for k, future in theirs:
            try:
                future.result()
            except concurrent.futures.CancelledError:
                again.append(k)  # a read-ahead job whose consumer left: fetched here (unless ours left too)
        if again:
            self._fill(again)

    def _fill_claimed(self, ks: list[int]) -> None:
        if not self._cleaned:
            self._cleaned = True
            try:
                self.cache.remove_other_versions(self.directory, self._version)
            except OSError as e:
                self.cache.failed(e)
        waiting = []
        stop = current_stop()
        for i in range(0, len(ks), _CLAIMS_AT_ONCE):  # bounded: each claimed chunk holds an open file
            _check(stop)
            claimed, theirs = self._claim_all(ks[i : i + _CLAIMS_AT_ONCE])
            waiting += theirs
            self._write(claimed)
        deadline = time.monotonic() + self._wait_seconds  # one wait for all: a stopped holder may hold many
        for k in waiting:  # another process is fetching them: wait, then take over if it gave up
            _check(stop)
            held = claims.holder(self.path(k))
            if not claims.wait(self.path(k), deadline - time.monotonic()):
                if held is not None and held == claims.holder(self.path(k)):
                    with self._lock:
                        self._stuck.add((k, held))
                continue  # still held: its rows are read from the store
            fd = self.open(k)
            if fd is not None:
                _close([fd])
            else:
                self._write(self._claim_all([k])[0])  # claimed again by someone else: its rows skip the cache

    def _claim_all(self, ks: list[int]) -> tuple[dict[int, int], list[int]]:
        """Claim and reserve room for chunks ``ks``: ``(claimed descriptors, chunks other processes write)``.
        A chunk with no room, or that cannot be written here, is neither: its rows are read from the store."""
        claimed: dict[int, int] = {}
        waiting = []
        for k in ks:
            try:
                fd = self._claim(k)
            except OSError as e:  # the cache's disk, not the store: read without the cache
                self.cache.failed(e)
                continue
            if fd is None:
                held = claims.holder(self.path(k))
                if held is not None and (k, held) not in self._stuck:
                    waiting.append(k)  # else: a claim already waited on in vain, or not a claim: the store
                continue
            if fd < 0:
                continue  # published by another process meanwhile
            try:
                room = self.cache.reserve(self.length(k) + TRAILER.size, self.path(k))
            except OSError as e:  # a TimeoutError for a space lock that is not let go, or the disk
                room = False
                self.cache.failed(e)
            if room:
                claimed[k] = fd
            else:
                with contextlib.suppress(OSError):
                    claims.abandon(fd, self.path(k))  # no room
        return claimed, waiting

    def _claim(self, k: int) -> int | None:
        """Claim chunk ``k`` for writing: a descriptor, None if another process is writing it, or -1 if it was
        published between our look and our claim."""
        fd = claims.claim(self.path(k))
        if fd is not None and (done := self.open(k)) is not None:
            _close([done])
            claims.abandon(fd, self.path(k))
            return -1
        return fd

    def _write(self, claimed: dict[int, int]) -> None:
        """Fetch the claimed chunks whole, concurrently, each range written to its chunk file as it arrives, then
        publish them. A chunk that cannot be written (disk full...) is dropped; a failed fetch drops them all."""
        if not claimed:
            return
        ranges: list[tuple[int, int]] = []
        targets: list[tuple[int, int, int]] = []  # (chunk, descriptor, offset in the chunk)
        for k, fd in claimed.items():
            start = k * self.chunk_bytes
            end = start + self.length(k)
            for a in range(start, end, self._request_bytes):
                ranges.append((a, min(a + self._request_bytes, end)))
                targets.append((k, fd, a - start))
        failed: dict[int, OSError] = {}

        def sink(i: int, data: Any) -> None:
            k, fd, offset = targets[i]
            view = memoryview(data).cast("B")
            try:
                while view and k not in failed:
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
            except OSError as e:  # reported from the reading thread (this is the event loop's)
                failed[k] = e

        try:
            self._fetch(ranges, sink)
        except BaseException:
            for k, fd in claimed.items():
                self._drop(k, fd)
            raise
        self.cache.count(fetched=sum(self.length(k) for k in claimed))
        for k, fd in claimed.items():
            if k in failed:
                self.cache.failed(failed[k])
                self._drop(k, fd)
                continue
            try:
                published = self.cache.publish(fd, self.path(k), self.length(k), self.digest(k))
            except OSError as e:
                self.cache.failed(e)
                published = False
            if not published:
                with contextlib.suppress(OSError):
                    self.cache.release(self.length(k) + TRAILER.size)

    def _drop(self, k: int, fd: int) -> None:
        """Give up a claimed chunk and the room reserved for it."""
        with contextlib.suppress(OSError):
            claims.abandon(fd, self.path(k))
        with contextlib.suppress(OSError):
            self.cache.release(self.length(k) + TRAILER.size)

    # -- reading ------------------------------------------------------------------------------------------------
    def gather(
        self,
        base: int,
        record_bytes: int,
        indices: np.ndarray,
        out2: np.ndarray,
        fallback: Callable[[np.ndarray], None],
    ) -> None:
        """Copy the records at sorted ``indices`` into the rows of ``out2`` (``(n, record_bytes)`` uint8); the
        positions whose chunks cannot be cached go to ``fallback(positions)``.

        The rows of chunks on disk are read first, then the missing chunks are fetched together and their rows
        read. One chunk file is open at a time (a batch may touch thousands of chunks).
        """
        n = int(indices.size)
        offsets = base + indices.astype(np.int64) * record_bytes
        first = offsets // self.chunk_bytes
        last = (offsets + record_bytes - 1) // self.chunk_bytes
        single = np.flatnonzero(first == last)
        groups = np.split(single, np.flatnonzero(np.diff(first[single])) + 1) if single.size else []
        spans = np.flatnonzero(first != last).tolist()  # records spanning chunks

        def read_group(group: np.ndarray) -> bool:
            k = int(first[group[0]])
            return read_records(self.open, self.chunk_bytes, k, offsets[group] - k * self.chunk_bytes, group, out2)

        def read_span(i: int) -> bool:
            return read_bytes(self.open, self.chunk_bytes, int(offsets[i]), out2[i])

        later = [g for g in groups if not read_group(g)]
        later_spans = [i for i in spans if not read_span(i)]
        if later or later_spans:
            needed = {int(first[g[0]]) for g in later}
            for i in later_spans:
                needed.update(range(int(first[i]), int(last[i]) + 1))
            self._fill(sorted(needed))
            missed = [g for g in later if not read_group(g)]
            missed += [np.array([i]) for i in later_spans if not read_span(i)]
            if missed:
                positions = np.sort(np.concatenate(missed))
                fallback(positions)
                n -= positions.size
        self.cache.count(served=n * record_bytes)

    def read_cached(self, offset: int, out: np.ndarray) -> bool:
        """Fill ``out`` (uint8) with bytes ``[offset, offset + out.size)`` if every chunk holding them is on disk;
        False (nothing fetched) otherwise."""
        return read_bytes(self.open, self.chunk_bytes, offset, out)

    # -- read-ahead ---------------------------------------------------------------------------------------------
    @property
    def ahead(self) -> int:
        """Chunks this process queued for read-ahead whose jobs have not ended (0: none can send a request)."""
        with self._lock:
            return len(self._queued)

    def will_need(self, ranges: Sequence[tuple[int, int]], budget: int) -> None:
        """Queue the chunks under these byte ranges for a background fetch (at most ``budget`` bytes queued), given
        up when the hinting read's consumer leaves (its :class:`~npyfeed.storage.deadlines.Stop` is set)."""
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            todo = []
            # At most a quarter of the cache ahead: more would evict chunks before the reads that wanted them.
            limit = max(1, min(budget, self.cache.limit // 4) // self.chunk_bytes)
            for start, end in ranges:
                for k in range(max(0, start) // self.chunk_bytes, min(end, self.size) // self.chunk_bytes + 1):
                    if k < self.chunks and k not in self._queued and len(self._queued) < limit:
                        self._queued.add(k)
                        todo.append(k)
        per_job = max(1, read_ahead.JOB_BYTES // self.chunk_bytes)
        stop = current_stop()
        for i in range(0, len(todo), per_job):
            read_ahead.submit(functools.partial(self._fetch_ahead, todo[i : i + per_job], stop))

    def _fetch_ahead(self, ks: list[int], stop: Stop | None) -> None:
        try:
            if stop is None or not stop.is_set():
                with stopped_by(stop):  # its requests are cancelled, and its claims given up, when stop is set
                    self.fetch_missing(ks)
        except Exception:  # only a hint: the gather that needs these chunks fetches them and reports errors
            pass
        finally:
            with self._lock:
                self._queued.difference_update(ks)


def _check(stop: Stop | None) -> None:
    """Nobody waits for this fetch any more: end it as its requests would be ended."""
    if stop is not None and stop.is_set():
        raise concurrent.futures.CancelledError


def _close(fds: Iterable[int | None]) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)
