"""The benchmark suite's one command: ``python -m benchmarks.run [options]`` (see ``--help`` and the README).

It generates the data, plans every measurement, runs each in a fresh subprocess (warming or dropping the page
cache first, inside a memory cgroup for the larger-than-RAM rows), then prints markdown tables and the targets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import pagecache, report
from benchmarks.cgroup import MemoryCgroup, cgroup_available
from benchmarks.cpu import machine_busy_s
from benchmarks.data import ROW_KINDS, BenchFiles, make_files
from benchmarks.references import fio_iops
from benchmarks.registry import CAP_RUNNERS, RUNNERS
from benchmarks.spec import Job, Result

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30
_DEFAULTS = {
    "size_gb": 2.0, "max_seconds": 8.0, "cap_size_gb": 1.0, "cap_seconds": 30.0, "fio_seconds": 10,
    "idle_wait": 30.0, "retries": 1,
}  # fmt: skip
_QUICK = {
    "size_gb": 1 / 16, "max_seconds": 2.0, "cap_size_gb": 0.5, "cap_seconds": 5.0, "fio_seconds": 2,
    "idle_wait": 2.0, "retries": 0,
}  # fmt: skip
_IDLE_PROBE_S = 0.5
_IDLE_CORES = 0.2  # "idle": other processes use less than this many cores
_DISTURBED_CORES = 0.3  # a measurement during which others used more is retried, then flagged


@dataclass(frozen=True)
class Step:
    """One planned measurement and how to prepare the page cache for it."""

    job: Job
    cache_action: str  # "warm": read the files first; "drop": drop the page cache first; "none"
    cap_bytes: int | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--size-gb", type=float, help="size of each generated row file (default 2; --quick 1/16)")
    p.add_argument(
        "--rows-kind",
        default="12k,1k",
        help="row kinds, comma-separated: 12k (64x64x3 uint8 + int64 label), 1k (256 float32); '' with "
        "--cap-test runs only the capped test",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--cold", action="store_true", help="also measure with the page cache dropped (root)")
    p.add_argument("--cap-test", action="store_true", help="also run the larger-than-RAM rows in a cgroup (root)")
    p.add_argument("--quick", action="store_true", help="small files and short caps: a ~1-2 minute smoke run")
    p.add_argument("--runners", default=",".join(RUNNERS), help=f"subset of: {','.join(RUNNERS)}")
    p.add_argument("--max-seconds", type=float, help="time cap per runner after its first batch (default 8)")
    p.add_argument("--cap-size-gb", type=float, help="file size of the capped test (default 1)")
    p.add_argument("--cap-mb", type=int, default=256, help="cgroup memory cap in MiB (default 256)")
    p.add_argument("--cap-seconds", type=float, help="time cap per runner in the capped test (default 30)")
    p.add_argument("--fio-seconds", type=int, help="runtime of each fio job (default 10)")
    p.add_argument("--data-dir", type=Path, default=ROOT / "data" / "bench")
    p.add_argument("--output", type=Path, help="also write the report (markdown) here")
    p.add_argument("--json", type=Path, help="also write every raw result here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--retries",
        type=int,
        help=f"measure a runner again if other processes used >= {_DISTURBED_CORES} cores meanwhile; the least "
        "disturbed result is kept (default 1; --quick 0)",
    )
    p.add_argument(
        "--idle-wait",
        type=float,
        help="before each runner, wait up to this many seconds for other processes to leave the CPUs idle "
        "(0: do not wait; default 30; --quick 2)",
    )
    args = p.parse_args(argv)
    for name, default in (_QUICK if args.quick else _DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def _names(text: str, known: Collection[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def plan(args: argparse.Namespace, files: dict[str, BenchFiles], cold_ok: bool) -> list[Step]:
    """Every measurement of the run, in order: references first in each group, then the loaders."""
    runners = _names(args.runners, RUNNERS, "runner")
    if not files:  # --rows-kind '': only the capped test
        return []
    first = next(iter(files.values()))
    steps = [Step(Job("memcpy", first, args.batch_size, False, 0, "-"), "none")]
    for f in files.values():
        for cache in ("warm", "cold") if cold_ok else ("warm",):
            # Warm before every warm step, not once per group: anything else on the machine (`npyfeed bench
            # --cold` on these files, a test dropping caches) may evict them; re-reading cached files takes ~0.3 s.
            action = "drop" if cache == "cold" else "warm"
            steps.append(Step(Job("raw-read", f, args.batch_size, False, 0, cache), action))
            for shuffle in (False, True):
                for name in runners:
                    if shuffle and RUNNERS[name].sequential_only:
                        continue
                    job = Job(name, f, args.batch_size, shuffle, args.max_seconds, cache, args.seed)
                    steps.append(Step(job, action))
    return steps


def cap_plan(args: argparse.Namespace, f: BenchFiles) -> list[Step]:
    cache = f"cold, {args.cap_mb} MiB cap"
    return [
        Step(Job(name, f, args.batch_size, True, args.cap_seconds, cache, args.seed), "drop", args.cap_mb << 20)
        for name in CAP_RUNNERS
        if name in _names(args.runners, RUNNERS, "runner")
    ]


class Executor:
    """Runs steps in fresh subprocesses, with logs under the data directory and a progress line per step."""

    def __init__(self, data_dir: Path, total: int, idle_wait: float, retries: int) -> None:
        self.idle_wait = idle_wait
        self.retries = retries
        self.log_dir = data_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.total = total
        self.done = 0
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        self.env.setdefault("KERAS_BACKEND", "tensorflow")
        src = str(ROOT / "src")  # npyfeed from the working tree, installed or not
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (src, str(ROOT), os.environ.get("PYTHONPATH")) if p)

    def _wait_for_idle(self) -> None:
        """Wait (up to ``idle_wait`` s) until the machine's CPUs are idle: other jobs would skew the timing."""
        deadline = time.monotonic() + self.idle_wait
        while True:
            busy = machine_busy_s()
            time.sleep(_IDLE_PROBE_S)
            cores = (machine_busy_s() - busy) / _IDLE_PROBE_S
            if cores < _IDLE_CORES or time.monotonic() > deadline:
                return

    def _prepare(self, step: Step) -> None:
        if self.idle_wait > 0:
            self._wait_for_idle()
        if step.cache_action == "drop":
            pagecache.drop_caches()
        elif step.cache_action == "warm":
            pagecache.warm([p for p in (step.job.files.x, step.job.files.y) if p])

    def run(self, step: Step) -> Result:
        """Measure a step; while other processes disturbed it, measure again (up to ``retries`` times)."""
        best = self._attempt(step)
        for _ in range(self.retries):
            if best.status != "ok" or best.cores_other < _DISTURBED_CORES:
                break
            again = self._attempt(step)
            if again.status == "ok" and again.cores_other < best.cores_other:
                best = again
        if best.status == "ok" and best.cores_other >= _DISTURBED_CORES:
            best.note = ", ".join(filter(None, [best.note, f"disturbed: others used {best.cores_other:.1f} cores"]))
        self.done += 1
        rate = f"{best.rows_per_s:>12,.0f} rows/s" if best.status == "ok" else f"{'':>19}"
        print(
            f"[{self.done:>3}/{self.total}] {best.kind:>3} {best.order:<10} {best.cache:<18} "
            f"{best.label:<38} {rate} {best.status} {best.note}"[:200],
            file=sys.stderr,
            flush=True,
        )
        return best

    def _attempt(self, step: Step) -> Result:
        self._prepare(step)
        job = step.job
        order = "shuffled" if job.shuffle else "sequential"
        log = self.log_dir / f"{job.runner}_{job.files.kind}_{order}_{job.cache.replace(' ', '')}.log"
        with tempfile.TemporaryDirectory(dir=self.log_dir) as tmp:
            job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
            job_path.write_text(json.dumps(job.to_json()))
            cmd = [sys.executable, "-m", "benchmarks.harness", str(job_path), str(out_path)]
            if step.cap_bytes is None:
                return self._spawn(cmd, job, out_path, log)
            with MemoryCgroup("npyfeed-bench", step.cap_bytes) as cg:
                result = self._spawn(cg.wrap(cmd), job, out_path, log)
                result.cgroup_peak_mb = cg.max_usage_bytes / 1e6
                if result.status == "error" and cg.oom_kills:
                    result.note = f"OOM-killed by the {step.cap_bytes >> 20} MiB cap; {result.note}"
                return result

    def _spawn(self, cmd: list[str], job: Job, out_path: Path, log: Path) -> Result:
        timeout = job.max_seconds + 150  # + startup (imports, shuffle buffers, a TF thrashing in a cap) and checks
        with log.open("w") as log_file:
            proc = subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT, start_new_session=True
            )
            exited = _wait_unreaped(proc.pid, timeout)
            # Kill workers the runner left behind while it is still a zombie: until it is reaped its pid, which
            # is also the id of its process group, cannot be given to another process.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            if not exited:
                return self._failed(job, "timeout", f"no result after {timeout:.0f} s; log: {log.name}")
        if out_path.exists():
            return Result(**json.loads(out_path.read_text()))
        if rc < 0:
            return self._failed(job, "error", f"killed by signal {-rc}; log: {log.name}")
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        return self._failed(job, "error", f"exit status {rc}: {tail[0][:160]}; log: {log.name}")

    @staticmethod
    def _failed(job: Job, status: str, note: str) -> Result:
        label = RUNNERS[job.runner].label if job.runner in RUNNERS else job.runner
        baseline = RUNNERS[job.runner].baseline if job.runner in RUNNERS else False
        order = "shuffled" if job.shuffle else "sequential"
        return Result(job.runner, label, job.files.kind, order, job.cache, status, note, baseline=baseline)


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for a child to exit without reaping it; False if it is still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.05)
    return False


def _make_data(args: argparse.Namespace) -> tuple[dict[str, BenchFiles], BenchFiles | None]:
    kinds = _names(args.rows_kind, ROW_KINDS, "row kind")
    start = time.perf_counter()
    files = {k: make_files(args.data_dir, k, int(args.size_gb * GIB), args.seed) for k in kinds}
    cap = make_files(args.data_dir, "1k", int(args.cap_size_gb * GIB), args.seed, "cap_") if args.cap_test else None
    print(f"data ready in {time.perf_counter() - start:.1f} s under {args.data_dir}", file=sys.stderr)
    return files, cap


def _size_text(f: BenchFiles) -> str:
    return f"{f.num_rows:,} rows, {f.x_bytes / GIB:.2f} GiB"


def _skip_reason(args: argparse.Namespace) -> tuple[bool, bool]:
    """Whether cold and capped runs can happen; prints why not."""
    cold_why = pagecache.can_drop_caches() if args.cold or args.cap_test else None
    cap_why = cold_why or (cgroup_available() if args.cap_test else None)
    if args.cold and cold_why:
        print(f"skipping cold runs: {cold_why}", file=sys.stderr)
    if args.cap_test and cap_why:
        print(f"skipping the capped test: {cap_why}", file=sys.stderr)
    return args.cold and not cold_why, args.cap_test and not cap_why


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cold_ok, cap_ok = _skip_reason(args)
    started = time.perf_counter()
    files, cap_files = _make_data(args)
    steps = plan(args, files, cold_ok) + (cap_plan(args, cap_files) if cap_ok and cap_files else [])
    executor = Executor(args.data_dir, len(steps), args.idle_wait, args.retries)
    results = [executor.run(step) for step in steps]
    fio: dict[int, tuple[float | None, str]] = {}
    if cap_ok and cap_files:
        fio = {depth: fio_iops(cap_files.x, depth, args.fio_seconds) for depth in (16, 1)}
    lines = _render(args, files, cap_files if cap_ok else None, results, fio, time.perf_counter() - started)
    text = "\n".join(lines)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    if args.json:
        raw = {"results": [asdict(r) for r in results], "fio_iops": {str(d): v for d, v in fio.items()}}
        args.json.write_text(json.dumps(raw, indent=1))


def _render(
    args: argparse.Namespace,
    files: dict[str, BenchFiles],
    cap_files: BenchFiles | None,
    results: list[Result],
    fio: dict[int, tuple[float | None, str]],
    elapsed: float,
) -> list[str]:
    command = "python -m benchmarks.run " + shlex.join(sys.argv[1:] if __name__ == "__main__" else [])
    lines = [
        "## npyfeed benchmark",
        "",
        *report.machine_description(str(args.data_dir)),
        f"- command: `{command}`; batch size {args.batch_size}; time cap {args.max_seconds:g} s per runner; "
        f"whole run {elapsed / 60:.1f} min; 1-min load average at the end {os.getloadavg()[0]:.2f} "
        "(other processes on the machine disturb the numbers)",
        "",
    ]
    lines += report.group_tables(results, {k: _size_text(f) for k, f in files.items()})
    if cap_files is not None:
        cap_text = (
            f"{_size_text(cap_files)}, 1 KiB rows, shuffled, cold, {args.cap_mb} MiB cgroup cap, "
            f"time cap {args.cap_seconds:g} s per runner"
        )
        lines += report.cap_table(results, fio, cap_text)
    lines += ["### Targets (issue 4)", "", *report.targets(results, fio), ""]
    return lines


if __name__ == "__main__":
    main()
