"""Default settings are never OOM-killed in a 256 MiB cgroup-v1 cap, whatever the row size, order or columns.

Each case runs a child process inside its own, uniquely named memory cgroup capped at 256 MiB, over sparse files
(``truncate``) far larger than the cap: holes read as zero pages the kernel must allocate and charge like any
other page cache, so the reads cost memory but no disk. The child reads a few hundred MiB of rows with a default
``Loader`` (only ``batch_size`` chosen) and reports its page tables and anonymous memory; an OOM kill (SIGKILL,
or a count in ``memory.oom_control``) fails the test. Item 1 of issue 7: before the memory budget, 8-byte random
rows over a 2^34-row file were killed within 20 batches (page tables alone passed 256 MiB).
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

from cgroups import memory_cap, oom_kills, peak_usage

CAP = 256 << 20

pytestmark = pytest.mark.slow


def sparse_npy(path: Path, dtype: str, shape: tuple[int, ...]) -> str:
    """A valid ``.npy`` header followed by a hole: ``shape`` of zeros, taking no disk space."""
    with path.open("wb") as f:
        np.lib.format.write_array_header_2_0(f, {"descr": dtype, "fortran_order": False, "shape": shape})
        f.truncate(f.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return str(path)


CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, time
    from pathlib import Path
    Path(sys.argv[1], "cgroup.procs").write_text(str(os.getpid()))
    import numpy as np
    import npyfeed

    import threading
    peak = [0]
    def anon():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) << 10
    def sample():
        while True:
            peak[0] = max(peak[0], anon())
            time.sleep(0.01)
    threading.Thread(target=sample, daemon=True).start()
    spec = json.loads(sys.argv[2])
    source = spec["source"] if isinstance(spec["source"], str) else tuple(spec["source"])
    more = spec.get("loader", {})
    loader = npyfeed.Loader(source, batch_size=spec["batch_size"], shuffle=spec["shuffle"], seed=1, **more)
    rows = delivered = 0
    start = time.perf_counter()
    for batch in loader:
        leaves = batch if isinstance(batch, tuple) else (batch,)
        rows += len(leaves[0])
        delivered += sum(leaf.nbytes for leaf in leaves)
        if delivered >= spec["bytes"] or time.perf_counter() - start > spec["seconds"]:
            break
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    print(json.dumps({"rows": rows, "bytes": delivered, "seconds": time.perf_counter() - start,
                      "pte": int(status["VmPTE"].split()[0]) << 10, "hwm_anon": max(peak[0], anon()),
                      "majflt": resource.getrusage(resource.RUSAGE_SELF).ru_majflt,
                      "batches_per_read": loader.batches_per_read, "depth": loader.metrics.snapshot()["depth"]}))
    """
)


def run_capped(spec: dict[str, object], timeout: float = 240) -> tuple[dict[str, int], int]:
    with memory_cap(CAP, "cap") as group:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(group), json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        oom = oom_kills(group)
        peak = peak_usage(group)
    assert result.returncode == 0 and oom == 0, (
        f"reader died in a {CAP >> 20} MiB cap (exit {result.returncode}, -9 is an OOM kill; oom_kill={oom}):\n"
        f"{result.stderr[-3000:]}"
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert peak <= CAP
    return report, peak


# (name, columns as (dtype, row shape), rows, batch_size): every file is far larger than the cap.
CASES = [
    ("8B", [("<i8", ())], 1 << 34, 4096),  # 128 GiB: the case that was killed
    ("128B", [("<f4", (32,))], 1 << 28, 1024),  # 32 GiB
    ("4KiB", [("<i4", (1024,))], 1 << 21, 256),  # 8 GiB
    ("1MiB", [("<u1", (1 << 20,))], 4096, 16),  # 4 GiB, 16 MiB batches
    ("columns", [("<f4", (512,)), ("<i8", ()), ("<f2", (3, 5)), ("|u1", (100,))], 1 << 23, 512),
]


@pytest.mark.parametrize("shuffle", ["global", "block", "none"])
@pytest.mark.parametrize(("name", "columns", "rows", "batch_size"), CASES, ids=[c[0] for c in CASES])
def test_default_loader_is_never_oom_killed_in_a_256mib_cap(
    tmp_path: Path, name: str, columns: list[tuple[str, tuple[int, ...]]], rows: int, batch_size: int, shuffle: str
) -> None:
    paths = [sparse_npy(tmp_path / f"{name}_{i}.npy", d, (rows, *shape)) for i, (d, shape) in enumerate(columns)]
    file_bytes = sum(Path(p).stat().st_size for p in paths)
    assert file_bytes > 8 * CAP
    spec = {
        "source": paths[0] if len(paths) == 1 else paths,
        "batch_size": batch_size,
        "shuffle": shuffle,
        "bytes": 384 << 20,  # more than the cap: the page cache must be recycled along the way
        "seconds": 6,
    }
    report, peak = run_capped(spec)
    assert report["rows"] >= batch_size
    # What the budget bounds, and what killed the loader before: page tables and anonymous memory.
    assert report["pte"] < 48 << 20, report
    assert report["hwm_anon"] < 160 << 20, report
    print(f"\n{name} {shuffle}: {report['rows']} rows in {report['seconds']:.1f} s, peak cgroup {peak >> 20} MiB, "
          f"page tables {report['pte'] >> 20} MiB, anon {report['hwm_anon'] >> 20} MiB")  # fmt: skip


# In file order, each read path on its own: a pass copied on the consumer's thread hands over to the read threads
# when its copies are slow, which depends on the machine's load; io_hints=False keeps it on the consumer's thread,
# a prefetch given keeps it on the read threads, so both files are read the same way.
@pytest.mark.parametrize(
    ("shuffle", "more"),
    [("none", {"io_hints": False}), ("none", {"prefetch": 64}), ("global", {})],
    ids=["none-in-order", "none-read-threads", "global"],
)
def test_peak_anonymous_memory_does_not_grow_with_the_file(tmp_path: Path, shuffle: str, more: dict) -> None:
    """The same reads from a 0.5 GiB and a 20 GiB file of 1 KiB rows peak at the same anonymous memory."""
    peaks = []
    for gib in (0.5, 20):
        path = sparse_npy(tmp_path / f"f{gib}.npy", "<f4", (int(gib * (1 << 20)), 256))
        spec = {
            "source": path, "batch_size": 256, "shuffle": shuffle, "bytes": 320 << 20, "seconds": 8, "loader": more,
        }  # fmt: skip
        report, _ = run_capped(spec)
        peaks.append(report["hwm_anon"])
        Path(path).unlink()
    print(f"\npeak anonymous memory, 0.5 vs 20 GiB, {shuffle}: {peaks[0] / 2**20:.1f} vs {peaks[1] / 2**20:.1f} MiB")
    assert abs(peaks[1] - peaks[0]) < 8 << 20, peaks
