"""An object in S3, GCS or behind HTTP(S) as :class:`~npyfeed.storage.Storage`: read in place by ranged GETs.

``ObjectFile(url)`` asks for the object's size, ETag and Last-Modified once (a HEAD, or the listing that found
it) and pins that version: every later GET carries it as a precondition and its answer is checked against it
(:mod:`npyfeed.storage.versions`). It reads what NpyArray asks for:

- ``read_into``: one byte range (the header, a run of rows), split into ``request_bytes`` pieces fetched at once;
- ``gather``: records (rows) at sorted indices, merged into requests across gaps under ``gap_bytes``
  (:func:`~npyfeed.storage.ranges.plan_requests`), all in flight together, each copied into the caller's buffer;
- ``will_need``: ranges fetched ahead into a bounded memory pool (``prefetch_bytes``): the Loader announces the
  blocks of each block-shuffle window ahead of use, so every block is downloaded once, in MiB-sized requests,
  however its rows are spread over batches;
- ``advise("sequential")``: gathers that continue where an earlier one ended read the object ahead, up to half the
  pool past the furthest gather, in record-aligned ``request_bytes`` pieces: many large requests in flight however
  small each read is (a label column is fetched a few MiB at a time, not per batch). Gathers that do not continue
  one another (a sharded loader's, a shuffle's) read nothing ahead;
- ``advise("sparse")``: a reader takes a share of the records of each range it hints (a shard of a block shuffle
  hints its own rows of each window): hinted ranges closer than ``gap_bytes`` share a request, as a gather's rows do.

With ``storage_options["cache_dir"]``, gathers and read-ahead go through a local chunk cache instead
(:mod:`npyfeed.storage.cache.cached_object`): data reused across epochs is fetched once.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from npyfeed.errors import ObjectChangedError
from npyfeed.storage.base import AccessPattern
from npyfeed.storage.cache.cached_object import CachedObject
from npyfeed.storage.cache.directory import chunk_directory
from npyfeed.storage.cache.options import split_cache_options
from npyfeed.storage.client import StoreClient
from npyfeed.storage.clients import get_client
from npyfeed.storage.object_read_ahead import MIN_PREFETCH, ObjectReadAhead
from npyfeed.storage.ranges import plan_requests
from npyfeed.storage.urls import match_key, parse_url, redact
from npyfeed.storage.versions import ObjectVersion

__all__ = ["ObjectFile", "glob_objects"]


class ObjectFile:
    """The bytes of one remote object, pinned to the version (size, ETag or Last-Modified) seen when it was opened."""

    def __init__(
        self,
        url: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self._url = parse_url(url)
        self._name = redact(self._url)  # for messages and reprs: never the credentials a URL may carry
        self._storage_options = dict(storage_options or {})
        cache_options, self._store_options = split_cache_options(self._storage_options)
        self._pid = os.getpid()
        self._client: StoreClient | None = get_client(self._url, self._store_options)
        info = meta if meta is not None else self.client.head(self._url.key)
        self._version = ObjectVersion.from_meta(info)
        self._size = self._version.size
        self.cache: CachedObject | None = None
        """The object's chunks in the local cache, when ``storage_options`` name a ``cache_dir``."""
        # Without a validator a replaced object of the same size could not be told from the cached one.
        self._version.warn_if_undetectable(self._name, cached=cache_options is not None)
        if cache_options is not None and self._version.detectable:
            self.cache = CachedObject(
                chunk_directory(cache_options),
                self._name,
                self.version,
                self._size,
                self._fetch_ranges,
                self.options.request_bytes,
                self.options.deadline,  # the longest wait for a chunk another process is writing
            )
        self.read_ahead = ObjectReadAhead(self._url.key, self._version, self._size)
        """Ranges fetched ahead of use (without a cache: with one, the cache reads ahead)."""
        self._pattern: AccessPattern = "normal"
        self._sequential_lock = threading.Lock()
        self._ends: deque[int] = deque(maxlen=16)  # where recent gathers ended
        self._ahead_to = 0  # how far sequential read-ahead was asked for
        self._frontier = 0  # where the furthest gather of this pass ends

    @property
    def client(self) -> StoreClient:
        """This process's client for the object's store (in a forked child, a :class:`ConfigError`: see
        :func:`npyfeed.storage.clients.get_client`)."""
        self._adopt()
        if self._client is None:
            self._client = get_client(self._url, self._store_options)
        return self._client

    def _adopt(self) -> None:
        """In a forked child: drop the parent's client and read-ahead (futures only its threads would complete).

        Reads the child can serve without a request (from the local cache) still work; the first request asks
        :func:`~npyfeed.storage.clients.get_client` for a client, which refuses in a forked child instead of hanging.
        """
        if self._pid != os.getpid():
            self.read_ahead = ObjectReadAhead(self._url.key, self._version, self._size)
            self._client = None
            self._pid = os.getpid()

    def _fetch_ranges(self, ranges: Sequence[tuple[int, int]], sink: Any) -> None:
        """Fetch byte ranges of this version of the object (for the chunk cache)."""
        self.client.fetch(self._url.key, self._version, ranges, sink)

    @property
    def name(self) -> str:
        return self._name

    @property
    def size(self) -> int:
        return self._size

    @property
    def version(self) -> tuple[int, str]:
        return (self._size, self._version.token)

    @property
    def options(self) -> Any:
        return self.client.options

    def __repr__(self) -> str:
        return f"ObjectFile({self._name!r}, size={self._size})"

    # -- pickling: a worker process reconnects and checks it is still the same version ---------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"url": str(self._url), "storage_options": self._storage_options, "version": self.version}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], storage_options=state["storage_options"])  # type: ignore[misc]
        if self.version != tuple(state["version"]):
            raise ObjectChangedError(
                f"{self._name}: the object changed since it was opened: now {self._describe(self.version)}, "
                f"expected {self._describe(tuple(state['version']))}"
            )

    @staticmethod
    def _describe(version: tuple[Any, ...]) -> str:
        return f"{version[0]} bytes, version {version[1]}"

    def check(self) -> None:
        """Raise :class:`ObjectChangedError` if the object was deleted, resized or rewritten since it was opened."""
        try:
            info = self.client.head(self._url.key)
        except FileNotFoundError as e:
            raise ObjectChangedError(f"{self._name}: the object was deleted since it was opened") from e
        self._version.check(self._name, info)

    # -- reading ------------------------------------------------------------------------------------------------
    def _check_bounds(self, start: int, end: int) -> None:
        if start < 0 or end > self._size:
            raise ObjectChangedError(
                f"{self._name}: reading bytes [{start}, {end}) past the end of the object ({self._size} bytes)"
            )

    def read_into(self, offset: int, out: np.ndarray) -> None:
        flat = out.reshape(-1).view(np.uint8)
        self._check_bounds(offset, offset + flat.size)
        if self.cache is not None and flat.size and self.cache.read_cached(offset, flat):
            return  # small reads (the header) never fetch whole chunks; they use them when they are there
        step = self.options.request_bytes
        pieces = [(a, min(a + step, offset + flat.size)) for a in range(offset, offset + flat.size, step)]

        def sink(i: int, data: Any) -> None:
            a = pieces[i][0] - offset
            flat[a : a + len(data)] = np.frombuffer(data, np.uint8)

        self.client.fetch(self._url.key, self._version, pieces, sink)

    def gather(self, base: int, record_bytes: int, indices: np.ndarray, out: np.ndarray) -> None:
        n = int(indices.size)
        if n == 0 or record_bytes == 0:
            return
        out2 = out.reshape(n, record_bytes)
        if n > 1 and not (np.diff(indices) >= 0).all():
            order = np.argsort(indices, kind="stable")
            ordered = np.empty_like(out2)
            self.gather(base, record_bytes, indices[order], ordered)
            out2[order] = ordered
            return
        first, last = int(indices[0]), int(indices[-1])
        self._check_bounds(base + first * record_bytes, base + (last + 1) * record_bytes)
        if self.cache is not None:

            def uncached(positions: np.ndarray) -> None:
                self._fetch_records(base, record_bytes, indices[positions], positions, out2)

            self.cache.gather(base, record_bytes, indices, out2, uncached)
            return
        self.read_ahead.count(n * record_bytes)
        self._adopt()
        if self._pattern == "sequential":
            self._read_on(base, base + first * record_bytes, base + (last + 1) * record_bytes, record_bytes)
        todo = self.read_ahead.take(self.client, base, record_bytes, indices, out2)
        if todo is None:
            positions, wanted = np.arange(n), indices
        elif todo.size == 0:
            return
        else:
            positions, wanted = todo, indices[todo]
        self._fetch_records(base, record_bytes, wanted, positions, out2)

    def _fetch_records(
        self, base: int, record_bytes: int, wanted: np.ndarray, positions: np.ndarray, out2: np.ndarray
    ) -> None:
        opts = self.options
        plan = plan_requests(wanted, record_bytes, opts.gap_bytes, opts.request_bytes)
        contiguous = positions.size == out2.shape[0]  # positions are 0..n-1: out rows line up with `wanted`
        # No repeated record: a request asked for as many records as it spans holds every one of them, once.
        distinct = wanted.size < 2 or bool((np.diff(wanted) > 0).all())
        ranges: list[tuple[int, int]] = []
        owner: list[tuple[int, int]] = []  # (plan index, byte offset in the request's records)
        for p, req in enumerate(plan):
            start, end = base + req.first * record_bytes, base + req.stop * record_bytes
            # A record larger than a request is split by bytes; the pieces land side by side.
            for a in range(start, end, opts.request_bytes):
                ranges.append((a, min(a + opts.request_bytes, end)))
                owner.append((p, a - start))
        parts: dict[int, list[tuple[int, Any]]] = {}
        lock = threading.Lock()

        def place(p: int, pieces: list[tuple[int, Any]]) -> None:
            req = plan[p]
            if len(pieces) == 1:
                data = np.frombuffer(pieces[0][1], np.uint8)
            else:
                data = np.empty(req.records * record_bytes, np.uint8)
                for offset, piece in pieces:
                    data[offset : offset + len(piece)] = np.frombuffer(piece, np.uint8)
            records = data.reshape(req.records, record_bytes)
            if contiguous and distinct and req.end - req.start == req.records:
                out2[req.start : req.end] = records  # every record of the range, once: one copy
                return
            rows = wanted[req.start : req.end] - req.first
            if contiguous:
                np.take(records, rows, axis=0, out=out2[req.start : req.end], mode="clip")
            else:
                out2[positions[req.start : req.end]] = records[rows]

        pieces_per_plan = np.bincount([p for p, _ in owner], minlength=len(plan))

        def sink(i: int, data: Any) -> None:
            p, offset = owner[i]
            if pieces_per_plan[p] == 1:
                place(p, [(0, data)])
                return
            with lock:
                got = parts.setdefault(p, [])
                got.append((offset, data))
                complete = len(got) == pieces_per_plan[p]
            if complete:
                place(p, parts.pop(p))

        self.client.fetch(self._url.key, self._version, ranges, sink)

    # -- read-ahead ----------------------------------------------------------------------------------------------
    def will_need(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Start fetching these byte ranges ahead of use (bounded by ``prefetch_bytes``; never waits): into the
        chunk cache with a ``cache_dir``, else into :attr:`read_ahead`."""
        if self.cache is not None:
            wanted = [(max(0, a), min(b, self._size)) for a, b in ranges]
            self.cache.will_need([(a, b) for a, b in wanted if b - a >= MIN_PREFETCH], self.options.prefetch_bytes)
            return
        self._adopt()
        opts = self.options
        self.read_ahead.will_need(self.client, ranges, gap=opts.gap_bytes if self._pattern == "sparse" else None)

    def advise(self, pattern: AccessPattern) -> None:
        """``"sequential"``: gathers that continue one another read ahead; ``"sparse"``: hinted ranges closer than
        ``gap_bytes`` are fetched together (see the module docs)."""
        self._pattern = pattern

    def _read_on(self, base: int, start: int, end: int, record_bytes: int) -> None:
        """A gather of ``[start, end)`` in sequential mode: if it continues an earlier one, fetch what follows.

        Reads run a few at once and finish out of order: read-ahead starts past the furthest gather begun (never
        over bytes a gather fetches itself) and only moves forward; a gather of the first record starts a pass.
        """
        opts = self.options
        if record_bytes > opts.request_bytes:
            return  # a record split over requests is left to the gathers (the pool serves whole records only)
        piece = (opts.request_bytes // record_bytes) * record_bytes  # whole records: none is read twice
        depth = max(1, opts.prefetch_bytes // 2 // piece) * piece  # half the pool: the other half is the gathers'
        with self._sequential_lock:  # held while hinting: a gather after this one finds the pieces asked for
            if start == base:  # a new pass (epoch) over the object
                self._ahead_to = self._frontier = end
            continues = start in self._ends
            self._ends.append(end)
            self._frontier = max(self._frontier, end)  # gathers under way fetch up to here themselves
            if not continues:
                return
            begin = max(self._ahead_to, self._frontier)
            target = min(self._size, end + depth)
            if target <= begin or (target - begin < piece and target < self._size):
                return  # asked for already, or not a whole piece more yet
            self._ahead_to = target
            pieces = [(a, min(a + piece, target)) for a in range(begin, target, piece)]
            self.read_ahead.will_need(self.client, pieces)  # never waits: it only starts requests

    def close(self) -> None:
        self._adopt()
        self.read_ahead.clear()

    def __enter__(self) -> ObjectFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def glob_objects(pattern: str, storage_options: Mapping[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``(url, metadata)`` of every object matching the glob ``pattern`` (``s3://b/train/x_*.npy``), sorted."""
    url = parse_url(pattern)
    if url.scheme in ("http", "https"):
        raise ValueError(
            f"{redact(pattern)}: an HTTP server cannot be listed; give each URL (a list of URLs is accepted)"
        )
    client = get_client(url, split_cache_options(storage_options)[1])
    found = [(str(url.with_key(m["path"])), m) for m in client.list(url.list_prefix) if match_key(url.key, m["path"])]
    return sorted(found)
