"""Warm reads in file order on the consumer's thread: a few batches at a time copied from the files' mappings into
a small recycled buffer, instead of read ahead on threads.

Data in the page cache copies at memory speed, and the read threads then cost more than the copy: handing reads
to a thread and back, and 4 MiB read buffers that leave the cache before the consumer takes them. Here each
~512 KiB of batches is one copy into a buffer the consumer just let go (it stays in the core's cache), checked
like every read (the file's version after each copy, its path every 4 MiB), and handed over as views of it.

Used for a pass in file order without a transform, over local C-order files, when nothing asked for read-ahead
(``prefetch`` and ``io_hints=True`` not given) and reads are fast: copies that waited for storage (major page
faults) and were slower than the kernel-hint threshold (cold data) hand the rest of the pass to the read threads,
which read ahead and hint the kernel.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from typing import Any, cast

from npyfeed.loader.batch_errors import batch_error
from npyfeed.loader.buffers import Ring
from npyfeed.loader.kernel_hints import KernelHints
from npyfeed.loader.metrics import DataWait
from npyfeed.shard import Layout
from npyfeed.sources.array import NpyArray
from npyfeed.sources.columns import Columns

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]

__all__ = ["GROUP_BYTES", "can_read_in_order", "read_in_order"]

GROUP_BYTES = 512 << 10  # batches copied at once: half a core's L2 here, so two buffers in turn stay cached
CHECK_BYTES = 4 << 20  # the path is checked (stat) and the account kept once per this much
RING_BUFFERS = 4  # group buffers kept: two in turn while the consumer drops its batches, more if it keeps a few


def can_read_in_order(source: Columns) -> bool:
    """Whether every column can be copied by runs of rows on the consumer's thread (local files, C order)."""
    return all(isinstance(a, NpyArray) and a.copies_runs for a in source.arrays)


def major_faults() -> int:
    """Page faults of this thread that waited for storage (the data was not in the page cache); where they cannot
    be counted (no ``resource`` module), a count that always grows: every slow copy then counts as cold."""
    if resource is None:
        return time.perf_counter_ns()
    return resource.getrusage(getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)).ru_majflt


def _groups(layout: Layout, indices: range, per_group: int) -> Iterator[tuple[int, int, int, int]]:
    """``(first batch, batches, first row, rows)`` of each group: consecutive batches whose rows are one run."""
    if indices.step == 1 and layout.count == 1:
        # One worker's consecutive batches are consecutive positions (a sequential order: rows).
        for i in range(indices.start, indices.stop, per_group):
            j = min(i + per_group, indices.stop)
            lo, hi = layout.positions(i)[0], layout.positions(j - 1)[1]
            yield i, j - i, lo, hi - lo
    else:
        for i in indices:
            lo, hi = layout.positions(i)
            yield i, 1, lo, hi - lo


def read_in_order(
    source: Columns,
    layout: Layout,
    indices: range,
    hints: KernelHints,
    metrics: DataWait,
    *,
    epoch: int,
    batch_size: int,
    count_mapped: Any,
) -> Generator[tuple[int, Any], None, range]:
    """``(index, batch)`` for batches ``indices`` of a sequential pass laid out by ``layout``, copied here; returns
    the batches left to the read threads (empty unless reads turned slow)."""
    arrays = cast(list[NpyArray], list(source.arrays))  # as can_read_in_order found them
    single = source.kind == "array"
    row_bytes = source.row_bytes
    per_group = max(1, GROUP_BYTES // max(1, batch_size * row_bytes)) if indices.step == 1 else 1
    cap = per_group * batch_size
    ring = Ring([((cap, *a.shape[1:]), a.dtype) for a in arrays], RING_BUFFERS)
    done = 0  # batches handed over
    nbytes = rows_since = batches_since = 0
    seconds = 0.0
    asked = time.perf_counter()
    faults = major_faults()
    try:
        for first, batches, lo, rows in _groups(layout, indices, per_group):
            began = time.perf_counter()
            outs, raws = ring.take()
            try:
                if not rows_since:
                    for a in arrays:
                        a.check()
                for a, raw in zip(arrays, raws, strict=True):
                    a.copy_run(lo, raw[:rows])
            except Exception as e:
                raise batch_error(source.paths, epoch, first, "read", e) from None
            took = time.perf_counter() - began
            seconds += took
            nbytes += rows * row_bytes
            rows_since += rows
            batches_since += batches
            # Batches of a group are handed over in turn (a consumer that leaves mid-group needs no count).
            if batches == 1:
                yield first, outs[0][:rows] if single else source.pack([o[:rows] for o in outs])
            elif single:
                out = outs[0][:rows]  # the buffer's rows past the group's are not its batches'
                for start in range(0, rows, batch_size):
                    yield first, out[start : start + batch_size]
                    first += 1  # a group of several batches is consecutive batches
                del out  # no reference to the buffer once its batches are handed over (Ring.take)
            else:
                cols = [o[:rows] for o in outs]
                for start in range(0, rows, batch_size):
                    yield first, source.pack([c[start : start + batch_size] for c in cols])
                    first += 1
                del cols
            done += batches
            if nbytes >= CHECK_BYTES:
                metrics.record_chunk(seconds, batches_since, rows_since, nbytes, asked=asked, read=seconds)
                count_mapped(rows_since)
                waited, faults = faults, major_faults()
                copied, took_all = nbytes, seconds
                nbytes = rows_since = batches_since = 0
                seconds = 0.0
                asked = time.perf_counter()
                if faults > waited:
                    # Copies waited for storage (cold data): if they were slow too, the rest of the pass reads
                    # ahead on threads with the kernel's hints. Only then: a copy slowed by other processes taking
                    # the core (a loaded machine) is no reason to leave this thread.
                    hints.measured(copied, took_all)
                    if hints.hinting:
                        return indices[done:]
    finally:
        if batches_since:
            metrics.record_chunk(seconds, batches_since, rows_since, nbytes, asked=asked, read=seconds)
            count_mapped(rows_since)
    return indices[done:]
