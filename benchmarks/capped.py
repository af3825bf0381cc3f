"""npyfeed inside a memory cap: small random rows vs fio, and a long run that must not drift.

One command (root: it makes cgroup-v1 memory groups and drops files from the page cache)::

    .venv/bin/python -m benchmarks.capped                     # both parts, 1 GiB files, 256 MiB cap (~6 min)
    .venv/bin/python -m benchmarks.capped --part small --seconds 30 --fio-seconds 15
    .venv/bin/python -m benchmarks.capped --part long --size-gb 8 --cap-mb 1024 --order global --epochs 50

- ``small``: a global shuffle of 8-byte and 128-byte rows (``--small-rows``) over a ``--size-gb`` file, read by a
  default ``Loader`` in a child process inside the cap for ``--seconds``, next to fio's 4 KiB ``O_DIRECT``
  random-read IOPS at QD16 on the same file, measured just before. Reported per row: major and minor page
  faults of the reader, and pages it read from the device (``/proc/self/io`` ``read_bytes`` / 4 KiB).
- ``long``: ``--epochs`` whole epochs (``--order``) of ``--row-bytes`` rows over a ``--size-gb`` file, larger
  than the cap: per epoch, rows/s, the peak anonymous memory of the reader (``RssAnon``, sampled every 20 ms),
  the peak of the cgroup (anonymous + page cache + kernel, ``memory.max_usage_in_bytes``, reset each epoch),
  page tables (``VmPTE``), and whether every row came exactly once. Drift = last 10 epochs vs epochs 1-10.

Files start cold (``POSIX_FADV_DONTNEED`` before each part), so reads really come from the device. On a shared
machine every number is disturbed by the neighbours (fio included: it is measured in the same minute, so ratios
are fairer than absolute numbers); rerun on a quiet machine for real ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cgroup import MemoryCgroup, cgroup_available
from benchmarks.references import fio_iops

CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, threading, time
    from pathlib import Path
    import numpy as np
    import npyfeed

    spec = json.loads(sys.argv[1])
    group = Path(spec["cgroup"])

    def status(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) << 10
        return 0

    def read_bytes():
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
        return 0

    peak_anon = [0]
    def sample():
        while True:
            peak_anon[0] = max(peak_anon[0], status("RssAnon:"))
            time.sleep(0.02)
    threading.Thread(target=sample, daemon=True).start()

    loader = npyfeed.Loader(spec["path"], batch_size=spec["batch_size"], shuffle=spec["order"], seed=1)
    n = len(loader.source)
    if spec["mode"] == "small":
        seen = np.zeros(n, np.uint8)
        ru0, io0 = resource.getrusage(resource.RUSAGE_SELF), read_bytes()
        rows, start = 0, time.perf_counter()
        for batch in loader:
            ids = batch.reshape(len(batch), -1)[:, 0]
            np.add.at(seen, ids, 1)
            rows += len(ids)
            if time.perf_counter() - start >= spec["seconds"]:
                break
        elapsed = time.perf_counter() - start
        ru = resource.getrusage(resource.RUSAGE_SELF)
        repeats = sum(int((seen[i : i + (1 << 24)] > 1).sum()) for i in range(0, n, 1 << 24))  # no n-sized temporary
        print(json.dumps({"rows": rows, "seconds": elapsed, "majflt": ru.ru_majflt - ru0.ru_majflt,
                          "minflt": ru.ru_minflt - ru0.ru_minflt, "read_bytes": read_bytes() - io0,
                          "repeats": repeats, "peak_anon": peak_anon[0],
                          "batches_per_read": loader.batches_per_read}), flush=True)
    else:
        for epoch in range(spec["epochs"]):
            (group / "memory.max_usage_in_bytes").write_text("0")
            peak_anon[0] = status("RssAnon:")
            seen = np.zeros(n, np.uint8)
            start = time.perf_counter()
            for batch in loader:
                np.add.at(seen, batch.reshape(len(batch), -1)[:, 0], 1)
            elapsed = time.perf_counter() - start
            print(json.dumps({"epoch": epoch, "rows": int(seen.sum()), "seconds": elapsed,
                              "once": bool((seen == 1).all()), "peak_anon": peak_anon[0],
                              "peak_cgroup": int((group / "memory.max_usage_in_bytes").read_text()),
                              "pte": status("VmPTE:")}), flush=True)
    """
)


def make_rows(path: Path, size_bytes: int, row_bytes: int) -> Path:
    """A file of ``row_bytes`` rows whose first int64 is the row's index (kept if it already matches)."""
    width = max(1, row_bytes // 8)
    rows = size_bytes // (width * 8)
    shape = (rows,) if width == 1 else (rows, width)
    if path.exists():
        try:
            a = np.load(path, mmap_mode="r")
            if a.shape == shape and int(a.reshape(rows, -1)[-1, 0]) == rows - 1:
                return path
        except (ValueError, OSError):
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype="<i8", shape=shape)
    step = max(1, (64 << 20) // (width * 8))
    for lo in range(0, rows, step):
        ids = np.arange(lo, min(lo + step, rows), dtype=np.int64)
        if width == 1:
            out[lo : lo + ids.size] = ids
        else:
            out[lo : lo + ids.size, 0] = ids
    out.flush()
    del out
    return path


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_child(spec: dict[str, Any], cap_bytes: int, timeout: float) -> tuple[list[dict[str, Any]], int, int]:
    """(the child's JSON lines, its exit code, OOM kills) for one run inside a fresh cgroup."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    with MemoryCgroup("npyfeed-capped", cap_bytes) as group:
        spec = {**spec, "cgroup": str(group.path)}
        cmd = group.wrap([sys.executable, "-c", CHILD, json.dumps(spec)])
        lines: list[dict[str, Any]] = []
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as child:
            assert child.stdout is not None
            for line in child.stdout:
                lines.append(json.loads(line))
                if spec.get("mode") == "long":
                    print("   ", _epoch_line(lines[-1]), flush=True)
            rc = child.wait(timeout=timeout)
        return lines, rc, group.oom_kills


def _epoch_line(r: dict[str, Any]) -> str:
    mib = 1 << 20
    return (
        f"epoch {r['epoch']:>3}: {r['rows'] / r['seconds']:>10,.0f} rows/s, peak anon {r['peak_anon'] / mib:6.1f} "
        f"MiB, peak cgroup {r['peak_cgroup'] / mib:6.1f} MiB, page tables {r['pte'] / mib:5.1f} MiB, "
        f"each row once: {r['once']}"
    )


def small_rows(args: argparse.Namespace) -> list[str]:
    out = [
        f"### Global shuffle of small rows in a {args.cap_mb} MiB cap ({args.size_gb:g} GiB files, "
        f"{args.seconds:g} s each)",
        "",
        "| row | batch | rows/s | fio 4 KiB QD16 IOPS | x fio | major faults/row | minor faults/row | pages read/row "
        "| peak anon MiB | OOM kills | rows repeated |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row_bytes in args.small_rows:
        path = make_rows(args.dir / f"small_{row_bytes}.npy", int(args.size_gb * (1 << 30)), row_bytes)
        evict(path)
        iops, why = fio_iops(str(path), 16, args.fio_seconds)
        evict(path)
        batch = max(256, 8192 // max(1, row_bytes // 8))
        spec = {"mode": "small", "path": str(path), "batch_size": batch, "order": "global", "seconds": args.seconds}
        lines, rc, oom = run_child(spec, args.cap_mb << 20, args.seconds + 120)
        if rc != 0 or not lines:
            out.append(f"| {row_bytes} B | {batch} | failed (exit {rc}, OOM kills {oom}) |")
            continue
        r = lines[-1]
        rows, secs = int(r["rows"]), float(r["seconds"])
        rate = rows / secs
        ratio = f"{rate / iops:.2f}" if iops else f"n/a ({why})"
        out.append(
            f"| {row_bytes} B | {batch} | {rate:,.0f} | {iops or 0:,.0f} | {ratio} | "
            f"{int(r['majflt']) / rows:.3f} | {int(r['minflt']) / rows:.3f} | "
            f"{int(r['read_bytes']) / 4096 / rows:.3f} | {int(r['peak_anon']) / (1 << 20):.1f} | {oom} | "
            f"{r['repeats']} |"
        )
        print(out[-1], flush=True)
    return out


def long_run(args: argparse.Namespace) -> list[str]:
    path = make_rows(args.dir / f"long_{args.row_bytes}.npy", int(args.size_gb * (1 << 30)), args.row_bytes)
    evict(path)
    print(f"long run: {args.epochs} epochs, {args.order} order, {path} in a {args.cap_mb} MiB cap", flush=True)
    spec = {"mode": "long", "path": str(path), "batch_size": args.batch_size, "order": args.order,
            "epochs": args.epochs}  # fmt: skip
    lines, rc, oom = run_child(spec, args.cap_mb << 20, 24 * 3600)
    out = [
        f"### {len(lines)} epochs, {args.order} order, {args.size_gb:g} GiB of {args.row_bytes}-byte rows in a "
        f"{args.cap_mb} MiB cap: exit {rc}, OOM kills {oom}, every epoch each row once: "
        f"{all(r['once'] for r in lines)}",
        "",
        "| epochs | rows/s | peak anon MiB | peak cgroup MiB | page tables MiB |",
        "|---|--:|--:|--:|--:|",
    ]
    mib = 1 << 20
    groups = [("0", lines[:1]), ("1-10", lines[1:11]), (f"{max(1, len(lines) - 10)}-{len(lines) - 1}", lines[-10:])]
    for name, group in groups:
        if not group:
            continue
        rate = np.mean([float(r["rows"]) / float(r["seconds"]) for r in group])
        anon = max(int(r["peak_anon"]) for r in group) / mib
        cg = max(int(r["peak_cgroup"]) for r in group) / mib
        pte = max(int(r["pte"]) for r in group) / mib
        out.append(f"| {name} | {rate:,.0f} | {anon:.1f} | {cg:.1f} | {pte:.1f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["small", "long", "both"], default="both")
    parser.add_argument("--cap-mb", type=int, default=256)
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--dir", type=Path, default=Path("data/bench-capped"))
    parser.add_argument("--small-rows", type=lambda s: [int(v) for v in s.split(",")], default=[8, 128])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--fio-seconds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--row-bytes", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--order", choices=["global", "block", "none"], default="block")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    why = cgroup_available()
    if why is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    report = []
    if args.part in ("small", "both"):
        report += [*small_rows(args), ""]
    if args.part in ("long", "both"):
        report += long_run(args)
    text = "\n".join(report)
    print("\n" + text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
