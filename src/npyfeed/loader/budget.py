"""Read-ahead sized by what the kernel charges for it, so a loader is never the reason a container is OOM-killed.

Three kinds of memory grow with the reads a loader keeps in flight, and a cgroup limit counts all three:

- anonymous memory: the output buffers of reads queued, done or being consumed, ``(depth + 2)`` reads of
  ``batches_per_read`` batches (the :class:`~npyfeed.loader.buffers.BufferPool` keeps that many);
- page cache touched by reads in flight: a random row costs whole pages, one per column at least (4 KiB for an
  8-byte row), and pages asked for with ``WILLNEED`` are locked until the device delivers them, so they cannot
  be reclaimed. Reads are therefore gathered in *windows* of rows whose pages fit the budget, the next window
  hinted while the current one is copied: the device's queue stays deep, and nothing hinted is evicted before
  it is copied;
- page tables: each 2 MiB of a mapping touched costs a 4 KiB page-table page that stays until it is unmapped
  (random rows over a 128 GiB file: 256 MiB of them, and not reclaimable). Past their share they are dropped
  (:func:`drop_page_tables`); the pages stay in the page cache.

The budget is a quarter of the memory this process can still use (:func:`npyfeed.system.available_memory`:
the container's limit minus what it holds that cannot be reclaimed), at most 256 MiB.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from npyfeed.loader.prefetch import Stopped
from npyfeed.system import available_memory

__all__ = ["PAGE", "PAGE_TABLE_SPAN", "Plan", "budget_bytes", "drop_page_tables", "plan", "read_windows", "storages"]

PAGE = mmap.PAGESIZE
PAGE_TABLE_SPAN = PAGE * (PAGE // 8)  # bytes of mapping one page-table page covers (2 MiB with 4 KiB pages)
MAX_BUDGET = 256 << 20
MIN_BUDGET = 4 << 20  # below this a container is too small to run anything; read one batch at a time
SHARE = 4  # read-ahead may take this fraction of the memory still available
_MAX_BATCHES_PER_READ = 64
_MIN_WINDOW_ROWS = 16


def budget_bytes(room: int | None = None) -> int:
    """Bytes read-ahead may hold (buffers + page cache in flight + page tables), given ``room`` left."""
    room = available_memory() if room is None else room
    return int(min(MAX_BUDGET, max(MIN_BUDGET, room // SHARE)))


@dataclass(frozen=True)
class Plan:
    """How one loader reads: batches per read task, reads in flight, rows per window, buffers, page tables."""

    batches_per_read: int
    depth: int  # reads in flight at first
    max_depth: int  # reads in flight when the consumer keeps waiting
    window_rows: int  # rows whose pages are in flight at once, per running read
    buffers: int  # output buffers the pool keeps per shape
    trim_rows: int  # rows read between page-table drops (0: the mappings are too small to matter)
    budget: int


def page_cache_per_row(row_bytes: Sequence[int], random: bool) -> int:
    """Page cache one row pins while its read is in flight: every page it spans in every column."""
    if not random:
        return max(1, sum(row_bytes))
    # A row of b bytes at a random offset spans (b + PAGE - 1) / PAGE pages on average.
    return sum(b + PAGE - 1 for b in row_bytes if b) or 1


def plan(
    *,
    batch_size: int,
    row_bytes: Sequence[int],
    file_bytes: Sequence[int],
    random: bool,
    num_threads: int,
    io_threads: int,
    read_bytes: int,
    batches_per_read: int | None = None,
    prefetch: int | None = None,
    budget: int | None = None,
) -> Plan:
    """The read geometry that keeps read-ahead within ``budget`` (default :func:`budget_bytes`).

    Half the budget is for output buffers, a quarter for page cache in flight, a quarter for page tables.
    ``batches_per_read`` (default: about ``read_bytes`` of batches) and ``prefetch`` (batches read ahead) override
    the read size and the depth, never the windows.
    """
    budget = budget_bytes() if budget is None else budget
    batch_out = max(1, batch_size * sum(row_bytes))
    buffers_budget = budget // 2
    cache_row = page_cache_per_row(row_bytes, random)
    if batches_per_read is not None:
        per_read = batches_per_read
    else:
        # About read_bytes per read, counted in what the read touches: random 8-byte rows cost a page each.
        per_read = max(1, min(_MAX_BATCHES_PER_READ, read_bytes // max(batch_out, batch_size * cache_row)))
        # At least a few reads must fit, or read-ahead would be one read deep: cut reads rather than depth.
        per_read = max(1, min(per_read, buffers_budget // (4 * batch_out)))
    read_out = per_read * batch_out
    if prefetch is not None:
        depth = max_depth = max(1, -(-prefetch // per_read))
    else:
        ceiling = max(1, buffers_budget // read_out - 2)
        depth = min(2 * num_threads, ceiling)
        # Growing past 2 reads per I/O thread buys nothing: reads are then the bottleneck, not the queue.
        max_depth = max(depth, min(2 * io_threads, ceiling))
    running = min(max_depth, io_threads)
    # Two windows per running read: the one being copied and the next one, already hinted.
    window = max(_MIN_WINDOW_ROWS, (budget // 4) // (2 * running * cache_row))
    return Plan(
        batches_per_read=per_read,
        depth=depth,
        max_depth=max_depth,
        window_rows=int(window),
        buffers=max_depth + 2,
        trim_rows=_trim_rows(row_bytes, file_bytes, random, budget // 4),
        budget=budget,
    )


def _trim_rows(row_bytes: Sequence[int], file_bytes: Sequence[int], random: bool, allowed: int) -> int:
    """Rows read between page-table drops, or 0 if mapping every file whole costs less than ``allowed``."""
    whole = sum(-(-f // PAGE_TABLE_SPAN) * PAGE for f in file_bytes)
    if whole <= allowed:
        return 0
    if random:  # each row may land in a 2 MiB region of its own, in every column
        per_row = PAGE * max(1, len([b for b in row_bytes if b]))
        return max(1, allowed // per_row)
    return max(1, allowed * PAGE_TABLE_SPAN // (PAGE * max(1, sum(row_bytes))))


def read_windows(
    arrays: Sequence[Any],
    rows: np.ndarray,
    outs: Sequence[np.ndarray],
    window_rows: int,
    hint: Callable[[np.ndarray], None] | None,
    stopped: Callable[[], bool] = lambda: False,
    done: Callable[[int], None] = lambda rows: None,
) -> None:
    """Read ``rows`` of every array into ``outs``, ``window_rows`` at a time, hinting each window ahead.

        While window ``k`` is copied, the reads of window ``k + 1`` are already queued with the kernel. Between
        windows, ``stopped()`` is asked whether anyone still waits (if not,
        :class:`~npyfeed.loader.prefetch.Stopped`), and
    ``done(rows)`` told how many rows were read (page tables are counted per window, not per read).
    """
    windows = [(a, min(a + window_rows, rows.size)) for a in range(0, rows.size, window_rows)]
    if hint is not None and windows:
        hint(rows[windows[0][0] : windows[0][1]])
    for k, (a, b) in enumerate(windows):
        if k and stopped():
            raise Stopped
        if hint is not None and k + 1 < len(windows):
            hint(rows[windows[k + 1][0] : windows[k + 1][1]])
        for array, out in zip(arrays, outs, strict=True):
            array.read_rows(rows[a:b], out[a:b])
        done(b - a)


def storages(source: Any) -> Iterator[Any]:
    """Every storage backend under a source (Columns, concatenations, row slices, arrays)."""
    for name in ("arrays", "parts"):
        for child in getattr(source, name, ()):
            yield from storages(child)
    base = getattr(source, "base", None)
    if base is not None:
        yield from storages(base)
    storage = getattr(source, "storage", None)
    if storage is not None:
        yield storage


def drop_page_tables(source: Any) -> None:
    """Free the page tables of every mapping under ``source`` (pages stay cached; readers just fault again)."""
    for storage in storages(source):
        drop = getattr(storage, "drop_page_tables", None)
        if drop is not None:
            drop()
