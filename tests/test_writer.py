"""NpyWriter against np.save / np.load as the oracle: bytes, dtypes, header versions, shards, crashes."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npyfeed
from npyfeed import ConfigError, NpyFormatError, NpyWriter
from npyfeed.cli import main as cli_main
from npyfeed.write.writer import npy_header, shard_paths

DTYPES = [
    np.dtype("<f4"),
    np.dtype(">f8"),
    np.dtype("u1"),
    np.dtype("?"),
    np.dtype("<c16"),
    np.dtype(">i2"),
    np.dtype("S5"),
    np.dtype("<U3"),
    np.dtype("<M8[s]"),
    np.dtype([("a", "<i4"), ("b", ">f8", (2,)), ("c", "S3")]),
    np.dtype({"names": ["x", "y"], "formats": ["u1", "<i8"], "offsets": [0, 8], "itemsize": 24}),  # padding
    np.dtype([("\u03b1", "<f4")]),  # a non-latin1 field name (alpha): format 3.0
]


def _np_save_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Stored array in format 2.0 / 3.0"
        np.save(buffer, array)
    return buffer.getvalue()


def _sample(dtype: np.dtype[Any], shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    raw = np.random.default_rng(seed).integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    array = raw.view(dtype).reshape(shape) if raw.size else np.zeros(shape, dtype)
    if dtype.kind in "fc":
        array = np.nan_to_num(array)
    return array


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("row_shape", [(), (3,), (2, 0), (1, 2, 2)])
def test_file_is_byte_identical_to_np_save(tmp_path: Path, dtype: np.dtype[Any], row_shape: tuple[int, ...]) -> None:
    expected = _sample(dtype, (11, *row_shape))
    path = tmp_path / "x.npy"
    with NpyWriter(path, dtype, row_shape) as w:
        for start, stop in [(0, 4), (4, 4), (4, 5), (5, 11)]:  # uneven batches, one empty
            w.write(expected[start:stop])
        assert w.rows_written == 11
    assert path.read_bytes() == _np_save_bytes(expected)
    got = np.load(path, allow_pickle=False)
    assert got.dtype == dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]  # no temporary left


def _structured(fields: int) -> np.dtype[Any]:
    return np.dtype([(f"field_{i:05d}", "<f4") for i in range(fields)])


def _fields_for_header(length: int) -> int:
    """The number of fields whose header just passes ``length`` bytes."""
    lo, hi = 1, 10_000
    while lo < hi:
        mid = (lo + hi) // 2
        if len(npy_header(_structured(mid), (0,))) - 10 >= length:
            hi = mid
        else:
            lo = mid + 1
    return lo


def test_header_version_switches_from_1_to_2_where_numpy_switches(tmp_path: Path) -> None:
    boundary = _fields_for_header(65535)
    versions = {}
    for fields in (boundary - 2, boundary - 1, boundary, boundary + 1):
        dtype = _structured(fields)
        expected = _sample(dtype, (3,), seed=fields)
        path = tmp_path / f"s{fields}.npy"
        with NpyWriter(path, dtype) as w:
            w.write(expected[:1])
            w.write(expected[1:])
        raw = path.read_bytes()
        assert raw == _np_save_bytes(expected)
        versions[fields] = raw[6]
        assert np.load(path, max_header_size=200_000).tobytes() == expected.tobytes()
        assert npyfeed.open(path, max_header_size=200_000)[2].tobytes() == expected[2].tobytes()
    assert versions[boundary - 2] == 1 and versions[boundary + 1] == 2


def test_non_latin1_field_names_get_format_3(tmp_path: Path) -> None:
    path = tmp_path / "u.npy"
    with NpyWriter(path, [("名前", "<i4")]) as w:
        w.write(np.zeros(2, [("名前", "<i4")]))
    assert path.read_bytes()[6:8] == b"\x03\x00"
    assert np.load(path)["名前"].tolist() == [0, 0]


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), max_size=12),
    dtype=st.sampled_from(DTYPES[:10]),
    row=st.sampled_from([(), (2,), (3, 1)]),
    shard_rows=st.one_of(st.none(), st.integers(1, 50)),
)
def test_unknown_lengths_round_trip(
    tmp_path_factory: pytest.TempPathFactory,
    sizes: list[int],
    dtype: np.dtype[Any],
    row: tuple[int, ...],
    shard_rows: int | None,
) -> None:
    d = tmp_path_factory.mktemp("w")
    expected = _sample(dtype, (sum(sizes), *row), seed=len(sizes))
    row_bytes = dtype.itemsize * int(np.prod(row))
    shard_bytes = None if shard_rows is None else len(npy_header(dtype, (0, *row))) + shard_rows * row_bytes
    target = d / "x.npy" if shard_bytes is None else d / "shards" / "x.npy"
    with NpyWriter(target, dtype, row, shard_bytes=shard_bytes) as w:
        offset = 0
        for n in sizes:  # the writer never learns the total
            w.write(expected[offset : offset + n])
            offset += n
    if shard_bytes is None:
        got = np.load(d / "x.npy")
        assert got.shape == expected.shape and got.dtype == dtype and got.tobytes() == expected.tobytes()
    else:
        files = sorted(d.glob("shards/x_*.npy"))
        assert len(files) == max(1, -(-len(expected) // shard_rows))  # type: ignore[operator]
        assert all(f.stat().st_size <= shard_bytes for f in files)
        loaded = [np.load(f) for f in files]
        assert all(part.dtype == dtype and part.shape[1:] == row for part in loaded)
        assert b"".join(part.tobytes() for part in loaded) == expected.tobytes()
        opened = npyfeed.open(str(d / "shards" / "x_*.npy"))
        assert len(opened) == len(expected)
        assert opened[:].tobytes() == expected.tobytes()
    assert sorted(p.name for p in d.iterdir()) == (["x.npy"] if shard_bytes is None else ["shards"])


def test_zero_rows(tmp_path: Path) -> None:
    with NpyWriter(tmp_path / "e.npy", ">f4", (4,)):
        pass
    got = np.load(tmp_path / "e.npy")
    assert got.shape == (0, 4) and got.dtype == np.dtype(">f4")
    with NpyWriter(tmp_path / "s" / "s.npy", "<i8", shard_bytes=1000):
        pass
    assert [p.name for p in tmp_path.glob("s/s_*.npy")] == ["s_000.npy"]
    assert len(npyfeed.open(str(tmp_path / "s" / "s_*.npy"))) == 0


def test_shard_names_widen_past_1000_so_they_sort(tmp_path: Path) -> None:
    assert [Path(p).name for p in shard_paths(tmp_path / "t.npy", 3)] == ["t_000.npy", "t_001.npy", "t_002.npy"]
    names = [Path(p).name for p in shard_paths(tmp_path / "t.npy", 1001)]
    assert names[0] == "t_0000.npy" and names[-1] == "t_1000.npy" and sorted(names) == names
    with NpyWriter(tmp_path / "t" / "t.npy", "u1", shard_bytes=130) as w:  # 128-byte header + 2 rows per shard
        w.write(np.arange(7, dtype="u1"))
    assert sorted(p.name for p in tmp_path.glob("t/t_*.npy")) == [f"t_00{i}.npy" for i in range(4)]
    np.testing.assert_array_equal(npyfeed.open(str(tmp_path / "t" / "t_*.npy"))[:], np.arange(7, dtype="u1"))


def test_target_holds_nothing_until_close_and_exceptions_remove_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "x.npy"
    np.save(target, np.arange(3))  # an earlier version must survive a failed rewrite
    with pytest.raises(RuntimeError, match="halfway"), NpyWriter(target, np.float32, (2,)) as w:
        w.write(np.ones((5, 2)))
        (temp,) = tmp_path.glob(".x.npy.*.partial")
        with pytest.raises(NpyFormatError, match="magic"):
            npyfeed.open(temp)
        with pytest.raises(ValueError):
            np.load(temp)
        raise RuntimeError("halfway")
    assert sorted([p.name for p in tmp_path.iterdir()]) == ["x.npy"]
    np.testing.assert_array_equal(np.load(target), np.arange(3))

    w = NpyWriter(target, np.float32, (2,))
    w.write(np.ones((1, 2)))
    w.abort()
    w.abort()
    assert sorted([p.name for p in tmp_path.iterdir()]) == ["x.npy"]
    with pytest.raises(ConfigError, match="after close"):
        w.write(np.ones((1, 2)))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.ones((2, 3)), r"shape \(2, 3\), expected \(n, \*row_shape\) with row_shape \(2,\)"),
        (np.ones(2), r"shape \(2,\)"),
        (np.ones((2, 2), np.complex64), "cannot be cast to float32 under casting='same_kind'"),
        (np.array([["a", "b"]]), "dtype <U1"),
    ],
)
def test_bad_rows_are_refused_naming_the_file(tmp_path: Path, rows: np.ndarray, message: str) -> None:
    with NpyWriter(tmp_path / "x.npy", np.float32, (2,)) as w:
        w.write(np.zeros((1, 2), np.float64))  # same_kind: float64 rows into a float32 file
        with pytest.raises(ConfigError, match=rf"x\.npy.*{message}"):
            w.write(rows)
    assert np.load(tmp_path / "x.npy").shape == (1, 2)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="object"):
        NpyWriter(tmp_path / "x.npy", object)
    with pytest.raises(ConfigError, match="row_shape"):
        NpyWriter(tmp_path / "x.npy", "f4", (-1,))
    with pytest.raises(ConfigError, match="cannot hold"):
        NpyWriter(tmp_path / "x.npy", "f4", (100,), shard_bytes=200)
    np.save(tmp_path / "x_000.npy", np.zeros(2))
    with pytest.raises(ConfigError, match=r"one new directory .* already holds x_000\.npy"):
        NpyWriter(tmp_path / "x.npy", "f8", shard_bytes=10_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_000.npy"]


_CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    from npyfeed import NpyWriter
    w = NpyWriter(sys.argv[1], np.float32, (256,), shard_bytes=int(sys.argv[2]) or None)
    batch = np.ones((64, 256), np.float32)
    for i in range(10**9):
        w.write(batch)
        if i == 20:
            print("writing", flush=True)
    """
)


@pytest.mark.parametrize("shard_bytes", [0, 300_000])
def test_sigkill_mid_write_leaves_no_valid_looking_target(
    tmp_path: Path, shard_bytes: int, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "big.npy" if not shard_bytes else tmp_path / "out" / "big.npy"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(target), str(shard_bytes)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "writing\n"
        time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
    assert not target.exists() and not (tmp_path / "out").exists()  # nothing a glob or np.load would take
    temps = sorted(tmp_path.glob(".big*.partial") if not shard_bytes else tmp_path.glob(".out.*.partial/.big*"))
    assert temps and (shard_bytes == 0) == (len(temps) == 1)
    for temp in temps:
        with pytest.raises((ValueError, EOFError)):  # EOFError: killed between creating a shard and its first write
            np.load(temp)
        with pytest.raises(NpyFormatError):
            npyfeed.open(temp)
    capsys.readouterr()
    assert cli_main(["inspect", str(max(temps, key=lambda t: t.stat().st_size))]) == 1
    err = capsys.readouterr().err
    assert "unfinished npyfeed.NpyWriter temporary" in err and "big.npy" in err and "rows written" in err
