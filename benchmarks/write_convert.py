"""NpyWriter and ``npyfeed convert`` throughput against the disk's own sequential speed, measured in the same run.

    python -m benchmarks.write_convert                    # 1 GiB files in data/bench-write/ (~2-4 minutes)
    python -m benchmarks.write_convert --size-gib 4 --dir /mnt/fast/bench

References (``dd``, same files, same directory): sequential write (``bs=8M conv=fsync``: buffered writes, one fsync,
as NpyWriter does), sequential cold read, and a cold copy (read + write on the same disk: the ceiling of any
conversion). Every file is dropped from the page cache (fsync + POSIX_FADV_DONTNEED) before a cold step. The
target is >= 0.7x: NpyWriter vs dd write, and each conversion vs the dd copy. Each step's output is checked
against NumPy (a sample of rows), so a fast wrong answer does not count. Numbers on a shared machine are disturbed
by whatever else runs; rerun on a quiet one with the command above.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

import npyfeed
from npyfeed.sources import RowSource
from npyfeed.write.convert import convert

COLS = 256  # float32: 1 KiB rows
BATCH = 4096  # rows per write(): 4 MiB


def _cold(*paths: Path) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _dd(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(["dd", *args, "status=none"], check=True)
    return time.perf_counter() - started


def _write_npy(path: Path, rows: int) -> float:
    batch = np.random.default_rng(0).random((BATCH, COLS), dtype=np.float32)
    started = time.perf_counter()
    with npyfeed.NpyWriter(path, np.float32, (COLS,)) as w:
        for start in range(0, rows, BATCH):
            batch[:, 0] = np.arange(start, start + BATCH)  # each row says where it belongs
            w.write(batch[: min(BATCH, rows - start)])
    return time.perf_counter() - started


def _check(spec: Path | str, rows: int, reference: np.ndarray | None = None) -> None:
    """C order, the right length, and sampled rows that are where they belong (``x[i, 0] == i``)."""
    got = npyfeed.open(str(spec))
    assert isinstance(got, RowSource) and got.shape == (rows, COLS), (spec, got)
    assert all(not npyfeed.read_header(p).fortran_order for p in got.paths), spec
    sample = np.sort(np.random.default_rng(1).integers(0, rows, 64))
    block = got[sample]
    np.testing.assert_array_equal(block[:, 0], sample.astype(np.float32))
    if reference is not None:
        np.testing.assert_array_equal(block, np.asarray(reference[sample]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--dir", type=Path, default=Path("data/bench-write"))
    args = parser.parse_args(argv)
    if shutil.which("dd") is None:
        print("dd not found: no reference to compare with", file=sys.stderr)
        return 1
    d: Path = args.dir
    d.mkdir(parents=True, exist_ok=True)
    rows = int(args.size_gib * (1 << 30)) // (COLS * 4) // BATCH * BATCH
    nbytes = rows * COLS * 4
    mib = nbytes / (1 << 20)
    results: list[tuple[str, float, float, str]] = []  # step, MB/s, adjacent reference MB/s, its name

    def rate(seconds: float) -> float:
        return nbytes / seconds / 1e6

    def dd_write() -> float:
        seconds = _dd(["if=/dev/zero", f"of={d / 'dd.bin'}", "bs=8M", f"count={int(mib // 8)}", "conv=fsync"])
        (d / "dd.bin").unlink()
        return rate(seconds)

    def dd_copy(files: list[Path]) -> float:
        """A cold copy of the step's own source bytes: the ceiling for reading and writing them on this disk."""
        _cold(*files)
        seconds = 0.0
        for i, f in enumerate(files):
            seconds += _dd([f"if={f}", f"of={d / f'dd{i}.bin'}", "bs=8M", "conv=fsync"])
        for i in range(len(files)):
            (d / f"dd{i}.bin").unlink()
        _cold(*files)
        return rate(seconds)

    try:
        # Each step is timed right after its reference, on the same bytes: a shared disk's speed drifts a lot
        # within minutes, so only adjacent pairs compare fairly.
        c_path = d / "c.npy"
        reference = dd_write()
        results.append(("NpyWriter, 4 MiB batches, close()", rate(_write_npy(c_path, rows)), reference, "dd write"))
        _check(c_path, rows)
        _cold(c_path)
        read = rate(_dd([f"if={c_path}", "of=/dev/null", "bs=8M"]))

        f_path = d / "f.npy"
        source = np.load(c_path, mmap_mode="r")
        out = np.lib.format.open_memmap(f_path, mode="w+", dtype=np.float32, shape=(rows, COLS), fortran_order=True)
        for start in range(0, rows, 1 << 16):
            out[start : start + (1 << 16)] = source[start : start + (1 << 16)]
        out.flush()
        del out
        npz = d / "data.npz"
        with (
            zipfile.ZipFile(npz, "w", zipfile.ZIP_STORED, allowZip64=True) as zf,
            zf.open("x.npy", "w", force_zip64=True) as f,
            open(c_path, "rb") as src_file,
        ):
            shutil.copyfileobj(src_file, f, 8 << 20)
        steps: list[tuple[str, Any, Path, dict[str, Any]]] = [
            ("convert Fortran -> C", f_path, d / "from_f.npy", {}),
            ("convert one file -> 256 MiB shards", c_path, d / "sh" / "sh.npy", {"shard_bytes": 256 << 20}),
            ("convert shards -> one file", str(d / "sh" / "sh_*.npy"), d / "joined.npy", {}),
            ("convert .npz member (stored) -> .npy", f"{npz}:x", d / "from_npz.npy", {}),
        ]
        for name, src, dst, kwargs in steps:
            files = sorted(d.glob("sh/sh_*.npy")) if "*" in str(src) else [npz if ":" in str(src) else Path(src)]
            reference = dd_copy(files)
            result = convert(src, dst, **kwargs)
            results.append((name, rate(result.seconds), reference, "dd copy"))
            _check(dst if len(result.outputs) == 1 else d / "sh" / "sh_*.npy", rows)
        _check(d / "from_f.npy", rows, np.load(c_path, mmap_mode="r"))
    finally:
        for p in d.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    print(f"\n{args.size_gib:g} GiB of 1 KiB float32 rows in {d} (a shared machine: numbers disturbed)")
    print(f"cold sequential read (dd) of the written file: {read:,.0f} MB/s\n")
    print("| step | MB/s | reference, just before | ratio | >= 0.7x |")
    print("|---|--:|--:|--:|---|")
    for name, mbps, ref, ref_name in results:
        verdict = "yes" if mbps / ref >= 0.7 else "NO"
        print(f"| {name} | {mbps:,.0f} | {ref_name} {ref:,.0f} | {mbps / ref:.2f}x | {verdict} |")
    print("\nrerun: python -m benchmarks.write_convert --size-gib", args.size_gib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
