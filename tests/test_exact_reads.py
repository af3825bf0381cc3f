"""Bit-exact reads: every read path returns the file's bytes, padding bytes of structured dtypes included.

The cases are NumPy's own (``numpy/lib/tests/test_format.py``: its basic and record arrays, the padded dtypes of
``test_load_padded_dtype`` and the dtypes of ``test_descr_to_dtype``), saved with random bytes in every byte,
padding too. The oracle is the file itself, read through a uint8 view of ``np.load(path, mmap_mode="r")``
(NumPy's own fancy-index copy moves structured dtypes field by field and leaves padding as it was).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import npyfeed

nt = pytest.importorskip("numpy.lib.tests.test_format")
# shared/ beside the repository (a CI clone, /work/main) or beside its worktree folder.
TESTDATA = next(
    (p / "shared" / "numpy-testdata" for p in Path(__file__).resolve().parents[1:4] if (p / "shared").is_dir()),
    Path("shared/numpy-testdata"),
)


def _numpy_cases() -> list[tuple[str, np.ndarray]]:
    cases = [(f"basic{i}", a) for i, a in enumerate(nt.basic_arrays) if a.dtype != object and a.ndim >= 1]
    cases += [(f"record{i}", a) for i, a in enumerate(nt.record_arrays)]
    cases += [
        (f"padded{i}", np.zeros((5, 2), dt)) for i, dt in enumerate([nt.dt1, nt.dt2, nt.dt3, nt.dt4, nt.dt5, nt.dt6])
    ]
    (descr_dtypes,) = [m.args[1] for m in nt.test_descr_to_dtype.pytestmark if m.name == "parametrize"]
    cases += [(f"descr{i}", np.zeros(4, dt)) for i, dt in enumerate(descr_dtypes) if not dt.hasobject]
    return cases


CASES = [(name, case, f) for name, case in _numpy_cases() for f in (False, True) if case.ndim >= 2 or not f]


def _random_bytes(a: np.ndarray, seed: int, fortran: bool) -> np.ndarray:
    """``a``'s dtype and shape, every byte (padding too) random."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, a.size * a.dtype.itemsize, dtype=np.uint8)
    out = raw.view(a.dtype).reshape(a.shape) if a.dtype.itemsize else np.zeros(a.shape, a.dtype)
    return np.asfortranarray(out) if fortran else out


def _file_rows(path: Path, rows: np.ndarray) -> bytes:
    """The bytes of ``rows`` as the file holds them, in C order: strides of np.load's mapping over uint8."""
    m = np.load(path, mmap_mode="r")
    raw = np.fromfile(path, np.uint8)
    itemsize = m.dtype.itemsize
    if m.size == 0 or itemsize == 0:
        return b""
    as_bytes = np.ndarray((*m.shape, itemsize), np.uint8, buffer=raw, offset=m.offset, strides=(*m.strides, 1))
    return np.ascontiguousarray(as_bytes[rows]).tobytes()


@pytest.mark.parametrize(("name", "case", "fortran"), CASES, ids=[f"{n}-{'F' if f else 'C'}" for n, _, f in CASES])
def test_every_index_path_returns_the_file_bytes(tmp_path: Path, name: str, case: np.ndarray, fortran: bool) -> None:
    a = _random_bytes(case, seed=len(name), fortran=fortran)
    path = tmp_path / "a.npy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dtypes with metadata: NumPy warns that it drops it
        np.save(path, a)
    arr = npyfeed.open(path)
    assert isinstance(arr, npyfeed.NpyArray)
    n = len(arr)
    everything = np.arange(n)
    repeats = np.array([n - 1, 0, n - 1, 0]) if n else everything
    keys: list[tuple[object, np.ndarray]] = [
        (slice(None), everything),
        (slice(None, None, -2), everything[::-2]),
        (repeats, repeats),
        (everything % 3 == 1, everything[everything % 3 == 1]),
    ]
    for key, rows in keys:
        got = arr[key]
        assert got.dtype == a.dtype
        assert got.tobytes() == _file_rows(path, rows), f"{name}[{key!r}]"
    if n:  # an int: a row, or for one dimension a NumPy scalar (native byte order, as np.load gives)
        expected = np.load(path, mmap_mode="r")[n - 1]
        got = arr[n - 1]
        assert isinstance(got, np.ndarray) == isinstance(expected, np.ndarray) and got.dtype == expected.dtype
        assert got.tobytes() == (expected.tobytes() if a.ndim == 1 else _file_rows(path, np.array([n - 1])))
    if n >= 2:  # the same file as two shards, and a split
        np.save(tmp_path / "p0.npy", a[: n // 2])
        np.save(tmp_path / "p1.npy", a[n // 2 :])
        shards = npyfeed.open([tmp_path / "p0.npy", tmp_path / "p1.npy"])
        rows = np.array([n - 1, 0, n // 2, n // 2 - 1])
        assert shards[rows].tobytes() == _file_rows(path, rows)
        assert shards[1:].tobytes() == _file_rows(path, everything[1:])


@pytest.mark.parametrize("shuffle", [False, True, "block"])
def test_loader_batches_are_the_file_bytes(tmp_path: Path, shuffle: bool | str) -> None:
    dt = np.dtype([("a", "u1"), ("b", "<i4"), ("c", "u1"), ("d", "<f8")], align=True)  # 10 padding bytes
    a = _random_bytes(np.zeros((300, 2), dt), seed=3, fortran=False)
    np.save(tmp_path / "x.npy", a)
    np.save(tmp_path / "i.npy", np.arange(300))
    loader = npyfeed.Loader({"x": tmp_path / "x.npy", "i": tmp_path / "i.npy"}, batch_size=32, shuffle=shuffle, seed=0)
    seen = 0
    for batch in loader:
        assert batch["x"].tobytes() == _file_rows(tmp_path / "x.npy", batch["i"])
        seen += len(batch["i"])
    assert seen == 300


def test_python2_long_suffix_only_on_numbers_never_inside_strings(tmp_path: Path) -> None:
    # A v1.0 header as Python 2 wrote it: `2L` forces the rewrite, which must leave the field name 'x 2L' alone.
    text = "{'descr': [('x 2L', '<i4'), ('y', '<i4')], 'fortran_order': False, 'shape': (2L, 3L), }"
    body = text.encode("latin1")
    body += b" " * (-(10 + len(body) + 1) % 64) + b"\n"
    path = tmp_path / "py2.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body + bytes(range(48)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # NumPy warns that the file came from Python 2
        expected = np.load(path)
    arr = npyfeed.open(path)
    assert arr.dtype.names == expected.dtype.names == ("x 2L", "y")
    assert arr.shape == expected.shape == (2, 3)
    assert arr[:].tobytes() == expected.tobytes()


@pytest.mark.skipif(not TESTDATA.is_dir(), reason="NumPy's test data (shared/numpy-testdata) is not here")
def test_numpy_test_data_files(tmp_path: Path) -> None:
    for name in ("python3.npy", "win64python2.npy"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            expected = np.load(TESTDATA / name)
        assert npyfeed.open(TESTDATA / name)[:].tobytes() == expected.tobytes() == np.ones(2).tobytes()
    for name in ("py2-objarr.npy", "py2-np0-objarr.npy", "py3-objarr.npy"):
        with pytest.raises(npyfeed.NpyFormatError, match="pickle"):
            npyfeed.open(TESTDATA / name)
