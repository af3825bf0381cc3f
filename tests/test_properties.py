"""Property tests with NumPy as the oracle: whatever ``np.save`` writes, npyfeed reads back exactly.

``np.load(path, mmap_mode="r")`` is the oracle for metadata and for every kind of row key; results are compared
byte for byte (so NaNs, NaTs and odd bool bytes compare exactly), along with their dtype, shape and type.
The Loader must deliver every row exactly once per epoch, in sequential and shuffled orders.
"""

from __future__ import annotations

import itertools
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import npyfeed

SETTINGS = settings(max_examples=100, deadline=None)

# -- what to write ------------------------------------------------------------------------------------------------
_SCALARS = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64)),
    hnp.complex_number_dtypes(endianness="?"),
    hnp.byte_string_dtypes(max_len=5),
    hnp.unicode_string_dtypes(endianness="?", max_len=4),
    hnp.datetime64_dtypes(endianness="?"),
    hnp.timedelta64_dtypes(endianness="?"),
)
# Field names include ones NumPy must write as format 3.0 (not latin-1) and ones that look like Python-2 ints.
_NAMES = st.sampled_from(["a", "b", "x", "id", "f0", "x 10L", "caf\u00e9", "\u0436", "it's", 'say "hi"'])


def _structured(inner: st.SearchStrategy[np.dtype[Any]]) -> st.SearchStrategy[np.dtype[Any]]:
    field = st.one_of(
        st.tuples(_NAMES, inner),
        st.tuples(_NAMES, inner, hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=3)),
    )
    return st.lists(field, min_size=1, max_size=3, unique_by=lambda f: f[0]).map(np.dtype)


# Half scalar, half structured (nested fields, sub-arrays of scalars and of structures).
DTYPES = st.booleans().flatmap(
    lambda structured: _structured(st.recursive(_SCALARS, _structured, max_leaves=4)) if structured else _SCALARS
)


@st.composite
def arrays(draw: st.DrawFn, min_rows: int = 0) -> np.ndarray:
    """An array in C order (any shape, zero-length dimensions included) or in Fortran order.

    np.save writes ``fortran_order: True`` only for arrays that are Fortran- but not C-contiguous, so those get
    at least two dimensions of at least two entries.
    """
    dtype = draw(DTYPES)
    if draw(st.booleans()):
        rows = draw(st.integers(max(2, min_rows), 24))
        shape = (rows, *draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=4)))
        return np.asfortranarray(draw(hnp.arrays(dtype, shape)))
    rows = draw(st.integers(min_rows, 24))
    shape = (rows, *draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
    return draw(hnp.arrays(dtype, shape))


WRITERS = st.sampled_from(["np.save", (1, 0), (2, 0), (3, 0)])


def write(path: Path, array: np.ndarray, how: str | tuple[int, int]) -> None:
    """``np.save``, or ``write_array`` at a given format version (3.0 when field names need UTF-8)."""
    if how == "np.save":
        with warnings.catch_warnings():  # NumPy warns when field names make it write format 3.0
            warnings.filterwarnings("ignore", "Stored array in format", UserWarning)
            np.save(path, array)
        return
    with open(path, "wb") as f:
        try:
            np.lib.format.write_array(f, array, version=how)
        except UnicodeEncodeError:  # a field name outside latin-1: only version 3.0 can hold it
            f.seek(0)
            f.truncate()
            np.lib.format.write_array(f, array, version=(3, 0))


@contextmanager
def saved(array: np.ndarray, how: str | tuple[int, int]) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        write(path, array, how)
        yield path


# -- row keys -----------------------------------------------------------------------------------------------------
def _axis_keys(n: int, *, arrays: bool = True) -> list[st.SearchStrategy[Any]]:
    bound = st.one_of(st.none(), st.integers(-n - 3, n + 3))
    keys: list[st.SearchStrategy[Any]] = [
        st.builds(slice, bound, bound, st.one_of(st.none(), st.integers(-4, 4).filter(bool))),
    ]
    if n:
        keys.append(st.integers(-n, n - 1))
    if arrays and n:
        keys.append(st.lists(st.integers(-n, n - 1), min_size=1, max_size=3))
    return keys


def row_keys(shape: tuple[int, ...]) -> st.SearchStrategy[Any]:
    """Every kind of key npyfeed supports, in range, for an array of ``shape``; sometimes with more axes."""
    n = shape[0]
    first: list[st.SearchStrategy[Any]] = [
        *_axis_keys(n, arrays=False),
        st.lists(st.booleans(), min_size=n, max_size=n).map(lambda m: np.array(m, dtype=bool)),
        st.just(np.array([], dtype=np.int64)),
    ]
    if n:
        index = st.integers(-n, n - 1)
        first += [
            index.map(np.int64),
            st.lists(index, min_size=1, max_size=12),  # unsorted, repeated, negative
            st.lists(index, min_size=1, max_size=8).map(lambda k: np.array(k, dtype=np.int32)),
            st.lists(index, min_size=2, max_size=8).map(lambda k: np.array(k[: len(k) // 2 * 2]).reshape(2, -1)),
        ]
    row_key = st.one_of(*first)
    # a[rows, ...] with keys for further axes too: NumPy's rules for mixing them must hold.
    more = [st.tuples(row_key, *(st.one_of(*_axis_keys(d)) for d in shape[1:k])) for k in range(1, len(shape) + 1)]
    return st.one_of(row_key, row_key, *more)


def assert_same(result: Any, expected: Any) -> None:
    """Same kind of value (in-memory ndarray vs NumPy scalar), dtype, shape, and bytes."""
    assert isinstance(result, np.generic) == isinstance(expected, np.generic)
    if isinstance(result, np.ndarray):
        assert type(result) is np.ndarray
        assert result.flags.writeable  # a copy in memory, not a view of the read-only file mapping
    assert np.asarray(result).dtype == np.asarray(expected).dtype
    assert np.shape(result) == np.shape(expected)
    assert np.asarray(result).tobytes() == np.asarray(expected).tobytes()


def check_key(a: Any, oracle: np.ndarray, key: Any) -> None:
    """``a[key]`` is ``oracle[key]``, or both raise IndexError (e.g. index arrays that do not broadcast)."""
    try:
        expected = oracle[key]
    except IndexError:
        with pytest.raises(IndexError):
            a[key]
        return
    assert_same(a[key], expected)


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
