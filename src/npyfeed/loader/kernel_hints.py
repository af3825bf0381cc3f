"""What the read path asks the kernel ahead of its reads, and what it remembers having asked.

- Once per epoch, the read-ahead policy for the access pattern; shuffled local data that fits in memory is
  streamed whole, once per process, on a background thread (every later read is then a page-cache hit).
- Block shuffles: whole blocks, once per window of blocks, and the next window too. A shard reads a share of each
  window's rows, spread over all its blocks: of an object in a store it hints its own rows of the window (the
  store's read-ahead merges those closer than ``gap_bytes`` into one request), so a block is not fetched by every
  worker; its local files are left to the kernel.
- Other orders, when reads are slow (cold data): a batch's rows queued at once (``posix_fadvise`` WILLNEED)
  instead of faulted in one page at a time; neighbours sharing a page are one range. Of an object in a store,
  only runs of rows worth a request of their own (the gathers merge smaller ones with their neighbours), and none
  in order (the object reads itself ahead).
- Page tables of the mappings dropped once the rows read could have filled their share of the budget.

What was asked is kept when a loader is pickled (a worker knows the file was streamed); the lock guarding it is
the read path's, one per process.
"""

from __future__ import annotations

import bisect
import threading

import numpy as np

from npyfeed.arguments import ShuffleMode
from npyfeed.loader.budget import PAGE, drop_page_tables, storages
from npyfeed.loader.geometry import is_remote
from npyfeed.order.orders import BlockShuffle, Order, unwrap
from npyfeed.runs import runs
from npyfeed.shard import Layout
from npyfeed.sources.base import row_nbytes
from npyfeed.sources.columns import Columns
from npyfeed.storage.object_read_ahead import MIN_PREFETCH
from npyfeed.storage.urls import is_url
from npyfeed.system import available_memory

__all__ = ["KernelHints"]

# Kernel hints pay off when reads are slow (cold data): below this read speed a batch asks the kernel to queue
# all its rows at once (posix_fadvise WILLNEED) instead of faulting them in one page at a time.
_HINT_BELOW_BYTES_PER_S = 300e6


class KernelHints:
    """The hints of one loader's reads of ``source`` (see the module docs)."""

    def __init__(self, source: Columns, shuffle: ShuffleMode, io_hints: bool | None, sharded: bool = False) -> None:
        self.source, self.shuffle, self.io_hints, self.sharded = source, shuffle, io_hints, sharded
        # Block shuffles always hint: once per window of blocks, it costs nothing and turns reads sequential.
        self.hinting = io_hints is not False and (bool(io_hints) or shuffle == "block")
        self._hinted: set[tuple[int, int]] = set()
        self._prepared: set[int] = set()
        self._streamed = False
        self._rows_mapped = 0  # rows read since the page tables were last dropped
        # Per column: the row bytes of a column in an object store (whose row hints are filtered), else 0.
        self._remote_rows = [row_nbytes(a) if any(is_remote(s) for s in storages(a)) else 0 for a in source.arrays]

    def prepare(self, epoch: int, lock: threading.Lock) -> None:
        """Once per epoch, before its first read: set the kernel's read-ahead policy for this access pattern.

        Shuffled data that fits in memory is read whole, sequentially, on a background thread the first time: far
        faster than faulting it in row by row at random. Data larger than memory is read by row instead, with
        per-batch hints (see ``io_hints``). Remote objects are never streamed whole (there is no page cache to
        fill, only a bounded read-ahead pool): a block shuffle fetches its windows ahead instead, each block once.
        """
        if epoch in self._prepared:
            return
        with lock:
            if epoch in self._prepared:
                return
            self._prepared.add(epoch)
            stream = (
                self.shuffle != "none"
                and self.io_hints is not False
                and not self._streamed
                and not any(is_url(p) for p in self.source.paths)
                and len(self.source) * self.source.row_bytes <= available_memory() // 2
            )
            self._streamed = self._streamed or stream
        sparse = self.sharded and self.shuffle == "block"  # a share of each window's rows (see block_windows)
        self.source.advise("sequential" if self.shuffle == "none" else "sparse" if sparse else "random")
        if stream:
            whole = [(0, len(self.source))]
            threading.Thread(target=self.source.will_need, args=(whole,), name="npyfeed-stream", daemon=True).start()
            if self.io_hints is None:
                self.hinting = False  # row hints would only scatter the stream with random reads

    @property
    def hints_every_read(self) -> bool:
        """Whether every read is hinted for good (``io_hints=True``, or a block shuffle not streamed whole), not only
        while reads are slow: such reads wait on storage outside the read slots, so the read-ahead depth alone sets
        how many run at once."""
        return self.hinting and (self.io_hints is True or self.shuffle == "block")

    def block_windows(
        self, epoch: int, order: Order, layout: Layout, start: int, stop: int, lock: threading.Lock
    ) -> None:
        """Block shuffles: the windows batches ``start..stop-1`` of ``layout`` read, once per window, and the next
        window too, so storage streams across window edges: whole blocks, or a shard's own rows (module docs)."""
        inner = unwrap(order)
        if not isinstance(inner, BlockShuffle):
            return
        window_rows = inner.block_rows * inner.window_blocks
        first = layout.positions(start)[0] // window_rows
        last = min(layout.positions(stop - 1)[1] // window_rows + 1, (len(self.source) - 1) // window_rows)
        # Under the lock: a read that finds a window hinted must find its ranges asked for too, or its gathers
        # would fetch the window's rows with a request per batch before the hint lands (1.3-1.5x an epoch's bytes).
        with lock:
            todo = [w for w in range(first, last + 1) if (epoch, w) not in self._hinted]
            if len(self._hinted) > 1024:
                self._hinted.clear()
            self._hinted.update((epoch, w) for w in todo)
            if layout.count > 1:
                self._shard_windows(epoch, order, layout, todo, window_rows)
                return
            ranges = []
            for w in todo:
                lo = w * window_rows
                ranges += order.hint_ranges(epoch, lo, min(lo + window_rows, len(self.source)))
            if ranges:
                self.source.will_need(ranges)  # never waits: it only starts requests

    def _shard_windows(self, epoch: int, order: Order, layout: Layout, windows: list[int], window_rows: int) -> None:
        """A shard's own rows of ``windows``, for the columns in an object store."""
        if not any(self._remote_rows):
            return
        ends = range(len(layout))
        ranges = []
        for w in windows:
            lo, hi = w * window_rows, min((w + 1) * window_rows, len(self.source))
            # This shard's batches whose positions overlap the window (positions grow with the batch).
            k = bisect.bisect_right(ends, lo, key=lambda b: layout.positions(b)[1])
            parts = []
            while k < len(layout) and (span := layout.positions(k))[0] < hi:
                a, b = max(span[0], lo), min(span[1], hi)
                if b > a:
                    parts.append(order.rows(epoch, a, b))
                k += 1
            if parts:
                ranges += runs(np.sort(np.concatenate(parts)))
        if ranges:
            for array, remote in zip(self.source.arrays, self._remote_rows, strict=True):
                if remote:
                    array.will_need(ranges)  # never waits: it only starts requests

    def rows(self, rows: np.ndarray) -> None:
        """Queue the reads of ``rows`` with the kernel; neighbours sharing a page are one request."""
        widest = max(1, max(row_nbytes(a) for a in self.source.arrays))
        ranges = runs(np.sort(rows), gap=max(1, PAGE // widest) - 1)
        if not any(self._remote_rows):
            self.source.will_need(ranges)
            return
        for array, remote in zip(self.source.arrays, self._remote_rows, strict=True):
            if not remote:
                array.will_need(ranges)
                continue
            if self.shuffle == "none":
                continue  # an object read in order reads itself ahead (ObjectFile.advise("sequential"))
            # A run smaller than a request's worth would be a request of its own: the gather merges it instead.
            wanted = [(a, b) for a, b in ranges if (b - a) * remote >= MIN_PREFETCH]
            if wanted:
                array.will_need(wanted)

    def measured(self, nbytes: int, seconds: float) -> None:
        """A read of ``nbytes`` took ``seconds``: with ``io_hints=None``, hint row reads while reads are slow."""
        if self.io_hints is None and self.shuffle != "block" and not self._streamed:
            self.hinting = nbytes < _HINT_BELOW_BYTES_PER_S * seconds

    def count_mapped(self, rows: int, *, trim_rows: int, lock: threading.Lock) -> None:
        """Drop the mappings' page tables once the rows read since the last drop could have filled their share
        (``trim_rows``; 0: never)."""
        if not trim_rows:
            return
        with lock:
            self._rows_mapped += rows
            due = self._rows_mapped >= trim_rows
            if due:
                self._rows_mapped = 0
        if due:
            drop_page_tables(self.source)
