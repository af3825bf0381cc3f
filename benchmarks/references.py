"""Hardware references every loader is compared with: a memory copy, a raw sequential read, fio random IOPS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import numpy as np

__all__ = ["fio_iops", "memcpy_mb_s", "raw_read_mb_s"]


def memcpy_mb_s(nbytes: int = 512 << 20, repeats: int = 7) -> float:
    """Single-threaded ``np.copyto`` between two in-RAM buffers, best of ``repeats``, in MB/s (1e6 bytes).

    Best, not median: this is the limit, and on a shared machine the slower copies measure the neighbours.
    """
    src = np.full(nbytes, 7, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault in every page of dst before timing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return nbytes / min(times) / 1e6


def raw_read_mb_s(path: str, block_bytes: int = 8 << 20) -> tuple[float, int]:
    """Read the whole file once with plain ``read``s into one reused buffer: (MB/s, bytes read)."""
    buf = bytearray(block_bytes)
    view = memoryview(buf)
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        while n := os.readv(fd, [view]):
            total += n
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    return total / elapsed / 1e6, total


def fio_iops(path: str, iodepth: int, seconds: int) -> tuple[float | None, str]:
    """fio 4 KiB O_DIRECT random-read IOPS on ``path`` at ``iodepth``: (IOPS or None, why not)."""
    exe = shutil.which("fio")
    if exe is None:
        return None, "fio not installed"
    cmd = [
        exe, "--name=r", f"--filename={path}", "--rw=randread", "--bs=4k", "--direct=1",
        f"--iodepth={iodepth}", "--ioengine=libaio", f"--runtime={seconds}", "--time_based",
        "--readonly", "--output-format=json",
    ]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
        report = json.loads(out[out.index("{") :])  # fio may print notes before the JSON document
        return float(report["jobs"][0]["read"]["iops"]), ""
    except (subprocess.SubprocessError, ValueError, KeyError, IndexError) as e:
        return None, f"fio failed: {type(e).__name__}: {e}"[:200]
