"""npyfeed convert against NumPy: Fortran -> C, .npz members, shards both ways, casts, the CLI, a memory cap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import npyfeed
from cgroups import memory_cap, peak_usage
from npyfeed import ConfigError, NpyFormatError
from npyfeed.cli import main
from npyfeed.write.convert import convert


def _data(shape: tuple[int, ...], dtype: Any, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 1000).astype(dtype)


def _save_fortran(path: Path, array: np.ndarray) -> None:
    """A Fortran-order .npy even where np.save would pick C order (one column, zero rows)."""
    with open(path, "wb") as f:
        fields = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": True, "shape": array.shape}
        np.lib.format.write_array_header_1_0(f, fields)
        f.write(array.tobytes(order="F"))


def _same(path: Path | str, expected: np.ndarray) -> None:
    got = np.load(path)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert (got.flags.c_contiguous and not np.isfortran(got)) or got.ndim < 2
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((1001, 7), "<f8"), ((300, 4, 5), ">i2"), ((97, 3, 2, 2), "u1"), ((50, 1), "<c8"), ((0, 3), "<f4")],
)
@pytest.mark.parametrize("memory_bytes", [1, 999, 1 << 20])
def test_fortran_to_c_order(tmp_path: Path, shape: tuple[int, ...], dtype: str, memory_bytes: int) -> None:
    expected = _data(shape, dtype)
    _save_fortran(tmp_path / "f.npy", expected)
    assert npyfeed.read_header(tmp_path / "f.npy").fortran_order
    result = convert(tmp_path / "f.npy", tmp_path / "c.npy", memory_bytes=memory_bytes)
    assert result.kind == "fortran" and result.rows == shape[0]
    assert not npyfeed.read_header(tmp_path / "c.npy").fortran_order
    _same(tmp_path / "c.npy", expected)


def test_structured_fortran_file_with_padding(tmp_path: Path) -> None:
    dtype = np.dtype({"names": ["a", "b"], "formats": ["u1", "<f8"], "offsets": [0, 8], "itemsize": 16})
    expected = np.zeros((40, 3), dtype)
    expected["a"], expected["b"] = np.arange(120).reshape(40, 3) % 256, np.arange(120.0).reshape(40, 3)
    np.save(tmp_path / "f.npy", np.asfortranarray(expected))
    convert(tmp_path / "f.npy", tmp_path / "c.npy", memory_bytes=100)
    records = np.load(tmp_path / "f.npy").view(np.dtype((np.void, 16)))  # raw bytes, padding included
    assert np.load(tmp_path / "c.npy").tobytes() == np.ascontiguousarray(records).tobytes()


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("fortran", [False, True])
def test_npz_member_to_npy(tmp_path: Path, compressed: bool, fortran: bool) -> None:
    images = _data((257, 6, 4), "<f4", seed=1)
    labels = np.arange(257, dtype=">i8")
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "data.npz", images=np.asfortranarray(images) if fortran else images, labels=labels)
    with zipfile.ZipFile(tmp_path / "data.npz") as zf:
        expected_type = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
        assert zf.getinfo("images.npy").compress_type == expected_type
    result = convert(f"{tmp_path / 'data.npz'}:images", tmp_path / "images.npy", memory_bytes=5000)
    assert result.kind == ("npz+fortran" if fortran else "npz")
    _same(tmp_path / "images.npy", images)
    convert(f"{tmp_path / 'data.npz'}:labels.npy", tmp_path / "labels.npy", dtype="<i8")
    _same(tmp_path / "labels.npy", labels.astype("<i8"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "images.npy", "labels.npy"]
    # To shards: a Fortran member is unpacked beside the shards' directory, which is published whole.
    result = convert(f"{tmp_path / 'data.npz'}:images", tmp_path / "s" / "im.npy", shard_bytes=128 + 50 * 96)
    assert len(result.outputs) == 6
    np.testing.assert_array_equal(npyfeed.open(str(tmp_path / "s" / "im_*.npy"))[:], images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "images.npy", "labels.npy", "s"]


def test_npz_errors_are_clear(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", a=np.arange(10_000, dtype=np.int64))
    with pytest.raises(ConfigError, match=r"d\.npz: no member 'b'; the archive holds \['a'\]"):
        convert(f"{tmp_path / 'd.npz'}:b", tmp_path / "o.npy")
    raw = bytearray((tmp_path / "d.npz").read_bytes())
    raw[5000] ^= 0xFF  # inside the stored member's data: the CRC no longer matches
    (tmp_path / "bad.npz").write_bytes(bytes(raw))
    with pytest.raises(NpyFormatError, match="corrupt archive member"):
        convert(f"{tmp_path / 'bad.npz'}:a", tmp_path / "o.npy")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(NpyFormatError, match=r"junk\.npz: not a valid \.npz"):
        convert(f"{tmp_path / 'junk.npz'}:a", tmp_path / "o.npy")
    assert not (tmp_path / "o.npy").exists()
    assert not list(tmp_path.glob(".*partial"))  # failed conversions leave nothing behind


def test_shards_to_one_file_and_back(tmp_path: Path) -> None:
    expected = _data((1000, 3, 2), "<f4")
    for i, part in enumerate(np.array_split(expected, [1, 400, 401, 999])):
        np.save(tmp_path / f"in_{i:03d}.npy", part)
    result = convert(str(tmp_path / "in_*.npy"), tmp_path / "one.npy", memory_bytes=777)
    assert result.kind == "copy" and result.rows == 1000
    _same(tmp_path / "one.npy", expected)
    listed = [tmp_path / f"in_{i:03d}.npy" for i in range(5)]
    convert(listed, tmp_path / "two.npy")
    _same(tmp_path / "two.npy", expected)

    limit = 128 + 100 * 24  # header + 100 rows
    result = convert(tmp_path / "one.npy", tmp_path / "out" / "out.npy", shard_bytes=limit, memory_bytes=1000)
    assert len(result.outputs) == 10 and [Path(p).name for p in result.outputs][:2] == ["out_000.npy", "out_001.npy"]
    assert all(Path(p).stat().st_size <= limit for p in result.outputs)
    np.testing.assert_array_equal(npyfeed.open(str(tmp_path / "out" / "out_*.npy"))[:], expected)


def test_cast_follows_numpy_casting_rules(tmp_path: Path) -> None:
    source = _data((100, 4), "<f8") - 500
    np.save(tmp_path / "x.npy", source)
    convert(tmp_path / "x.npy", tmp_path / "f4.npy", dtype="float32")
    _same(tmp_path / "f4.npy", source.astype(np.float32))
    with pytest.raises(
        ConfigError,
        match=r"x\.npy: dtype=int16: rows of dtype float64 cannot be cast to int16 under "
        r"casting='same_kind'.*--casting unsafe",
    ):
        convert(tmp_path / "x.npy", tmp_path / "i2.npy", dtype="int16")
    assert not (tmp_path / "i2.npy").exists()
    convert(tmp_path / "x.npy", tmp_path / "i2.npy", dtype="int16", casting="unsafe")
    _same(tmp_path / "i2.npy", source.astype(np.int16))
    with pytest.raises(ConfigError, match=r"float64 cannot be cast to float32 under casting='safe'"):
        convert(tmp_path / "x.npy", tmp_path / "s.npy", dtype="float32", casting="safe")
    with pytest.raises(ConfigError, match="not a NumPy dtype"):
        convert(tmp_path / "x.npy", tmp_path / "s.npy", dtype="floaty")


def test_narrowing_integer_casts_are_checked_value_by_value(tmp_path: Path) -> None:
    source = np.arange(1000, dtype=np.int64).reshape(250, 4) - 500
    np.save(tmp_path / "x.npy", source)
    with pytest.raises(ConfigError, match=r"row 0 holds -500, which int8 cannot hold \(-128\.\.127\)"):
        convert(tmp_path / "x.npy", tmp_path / "i1.npy", dtype="int8", memory_bytes=64)
    np.save(tmp_path / "y.npy", source % 100)
    np.save(tmp_path / "y.npy", np.concatenate([source[:200] % 100, source[200:]]))
    with pytest.raises(ConfigError, match=r"row 200 holds 300, which int8"):  # found in a later block
        convert(tmp_path / "y.npy", tmp_path / "i1.npy", dtype="int8", memory_bytes=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "y.npy"]
    convert(tmp_path / "y.npy", tmp_path / "i2.npy", dtype="int16", memory_bytes=64)
    _same(tmp_path / "i2.npy", np.load(tmp_path / "y.npy").astype(np.int16))
    convert(tmp_path / "x.npy", tmp_path / "w.npy", dtype="int8", casting="unsafe")
    _same(tmp_path / "w.npy", source.astype(np.int8))  # asked for: wrapped


def test_an_output_that_is_one_of_the_inputs_is_refused(tmp_path: Path) -> None:
    source = _data((64, 8), "<f8")
    for i in range(3):
        np.save(tmp_path / f"s_{i:03d}.npy", source[i * 20 : (i + 1) * 20])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    (tmp_path / "link.npy").symlink_to(tmp_path / "s_001.npy")
    (tmp_path / "hard.npy").hardlink_to(tmp_path / "s_002.npy")
    cases = [
        (str(tmp_path / "s_*.npy"), tmp_path / "s_000.npy"),  # the glob's first shard
        ([tmp_path / "s_000.npy", tmp_path / "s_001.npy"], tmp_path / "link.npy"),  # through a symlink
        (str(tmp_path / "s_*.npy"), tmp_path / "hard.npy"),  # the same inode under another name
        (tmp_path / "s_000.npy", tmp_path / "s_000.npy"),  # in place
    ]
    for src, dest in cases:
        with pytest.raises(ConfigError, match=rf"the output {dest} is one of the inputs"):
            convert(src, dest, dtype="<f4")
    assert main(["convert", str(tmp_path / "s_*.npy"), str(tmp_path / "s_000.npy")]) == 1
    assert {p.name: p.read_bytes() for p in tmp_path.glob("s_*.npy")} == before
    assert len(npyfeed.open(str(tmp_path / "s_*.npy"))) == 60


def test_cli_convert_and_inspect_advice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _data((30, 5), ">f8")
    np.save(tmp_path / "f.npy", np.asfortranarray(source))
    assert main(["inspect", str(tmp_path / "f.npy")]) == 0
    out = capsys.readouterr().out
    assert "Fortran order is slow to read by rows" in out and f"npyfeed convert {tmp_path / 'f.npy'} OUT.npy" in out
    assert "non-native byte order" in out and "--dtype '<f8'" in out
    assert main(["inspect", "--json", str(tmp_path / "f.npy")]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["advice"]) == 2

    assert main(["convert", str(tmp_path / "f.npy"), str(tmp_path / "c.npy"), "--dtype", "<f4"]) == 0
    assert "wrote" in capsys.readouterr().out
    _same(tmp_path / "c.npy", source.astype("<f4"))
    assert main(["inspect", str(tmp_path / "c.npy")]) == 0
    assert "advice" not in capsys.readouterr().out

    assert main(["convert", str(tmp_path / "c.npy"), str(tmp_path / "s" / "s.npy"), "--shard-size", "0.5K"]) == 0
    capsys.readouterr()
    shards = sorted(str(p) for p in tmp_path.glob("s/s_*.npy"))
    assert len(shards) == 2
    assert main(["convert", *shards, str(tmp_path / "joined.npy")]) == 0
    _same(tmp_path / "joined.npy", source.astype("<f4"))
    assert main(["convert", str(tmp_path / "c.npy"), str(tmp_path / "i.npy"), "--dtype", "i4"]) == 1
    assert "--casting unsafe" in capsys.readouterr().err
    assert (
        main(["convert", str(tmp_path / "c.npy"), str(tmp_path / "i.npy"), "--dtype", "i4", "--casting", "unsafe"]) == 0
    )
    with pytest.raises(SystemExit):
        main(["convert", "a.npy", "b.npy", "--memory", "lots"])


# -- out of core: a Fortran file several times larger than a cgroup-v1 memory cap -----------------------------------
CAP = 128 << 20
COLS = 256  # int32: 1 KiB rows
ROWS = (512 << 20) // (COLS * 4)  # 512 MiB, 4x the cap

CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    Path(sys.argv[1], "cgroup.procs").write_text(str(os.getpid()))
    from npyfeed.write.convert import convert
    result = convert(sys.argv[2], sys.argv[3], memory_bytes=16 << 20)
    print(result.rows, result.kind)
    """
)


@pytest.mark.slow
def test_fortran_to_c_of_a_file_4x_larger_than_a_memory_cap(tmp_path: Path) -> None:
    with memory_cap(CAP, "convert") as group:
        source = tmp_path / "f.npy"
        out = np.lib.format.open_memmap(source, mode="w+", dtype=np.int32, shape=(ROWS, COLS), fortran_order=True)
        ids = np.arange(ROWS, dtype=np.int64)
        for j in range(COLS):  # element (i, j) = 7i + j: any misplaced element is detected
            out[:, j] = ((ids * 7 + j) % (2**31)).astype(np.int32)
        out.flush()
        del out
        fd = os.open(source, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # cold: pages must come from disk
        finally:
            os.close(fd)
        assert source.stat().st_size > 4 * CAP
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(group), str(source), str(tmp_path / "c.npy")],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, f"convert failed (exit {result.returncode}; -9 is an OOM kill):\n{result.stderr}"
        assert result.stdout.split() == [str(ROWS), "fortran"]
        assert peak_usage(group) <= CAP
        converted = np.load(tmp_path / "c.npy", mmap_mode="r")
        assert converted.shape == (ROWS, COLS) and converted.flags.c_contiguous
        for start in range(0, ROWS, 65536):
            block = np.asarray(converted[start : start + 65536], dtype=np.int64)
            expected = (np.arange(start, start + len(block))[:, None] * 7 + np.arange(COLS)) % (2**31)
            assert np.array_equal(block, expected), start
