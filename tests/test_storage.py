"""The storage layer: LocalFile reads, the header parsed from bytes, NpyArray over any Storage backend."""

from __future__ import annotations

import pickle
import re
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
import pytest

import npyfeed
from npyfeed.format import header_size, parse_header, read_header
from npyfeed.storage import AccessPattern, LocalFile, Storage


class BytesStorage:
    """A whole object held in memory: the smallest backend that satisfies the protocol (as a remote one would)."""

    def __init__(self, name: str, data: bytes) -> None:
        self._name, self._data = name, np.frombuffer(data, np.uint8)
        self.requests: list[tuple[int, int]] = []

    name = property(lambda self: self._name)
    size = property(lambda self: self._data.size)
    version: Hashable = property(lambda self: ("bytes", self._data.size))

    def read_into(self, offset: int, out: np.ndarray) -> None:
        self.requests.append((offset, out.size))
        out[:] = self._data[offset : offset + out.size]

    def gather(self, base: int, record_bytes: int, indices: np.ndarray, out: np.ndarray) -> None:
        starts = base + indices * record_bytes
        grid = starts[:, None] + np.arange(record_bytes)
        out.reshape(indices.size, record_bytes)[:] = self._data[grid]

    def check(self) -> None:
        pass

    def will_need(self, ranges: Sequence[tuple[int, int]]) -> None:
        pass

    def advise(self, pattern: AccessPattern) -> None:
        pass

    def close(self) -> None:
        pass


def _save(tmp_path: Path, a: np.ndarray, name: str = "a.npy") -> Path:
    path = tmp_path / name
    np.save(path, a)
    return path


def test_local_file_reads_ranges_and_gathers_records(tmp_path: Path) -> None:
    path = tmp_path / "b.bin"
    path.write_bytes(bytes(range(256)))
    with LocalFile(path) as s:
        assert isinstance(s, Storage)
        assert s.size == 256 and s.name == str(path)
        out = np.empty(5, np.uint8)
        s.read_into(10, out)
        assert out.tolist() == [10, 11, 12, 13, 14]
        out = np.empty(12, np.uint8)
        s.gather(100, 4, np.array([3, 0, 1], np.int64), out)  # any order, one run or not
        assert out.tolist() == [*range(112, 116), *range(100, 108)]
        s.gather(100, 4, np.array([0, 1, 2], np.int64), out)
        assert out.tolist() == list(range(100, 112))
        with pytest.raises(npyfeed.FileChangedError, match="ends at 256 bytes"):
            s.read_into(250, np.empty(10, np.uint8))


def test_parse_header_from_bytes_is_read_header(tmp_path: Path) -> None:
    a = np.arange(60, dtype=">i4").reshape(5, 3, 4)
    path = _save(tmp_path, a)
    data = path.read_bytes()
    local = read_header(path)
    remote = parse_header(data[:4096], len(data), "s3://bucket/a.npy")
    assert remote == local.__class__(**{**local.__dict__, "path": "s3://bucket/a.npy"})
    assert header_size(data[:12]) == local.data_offset
    with pytest.raises(ValueError, match="needs the first 128 bytes"):
        parse_header(data[:40], len(data), "a")
    with pytest.raises(npyfeed.NpyFormatError, match=r"s3://x: truncated \.npy"):
        parse_header(data[:200], 200, "s3://x")  # the object itself is short: the same error as a local file
    with pytest.raises(npyfeed.NpyFormatError, match=r"s3://x: invalid \.npy magic"):
        parse_header(b"PK\x03\x04" + data[4:], len(data), "s3://x")


def test_npy_array_over_any_storage_backend(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dt = np.dtype({"names": ["a", "b"], "formats": ["u1", "<f8"]}, align=True)  # 7 padding bytes per element
    a = np.zeros((50, 3), dt)
    a["a"], a["b"] = rng.integers(0, 255, (50, 3)), rng.random((50, 3))
    path = _save(tmp_path, a)
    raw = bytearray(path.read_bytes())
    header = read_header(path)
    # Fill the padding with a pattern, so copying it (or not) shows.
    body = np.frombuffer(raw, np.uint8, offset=header.data_offset).reshape(-1, 16)
    body[:, 1:8] = np.arange(1, 8, dtype=np.uint8)
    path.write_bytes(bytes(raw))
    storage = BytesStorage("mem://a.npy", bytes(raw))
    arr = npyfeed.NpyArray.from_storage(storage)
    assert arr.path == "mem://a.npy" and arr.shape == (50, 3) and arr.dtype == dt
    assert storage.requests == [(0, len(raw))]  # one first read (the object is under 4 KiB)
    mapped = np.load(path, mmap_mode="r")
    for rows in ([0, 7, 8, 9, 49], range(3, 20), [5]):
        # The oracle is the file's bytes: one-row slices of np.load's mapping (NumPy's own fancy-index copy
        # fills padding field by field, leaving whatever the fresh buffer held).
        expected = b"".join(mapped[i : i + 1].tobytes() for i in rows)
        assert arr[list(rows)].tobytes() == expected
        assert npyfeed.NpyArray(path)[list(rows)].tobytes() == expected
        assert b"\x01\x02\x03\x04\x05\x06\x07" in expected


@pytest.mark.parametrize("shape", [(7, 3), (6, 2, 5), (4, 3, 1)])
def test_fortran_rows_come_back_in_row_order(tmp_path: Path, shape: tuple[int, ...]) -> None:
    a = np.asfortranarray(np.arange(int(np.prod(shape)), dtype="<u2").reshape(shape))
    path = _save(tmp_path, a)
    arr = npyfeed.NpyArray(path)
    assert arr.fortran_order
    rows = np.array([0, 2, 3], np.int64)
    assert arr[rows].tobytes() == np.ascontiguousarray(a[rows]).tobytes()
    assert arr[::-1].tobytes() == np.ascontiguousarray(a[::-1]).tobytes()


def test_a_pickled_array_reopens_only_the_version_it_read(tmp_path: Path) -> None:
    path = _save(tmp_path, np.arange(10))
    arr = npyfeed.NpyArray(path)
    clone = pickle.loads(pickle.dumps(arr))
    assert clone[3] == 3
    np.save(tmp_path / "other.npy", np.arange(10.0))
    (tmp_path / "other.npy").replace(path)
    with pytest.raises(npyfeed.FileChangedError, match=re.escape(str(path))):
        pickle.loads(pickle.dumps(arr))


@pytest.mark.parametrize("cap", [True, -1, 1.5, "100", None])
def test_bad_max_header_size_is_a_config_error(tmp_path: Path, cap: object) -> None:
    path = _save(tmp_path, np.arange(3))
    for call in (
        lambda: npyfeed.NpyArray(path, max_header_size=cap),  # type: ignore[arg-type]
        lambda: read_header(path, max_header_size=cap),  # type: ignore[arg-type]
        lambda: parse_header(path.read_bytes(), 200, "a", max_header_size=cap),  # type: ignore[arg-type]
    ):
        with pytest.raises(npyfeed.ConfigError, match="max_header_size must be a non-negative int"):
            call()
    assert npyfeed.NpyArray(path, max_header_size=np.int64(200)).shape == (3,)


def test_npy_array_refuses_what_is_neither_a_path_nor_a_storage(tmp_path: Path) -> None:
    for bad in (3, b"x.npy", ["x.npy"], np.arange(3)):
        with pytest.raises(TypeError, match=r"a path or a npyfeed\.storage\.Storage"):
            npyfeed.NpyArray(bad)  # type: ignore[arg-type]
    with pytest.raises(
        npyfeed.ConfigError, match=r"size \(the object.s bytes\) must be a non-negative int, got -1 \(int\)"
    ):
        parse_header(b"\x93NUMPY", -1, "a")


def test_the_pread_gather_is_the_mapped_gather(tmp_path: Path) -> None:
    # The path taken without the SIGBUS guard (NPYFEED_SIGBUS_GUARD=0): one pread per run of records.
    path = tmp_path / "b.bin"
    path.write_bytes(np.random.default_rng(0).bytes(10_000))
    rng = np.random.default_rng(1)
    with LocalFile(path) as s:
        for indices in (np.arange(5, 60), rng.integers(0, 300, 40), np.array([7, 7, 8, 9, 2, 3])):
            mapped, pread = np.empty(indices.size * 33, np.uint8), np.empty(indices.size * 33, np.uint8)
            s.gather(17, 33, indices, mapped)
            s._pread_gather(17, 33, indices, pread.reshape(indices.size, 33))
            assert (
                mapped.tobytes()
                == pread.tobytes()
                == b"".join(path.read_bytes()[17 + i * 33 : 17 + (i + 1) * 33] for i in indices)
            )
