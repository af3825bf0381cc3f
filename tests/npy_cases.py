"""What ``np.save`` can write and every row key npyfeed supports: hypothesis strategies and checks with NumPy as the
oracle, shared by the property tests of local files, object stores and the chunk cache."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = ["DTYPES", "WRITERS", "arrays", "assert_same", "check_key", "row_keys", "saved", "write"]

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
