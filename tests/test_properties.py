"""Property tests with NumPy as the oracle: whatever ``np.save`` writes, npyfeed reads back exactly.

``np.load(path, mmap_mode="r")`` is the oracle for metadata and for every kind of row key; results are compared
byte for byte (so NaNs, NaTs and odd bool bytes compare exactly), along with their dtype, shape and type.
The Loader must deliver every row exactly once per epoch, in sequential and shuffled orders.
"""

from __future__ import annotations

import itertools
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import npyfeed
from npy_cases import WRITERS, arrays, assert_same, check_key, row_keys, saved, write

SETTINGS = settings(max_examples=100, deadline=None)


# -- open(): metadata and indexing against np.load ---------------------------------------------------------------
@SETTINGS
@given(array=arrays(), how=WRITERS, data=st.data())
def test_open_matches_np_load(array, how, data):
    with saved(array, how) as path:
        oracle = np.load(path, mmap_mode="r")
        a = npyfeed.open(path)
        assert isinstance(a, npyfeed.NpyArray)
        assert (a.shape, a.dtype, len(a)) == (oracle.shape, oracle.dtype, len(oracle))
        assert a.dtype.byteorder == oracle.dtype.byteorder
        header = npyfeed.read_header(path)
        event(f"fortran_order={header.fortran_order}, dtype kind {a.dtype.kind!r}")
        event(f"version {header.version}")
        assert header.fortran_order == (oracle.flags.f_contiguous and not oracle.flags.c_contiguous)
        assert header.data_offset % 64 == 0
        if how != "np.save":
            assert header.version == how or header.version == (3, 0)
        for _ in range(4):
            check_key(a, oracle, data.draw(row_keys(a.shape), label="key"))
        assert_same(a[:], np.asarray(oracle))


@pytest.mark.parametrize("dtype", ["S1", "U3", "f8", "V4"])
@pytest.mark.parametrize("key", [(0,), (-1,), (0, ...), (np.int64(1),)])
def test_int_first_in_a_tuple_key_on_a_1d_array(tmp_path: Path, dtype: str, key: tuple[Any, ...]) -> None:
    """A row of a 1-d array is a scalar (``np.bytes_`` for 'S'); found by the property above: ``a[(0,)]`` raised."""
    path = tmp_path / "a.npy"
    np.save(path, np.zeros(2, dtype=dtype))
    expected = np.load(path, mmap_mode="r")[key]
    got = npyfeed.open(path)[key]
    assert isinstance(got, np.ndarray) == isinstance(expected, np.ndarray)  # np.load's are memmaps, ours copies
    assert np.asarray(got).dtype == np.asarray(expected).dtype and np.shape(got) == np.shape(expected)
    assert np.asarray(got).tobytes() == np.asarray(expected).tobytes()


@SETTINGS
@given(array=arrays(), data=st.data())
def test_out_of_range_ints_raise_index_error(array, data):
    n = len(array)
    bad = data.draw(st.one_of(st.integers(n, n + 5), st.integers(-n - 5, -n - 1)), label="bad")
    with saved(array, "np.save") as path:
        oracle = np.load(path, mmap_mode="r")
        a = npyfeed.open(path)
        for key in (bad, np.int64(bad), [0, bad] if n else [bad], np.array([bad])):
            with pytest.raises(IndexError):
                oracle[key]
            with pytest.raises(IndexError):
                a[key]
        with pytest.raises(IndexError):
            a[np.ones(n + 1, dtype=bool)]


@SETTINGS
@given(array=arrays(), cuts=st.lists(st.floats(0, 1), max_size=3), data=st.data())
def test_shards_and_splits_match_the_concatenated_array(array, cuts, data):
    # The same rows split over several files (ConcatArray), and a file cut in two row ranges (RowSlice).
    n = len(array)
    bounds = sorted({0, n, *(round(c * n) for c in cuts)})
    with tempfile.TemporaryDirectory() as tmp:
        whole = Path(tmp) / "whole.npy"
        write(whole, array, "np.save")
        expected = np.load(whole, mmap_mode="r")
        ranges = list(itertools.pairwise(bounds)) or [(0, 0)]
        paths = [Path(tmp) / f"x_{i:03d}.npy" for i in range(len(ranges))]
        for path, (lo, hi) in zip(paths, ranges, strict=True):
            write(path, array[lo:hi], "np.save")
        shards = npyfeed.open(paths)
        assert (shards.shape, shards.dtype, len(shards)) == (expected.shape, expected.dtype, len(expected))
        for _ in range(3):
            check_key(shards, expected, data.draw(row_keys(expected.shape), label="shard key"))
        cut = data.draw(st.integers(0, len(array)), label="cut")
        first, second = npyfeed.split(whole, cut)
        for part, rows in ((first, array[:cut]), (second, array[cut:])):
            assert len(part) == len(rows)
            check_key(part, rows, data.draw(row_keys(rows.shape), label="split key"))


# -- the Loader: every row exactly once per epoch ----------------------------------------------------------------
LOADER = st.fixed_dictionaries(
    {
        "batch_size": st.integers(1, 9),
        "shuffle": st.sampled_from([False, True, "block"]),
        "seed": st.integers(0, 2**63 - 1),
    }
)


@SETTINGS
@given(array=arrays(), how=WRITERS, options=LOADER, drop_remainder=st.booleans())
def test_loader_yields_every_row_exactly_once_per_epoch(array, how, options, drop_remainder):
    n = len(array)
    with saved(array, how) as path:
        ids = path.parent / "id.npy"
        np.save(ids, np.arange(n, dtype=np.int64))
        oracle = np.load(path, mmap_mode="r")
        source = {"id": ids, "x": path}
        with npyfeed.Loader(source, drop_remainder=drop_remainder, num_threads=2, **options) as loader:
            expected_rows = n // options["batch_size"] * options["batch_size"] if drop_remainder else n
            orders = []
            for _epoch in range(2):
                batches = list(loader)
                assert len(batches) == len(loader)
                seen = []
                for batch in batches:
                    assert set(batch) == {"id", "x"}
                    assert 0 < len(batch["id"]) <= options["batch_size"]
                    assert_same(batch["x"], oracle[batch["id"]])
                    seen.extend(batch["id"].tolist())
                assert len(seen) == expected_rows
                assert len(set(seen)) == len(seen)
                if not drop_remainder:
                    assert sorted(seen) == list(range(n))
                if options["shuffle"] is False:
                    assert seen == list(range(expected_rows))
                orders.append(seen)
        with npyfeed.Loader(source, drop_remainder=drop_remainder, num_threads=2, **options) as again:
            assert [[i for b in again for i in b["id"].tolist()] for _ in range(2)] == orders


@SETTINGS
@given(array=arrays(min_rows=1), options=LOADER)
def test_loader_over_one_array_yields_a_permutation_of_its_rows(array, options):
    # Without an id column: the multiset of rows (as bytes) must equal the file's.
    with saved(array, "np.save") as path, npyfeed.Loader(path, num_threads=2, **options) as loader:
        oracle = np.load(path, mmap_mode="r")
        expected = Counter(row.tobytes() for row in np.asarray(oracle))
        for _epoch in range(2):
            rows = [row.tobytes() for batch in loader for row in batch]
            assert Counter(rows) == expected
            assert all(batch.dtype == oracle.dtype for batch in loader)
