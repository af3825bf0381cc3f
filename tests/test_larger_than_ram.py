"""A file several times larger than a cgroup memory cap: a whole shuffled epoch, every row once, exact content.

The reader runs in a child process inside a cgroup-v1 memory group capped at 256 MiB; the file is 2 GiB and is
dropped from the page cache first, so its pages really come from disk and must be evicted to make room.
An OOM kill (exit by SIGKILL) or a wrong row fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cgroups import memory_cap, peak_usage

CAP = 256 << 20
ROW = 1024  # int32 values: 4 KiB rows, one page each
ROWS = (2 << 30) // (ROW * 4)  # 2 GiB


def _write_rows(path: Path) -> None:
    """Row i holds i*7 + j at column j (mod 2**31): any misplaced or torn row is detected."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(ROWS, ROW))
    step = 16384
    for start in range(0, ROWS, step):
        ids = np.arange(start, min(start + step, ROWS), dtype=np.int64)
        out[start : start + ids.size] = ((ids[:, None] * 7 + np.arange(ROW)) % (2**31)).astype(np.int32)
    out.flush()
    del out
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # cold: its pages must come from disk
    finally:
        os.close(fd)


CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    Path(sys.argv[1], "cgroup.procs").write_text(str(os.getpid()))
    import numpy as np
    import npyfeed

    ROW = int(sys.argv[3])
    loader = npyfeed.Loader(sys.argv[2], batch_size=256, shuffle=True, seed=1)
    seen = np.zeros(len(loader.source), dtype=np.uint8)
    bad = 0
    start = time.perf_counter()
    for epoch in range(1):
        for batch in loader:
            ids = batch[:, 0].astype(np.int64) // 7
            expected = (ids[:, None] * 7 + np.arange(ROW)) % (2**31)
            bad += int((batch != expected).any(axis=1).sum())
            np.add.at(seen, ids, 1)
    elapsed = time.perf_counter() - start
    rss_anon = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            rss_anon = int(line.split()[1]) * 1024
    print(json.dumps({"rows": int(seen.sum()), "once": bool((seen == 1).all()), "bad": bad,
                      "seconds": elapsed, "rss_anon": rss_anon}))
    """
)


@pytest.mark.slow
def test_shuffled_epoch_of_a_2gib_file_under_a_256mib_cap(tmp_path: Path) -> None:
    with memory_cap(CAP, "larger-than-ram") as group:
        path = tmp_path / "big.npy"
        _write_rows(path)
        assert path.stat().st_size > 8 * CAP
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(group), str(path), str(ROW)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, f"reader failed (exit {result.returncode}; -9 is an OOM kill):\n{result.stderr}"
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["bad"] == 0
        assert report["once"] and report["rows"] == ROWS
        peak = peak_usage(group)
        assert peak <= CAP
        assert report["rss_anon"] < 200 << 20  # our own memory stayed small; the rest was reclaimable cache
        print(f"\n2 GiB shuffled under 256 MiB: {ROWS / report['seconds']:.0f} rows/s, peak cgroup {peak >> 20} MiB")
