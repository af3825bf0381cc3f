"""Epoch orders: permutations, determinism, reshuffling, pinned outputs, O(1) memory at huge sizes."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npyfeed import ConfigError
from npyfeed.order.orders import BlockShuffle, ChunkCache, GlobalShuffle, Sequential


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3000), seed=st.integers(0, 2**63 - 1), epoch=st.integers(0, 10**6))
def test_global_shuffle_is_a_permutation(n: int, seed: int, epoch: int) -> None:
    rows = GlobalShuffle(n, seed).rows(epoch, 0, n)
    assert rows.dtype == np.int64
    assert np.array_equal(np.sort(rows), np.arange(n))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 2000),
    block=st.integers(1, 64),
    window=st.integers(1, 8),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 100),
)
def test_block_shuffle_is_a_permutation_and_hints_cover_reads(
    n: int, block: int, window: int, seed: int, epoch: int
) -> None:
    order = BlockShuffle(n, seed, block, window)
    rows = order.rows(epoch, 0, n)
    assert np.array_equal(np.sort(rows), np.arange(n))
    # Any cut into pieces gives the same order: a pure function of position.
    pieces = [order.rows(epoch, a, min(a + 37, n)) for a in range(0, n, 37)]
    assert np.array_equal(np.concatenate(pieces), rows)
    # The read-ahead hints of each window cover exactly the rows that window reads.
    for start in range(0, n, order.window_rows):
        stop = min(start + order.window_rows, n)
        hinted = np.concatenate([np.arange(a, b) for a, b in order.hint_ranges(epoch, start, stop)])
        assert np.array_equal(np.sort(hinted), np.sort(order.rows(epoch, start, stop)))


def test_block_shuffle_keeps_batches_within_a_window_of_blocks() -> None:
    order = BlockShuffle(10_000, seed=5, block_rows=100, window_blocks=4)
    rows = order.rows(0, 0, 400)  # the first window
    assert len(np.unique(rows // 100)) == 4  # drawn from exactly 4 blocks
    assert not np.array_equal(rows, np.sort(rows))  # and mixed within them


def test_shuffle_is_deterministic_per_seed_and_differs_across_epochs_and_seeds() -> None:
    a, b = GlobalShuffle(1000, 42), GlobalShuffle(1000, 42)
    assert np.array_equal(a.rows(3, 0, 1000), b.rows(3, 0, 1000))
    assert not np.array_equal(a.rows(0, 0, 1000), a.rows(1, 0, 1000))
    assert not np.array_equal(a.rows(0, 0, 1000), GlobalShuffle(1000, 43).rows(0, 0, 1000))


def test_pinned_orders_never_change_silently() -> None:
    # Changing these breaks every saved checkpoint and every reproducible experiment: bump the state version.
    assert GlobalShuffle(10, 0).rows(0, 0, 10).tolist() == [4, 9, 8, 6, 7, 1, 5, 0, 3, 2]
    assert GlobalShuffle(10, 0).rows(1, 0, 10).tolist() == [1, 0, 7, 5, 8, 2, 6, 3, 9, 4]
    assert BlockShuffle(20, 3, 4, 2).rows(0, 0, 20).tolist() == [
        11, 8, 13, 14, 12, 15, 10, 9, 4, 7, 5, 3, 1, 6, 0, 2, 17, 16, 19, 18,
    ]  # fmt: skip


def test_shuffle_is_close_to_uniform() -> None:
    # Where row 0 lands over many epochs: every position about equally often (chi-square, fixed seed).
    n, epochs = 16, 8000
    order = GlobalShuffle(n, 1)
    counts = np.zeros((n, n), np.int64)
    for epoch in range(epochs):
        counts[np.arange(n), order.rows(epoch, 0, n)] += 1
    expected = epochs / n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    dof = (n - 1) ** 2
    assert chi2 < dof + 6 * np.sqrt(2 * dof)


def test_adjacent_positions_are_decorrelated() -> None:
    rows = GlobalShuffle(1_000_000, 9).rows(0, 0, 100_000).astype(np.float64)
    assert abs(np.corrcoef(rows[:-1], rows[1:])[0, 1]) < 0.02
    assert abs(np.corrcoef(np.arange(rows.size), rows)[0, 1]) < 0.02


def test_seventeen_billion_rows_start_at_once_in_constant_memory() -> None:
    n = 17_000_000_000
    tracemalloc.start()
    try:
        rows = ChunkCache(GlobalShuffle(n, 7)).rows(0, 5_000_000_000, 5_000_000_256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows.size == 256 and np.unique(rows).size == 256
    assert rows.min() >= 0 and rows.max() < n
    assert peak < 64 << 20  # one 64 Ki-position chunk and temporaries, not 136 GB of indices


def test_chunk_cache_returns_the_same_rows_as_the_order() -> None:
    order = GlobalShuffle(100_000, 3)
    cached = ChunkCache(order, chunk=1000, keep=2)
    for start, stop in [(0, 10), (990, 1010), (5000, 9000), (99_990, 100_000), (7, 7)]:
        assert np.array_equal(cached.rows(1, start, stop), order.rows(1, start, stop))


def test_sequential_and_range_errors() -> None:
    assert Sequential(5).rows(0, 1, 4).tolist() == [1, 2, 3]
    with pytest.raises(ConfigError, match="outside an epoch of 5 rows"):
        Sequential(5).rows(0, 3, 6)
    with pytest.raises(ConfigError, match="block_rows"):
        BlockShuffle(10, 0, 0, 1)
