"""Orders sized for where the bytes live: block geometry per store, and what a global shuffle costs remotely.

A local read costs a page fault or a ``pread``; a request to an object store costs 10-50 ms of latency whatever
its size, so the two want different block shuffles:

- local files: 1 MiB blocks, 16 per window (one efficient sequential read per block; a 16 MiB window was the
  best cold under a 256 MiB cap);
- object stores (``s3://``, ``gs://``, ``http(s)://``): 8 MiB blocks, each fetched once as full-size requests all
  in flight, and as many per window (2 to 16) as let three windows fit in the store's read-ahead pool,
  ``prefetch_bytes`` (96 MiB: 4 blocks, 32 MiB windows; a pool under 48 MiB gets smaller blocks). Three: reads
  running ahead of the consumer hint the window after theirs while the reads of the window before are still
  copying from the pool; with room for two, pieces were evicted before use and fetched again (1.25x the bytes of
  an epoch, measured on a 128 MiB object; 1.00x with three).

The geometry depends only on the files (local or not, row bytes) and ``storage_options``, never on the memory
left, so every worker of a job computes the same order. It is part of a saved state: a Loader whose geometry was
chosen by default adopts the saved one (see :meth:`npyfeed.Loader.set_state`), so local and remote states are
interchangeable.

:func:`global_shuffle_warning` estimates the requests a global shuffle makes per batch (rows merged across
``gap_bytes`` gaps, as :func:`npyfeed.storage.ranges.plan_requests` does) and compares them with a block shuffle.
"""

from __future__ import annotations

from typing import Any

from npyfeed.loader.budget import storages
from npyfeed.sources.base import row_nbytes
from npyfeed.storage.urls import is_url

__all__ = [
    "LOCAL_BLOCK_BYTES",
    "LOCAL_WINDOW_BLOCKS",
    "REMOTE_BLOCK_BYTES",
    "default_geometry",
    "global_shuffle_warning",
    "is_remote",
]

LOCAL_BLOCK_BYTES = 1 << 20
LOCAL_WINDOW_BLOCKS = 16
REMOTE_BLOCK_BYTES = 8 << 20
_REMOTE_WINDOW_BLOCKS = (2, 16)  # fewer than 2 blocks per window would not mix blocks at all
_WINDOWS_IN_POOL = 3  # windows the read-ahead pool must hold at once (see above)
_MIN_REMOTE_BLOCK_BYTES = 64 << 10  # the read-ahead ignores smaller ranges (left to the gathers)
# Warn when a global shuffle needs at least this many times the requests of a block shuffle per epoch, and at
# least _WARN_PER_BATCH requests per batch (fewer are one round trip, whatever the order).
_WARN_RATIO = 2.0
_WARN_PER_BATCH = 4.0


def is_remote(storage: Any) -> bool:
    """True for a storage backend in an object store (it has a request client)."""
    return is_url(storage.name) and hasattr(storage, "client")


def _remote_columns(source: Any) -> list[tuple[Any, list[Any]]]:
    """``(column, its remote storages)`` for every column of a Columns with at least one remote storage."""
    out = []
    for array in getattr(source, "arrays", ()):
        remote = [s for s in storages(array) if is_remote(s)]
        if remote:
            out.append((array, remote))
    return out


def default_geometry(source: Any) -> tuple[int, int]:
    """``(block_rows, window_blocks)`` for a block shuffle of ``source`` (a Columns) when the user gave none."""
    row_bytes = max(1, int(source.row_bytes))
    remote = _remote_columns(source)
    if not remote:
        return max(1, LOCAL_BLOCK_BYTES // row_bytes), LOCAL_WINDOW_BLOCKS
    pool = min(s.options.prefetch_bytes for _, found in remote for s in found)
    low, high = _REMOTE_WINDOW_BLOCKS
    # A pool too small for three windows of two 8 MiB blocks gets smaller blocks.
    block_bytes = min(REMOTE_BLOCK_BYTES, max(_MIN_REMOTE_BLOCK_BYTES, pool // (_WINDOWS_IN_POOL * low)))
    block_rows = max(1, block_bytes // row_bytes)
    # Each column's pool holds its share of three windows: window rows x that column's row bytes.
    widest = max(1, max(row_nbytes(array) for array, _ in remote))
    return block_rows, max(low, min(high, pool // (_WINDOWS_IN_POOL * block_rows * widest)))


def global_shuffle_warning(source: Any, batch_size: int, block_rows: int, gathered: int | None = None) -> str | None:
    """The warning for a global shuffle of ``source`` (a Columns) over an object store, or None if it costs
    about as few requests as a block shuffle of ``block_rows`` blocks (rows large enough, or merged anyway).

    ``gathered``: rows sorted and merged together (a read of several batches; default one batch).
    """
    # Objects read through a local cache (storage_options["cache_dir"]) are fetched in whole chunks once, whatever
    # the order (and the cache warns itself if it is too small for a global shuffle).
    remote = [(a, f) for a, f in _remote_columns(source) if all(getattr(s, "cache", None) is None for s in f)]
    n = len(source)
    if not remote or n == 0:
        return None
    batch = min(batch_size, n)
    together = min(n, max(batch, gathered or batch))
    batches = -(-n // batch)
    per_batch = block_epoch = 0.0
    for array, found in remote:
        opts = found[0].options
        row = max(1, row_nbytes(array))
        # `together` random rows of n, sorted: a row starts a new request when none of the next gap_rows + 1 rows
        # is among them (plan_requests merges rows fewer than gap_bytes apart).
        alone = (1 - together / n) ** (opts.gap_bytes // row + 1)
        pieces = -(-row // opts.request_bytes)  # a row larger than a request is fetched in pieces
        per_batch += (1 + (together - 1) * alone) * pieces * batch / together
        full, tail = divmod(n, block_rows)  # each block is fetched alone, in pieces of at most request_bytes
        block_epoch += full * -(-block_rows * row // opts.request_bytes) + -(-tail * row // opts.request_bytes)
    epoch = per_batch * batches
    if per_batch < _WARN_PER_BATCH or epoch < _WARN_RATIO * block_epoch:
        return None
    first = found_name = remote[0][1][0].name
    more = sum(len(found) for _, found in remote) - 1
    if more:
        found_name = f"{first} and {more} more object{'s' if more > 1 else ''}"
    request = _size(remote[0][1][0].options.request_bytes)
    return (
        f"global shuffle of {found_name}: rows of {source.row_bytes:,} B, about {per_batch:,.0f} requests per "
        f"batch of {batch} ({batch * len(remote) / per_batch:.1f} rows per request), ~{epoch:,.0f} requests per "
        f"epoch; shuffle='block' reads {_size(min(block_rows, n) * source.row_bytes)} blocks in requests of up "
        f"to {request}, ~{block_epoch:,.0f} requests per epoch (silence with "
        "warnings.filterwarnings('ignore', category=npyfeed.RemoteShuffleWarning))"
    )


def _size(nbytes: int) -> str:
    """``8388608`` -> ``"8 MiB"``, ``1536`` -> ``"1.5 KiB"``, ``100`` -> ``"100 B"``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.3g} {unit}"
    return f"{nbytes:,} B"
