"""Object stores at the link's speed (issue 21 item 4): every target as a ratio to its reference, in one run.

    python -m benchmarks.object_speed --quick        # ~3-4 minutes: a 256 MB object, 6 s caps
    python -m benchmarks.object_speed                # a 1 GB object, 20 s caps
    python -m benchmarks.object_speed --quick --src before=/work/wt-main   # also another checkout, interleaved

The object is 1 KiB rows (uint8; the first 8 bytes of row ``i`` hold ``i``) and int64 labels ``y[i] == i``,
read as ``(x, y)`` by ``npyfeed.Loader(..., 256, shuffle=...)``. Servers on 127.0.0.1, each in its own process:
``benchmarks.s3_server`` read as S3 (``s3://``, path-style, through the standard environment) with no added
latency and with ``--latency-ms`` before each answer, and nginx read over HTTP (when installed). For each server,
each step in a fresh process:

- **download**: one streaming GET of ``x`` (obstore, 8 MiB chunks) and ``curl`` of it: the better is the reference
  of the sequential and block-shuffle ratios (``x download``);
- **client GET rate**: obstore alone, ``--concurrency`` 1 KiB ranged GETs in flight for a few seconds: the
  reference of ``shuffle=True`` (``x client rate``: npyfeed's GETs per second over it);
- **sequential / block / global epochs** (capped at ``--max-seconds`` after the first batch): delivered MB/s, first
  batch seconds (from building the Loader; target < 1 s), MB fetched per MB delivered (block target <= 1.01),
  client CPU ms per delivered MB (the download's alongside); and worker 0 of 2 of the block shuffle (``shard=(0,
  2)``: it reads half of every window's rows, so by default it fetches up to the window's bytes, 2x what it
  delivers; it had no read-ahead before 21's item 4);
- **leave**: three batches, then the iterator is dropped: GETs started after it and seconds until none is in
  flight (target: within one request timeout).

Every delivered batch is checked (labels equal the row ids; a complete epoch has every id once). The load average
is printed with the results: on a shared machine compare ratios within one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.data import RowKind, make_files
from benchmarks.s3_server import ServerProcess, s3_environment

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "bench"
ROW_BYTES = 1024
MB = 1e6
ORDERS = {"none": "sequential", "block": "block shuffle", "shard": "block, shard 0 of 2", "global": "shuffle=True"}
CHUNK = 8 << 20
# 1 KiB rows (uint8; the first 8 bytes of row ``i`` hold ``i``) and int64 labels ``y[i] == i``.
KIND = RowKind("1k-u8", (ROW_BYTES,), "uint8", True, "1 KiB rows: 1024 uint8 + int64 labels")


# -- servers ---------------------------------------------------------------------------------------------------------
class Server:
    """A server process over ``root``: ``kind`` "s3" (benchmarks.s3_server, read as s3://) or "http" (nginx)."""

    def __init__(self, kind: str, root: Path, delay_ms: float, workdir: Path) -> None:
        self.kind, self.delay_ms = kind, delay_ms
        self.s3: ServerProcess | None = None
        self.nginx: Any = None
        if kind == "s3":
            self.s3 = ServerProcess(root, delay_ms)
            self.base = self.s3.url
        else:
            sys.path.insert(0, str(ROOT / "tests"))
            from servers import Nginx  # the tests' nginx (same configuration as the HTTP tests)

            self.nginx = Nginx(root, workdir).start()
            self.base = self.nginx.url
        if not self.base.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the {kind} server did not start: {self.base!r}")

    @property
    def name(self) -> str:
        label = "S3 (benchmarks.s3_server)" if self.kind == "s3" else "HTTP (nginx)"
        return f"{label} +{self.delay_ms:g} ms"

    def urls(self, x: str, y: str) -> tuple[str, str]:
        if self.kind == "s3":
            return f"s3://{BUCKET}/{x}", f"s3://{BUCKET}/{y}"
        return f"{self.base}/{BUCKET}/{x}", f"{self.base}/{BUCKET}/{y}"

    def env(self) -> dict[str, str]:
        return s3_environment(self.base) if self.kind == "s3" else {}

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        if self.s3 is not None:
            self.s3.stop()


# -- the steps (each in a fresh process) ------------------------------------------------------------------------------
def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _store_and_path(url: str) -> tuple[Any, str]:
    from obstore.store import from_url

    if url.startswith("s3://"):
        bucket, key = url[5:].split("/", 1)
        return from_url(f"s3://{bucket}"), key
    scheme, rest = url.split("://", 1)
    host, path = rest.split("/", 1)
    return from_url(f"{scheme}://{host}", client_options={"allow_http": True}), path


def step_download(job: dict[str, Any]) -> dict[str, Any]:
    import obstore

    store, path = _store_and_path(job["x_url"])
    cpu, began = _cpu(), time.perf_counter()
    got = sum(len(c) for c in obstore.get(store, path).stream(min_chunk_size=CHUNK))
    seconds = time.perf_counter() - began
    out: dict[str, Any] = {"bytes": got, "seconds": seconds, "cpu_ms_per_mb": (_cpu() - cpu) * 1e3 / (got / MB)}
    curl = shutil.which("curl")
    if curl and job["http_url"]:
        cmd = [curl, "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", job["http_url"]]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        size, total = done.stdout.split()
        out["curl_bytes"], out["curl_seconds"] = int(float(size)), float(total)
    return out


def step_rate(job: dict[str, Any]) -> dict[str, Any]:
    """obstore alone: ``concurrency`` 1 KiB ranged GETs at random rows in flight for ``seconds``."""
    import asyncio

    import obstore

    store, path = _store_and_path(job["x_url"])
    rows, offset, seconds = job["rows"], job["x_offset"], job["rate_seconds"]
    rng = np.random.default_rng(1)

    async def worker(end: float, counts: list[int]) -> None:
        while time.perf_counter() < end:
            a = offset + int(rng.integers(rows)) * ROW_BYTES
            data = await obstore.get_range_async(store, path, start=a, end=a + ROW_BYTES)
            assert len(data) == ROW_BYTES
            counts[0] += 1

    async def run() -> tuple[int, float]:
        counts = [0]
        began = time.perf_counter()
        end = began + seconds
        await asyncio.gather(*(worker(end, counts) for _ in range(job["concurrency"])))
        return counts[0], time.perf_counter() - began

    cpu = _cpu()
    gets, took = asyncio.run(run())
    return {"gets": gets, "seconds": took, "gets_per_s": gets / took, "cpu_ms_per_get": (_cpu() - cpu) * 1e3 / gets}


def _stats(job: dict[str, Any]) -> Any:
    from npyfeed.storage.clients import get_client
    from npyfeed.storage.urls import parse_url

    return get_client(parse_url(job["x_url"]), job["storage_options"]).stats


def _loader(job: dict[str, Any], shuffle: str) -> Any:
    import npyfeed

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", npyfeed.RemoteShuffleWarning)  # the request rate is measured here
        order: dict[str, Any] = {"shuffle": "block", "shard": (0, 2)} if shuffle == "shard" else {"shuffle": shuffle}
        urls, options = (job["x_url"], job["y_url"]), job["storage_options"]
        return npyfeed.Loader(urls, 256, seed=0, storage_options=options, **order)


def step_epoch(job: dict[str, Any]) -> dict[str, Any]:
    import npyfeed  # noqa: F401 - imported before the clocks start

    shuffle = job["shuffle"]
    cpu, began = _cpu(), time.perf_counter()
    loader = _loader(job, shuffle)
    expected = loader.layout().num_positions  # every row, or a shard's share
    first = 0.0
    seen = np.zeros(job["rows"], bool)
    rows, wrong = 0, 0
    complete = True
    for x, y in loader:
        ids = np.ascontiguousarray(x[:, :8]).view("<i8").ravel()
        wrong += int((ids != y).sum()) + int(seen[ids].sum())
        seen[ids] = True
        rows += len(y)
        now = time.perf_counter()
        first = first or now - began
        if now - began - first > job["max_seconds"]:
            complete = rows == expected
            break
    seconds = time.perf_counter() - began
    cpu = _cpu() - cpu
    stats = _stats(job)
    delivered = rows * (ROW_BYTES + 8)
    problem = None
    if wrong:
        problem = f"{wrong} rows repeated or with a wrong label"
    elif complete and int(seen.sum()) != expected:
        problem = f"{expected - int(seen.sum())} rows never delivered"
    return {
        "rows": rows,
        "complete": complete,
        "seconds": seconds,
        "first_s": first,
        "mb_s": delivered / seconds / MB,
        "fetched_ratio": stats.bytes / max(1, delivered),
        "gets": stats.requests,
        "gets_per_s": stats.requests / seconds,
        "cpu_ms_per_mb": cpu * 1e3 / (delivered / MB),
        "problem": problem,
    }


def step_leave(job: dict[str, Any]) -> dict[str, Any]:
    """Three batches, then the iterator dropped: GETs started afterwards and seconds until none is in flight."""
    loader = _loader(job, job["shuffle"])
    stats = _stats(job)

    def started() -> int:  # an older checkout's stats have no `started`: completed plus in flight then
        return int(getattr(stats, "started", stats.requests + stats.in_flight))

    batches = iter(loader)
    for _ in range(3):
        next(batches)
    before = started()
    left = time.perf_counter()
    del batches
    idle_s = None  # since when none has been in flight, for good
    while time.perf_counter() - left < job["leave_seconds"]:
        now = time.perf_counter()
        if stats.in_flight:
            idle_s = None
        elif idle_s is None:
            idle_s = now - left
        time.sleep(0.005)
    return {"gets_after": started() - before, "idle_s": idle_s if idle_s is not None else float("inf")}


STEPS = {"download": step_download, "rate": step_rate, "epoch": step_epoch, "leave": step_leave}


def run_in_child(job: dict[str, Any], env: dict[str, str], src: str | None, log: Path) -> dict[str, Any]:
    log.parent.mkdir(parents=True, exist_ok=True)
    job_path, out_path = log.with_suffix(".job.json"), log.with_suffix(".out.json")
    job_path.write_text(json.dumps(job))
    out_path.unlink(missing_ok=True)
    path = [str(Path(src) / "src"), str(ROOT)] if src else [str(ROOT / "src"), str(ROOT)]
    full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(path)}
    cmd = [sys.executable, "-m", "benchmarks.object_speed", "--step", str(job_path), str(out_path)]
    with log.open("w") as f:
        try:
            subprocess.run(cmd, env=full_env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=600, check=False)
        except subprocess.TimeoutExpired:
            return {"failed": f"timed out (log: {log})"}
    if not out_path.exists():
        return {"failed": f"no result (log: {log})"}
    return dict(json.loads(out_path.read_text()))


# -- the report ------------------------------------------------------------------------------------------------------
def _f(value: Any, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else format(value, fmt)


def report(server: str, r: dict[str, dict[str, Any]], labels: list[str]) -> list[str]:
    d = r.get("download", {})
    ref = 0.0
    if "bytes" in d:
        ref = d["bytes"] / d["seconds"] / MB
        if d.get("curl_seconds"):
            ref = max(ref, d["curl_bytes"] / d["curl_seconds"] / MB)
    rate = r.get("rate", {}).get("gets_per_s", float("nan"))
    get_mb_s = d["bytes"] / d["seconds"] / MB if "bytes" in d else None
    curl_mb_s = d["curl_bytes"] / d["curl_seconds"] / MB if d.get("curl_seconds") else None
    lines = [
        f"### {server}",
        "",
        f"references: download {ref:,.0f} MB/s (obstore GET {_f(get_mb_s, ',.0f')}, curl {_f(curl_mb_s, ',.0f')}; "
        f"GET CPU {_f(d.get('cpu_ms_per_mb'), '.2f')} ms/MB), client alone {_f(rate, ',.0f')} GETs/s "
        f"({_f(r.get('rate', {}).get('cpu_ms_per_get'), '.3f')} ms CPU/GET)",
        "",
        "| src | order | MB/s | x download | GETs/s | x client rate | 1st batch s | fetched / delivered | CPU ms/MB | "
        "GETs after leaving | idle after s | check |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for label in labels:
        for order, name in ORDERS.items():
            e = r.get(f"{label}/epoch/{order}", {})
            lv = r.get(f"{label}/leave/{order}", {})
            if "failed" in e:
                lines.append(f"| {label} | {name} | FAILED: {e['failed']} |")
                continue
            check = "ok" if not e.get("problem") else f"WRONG: {e['problem']}"
            if e and not e.get("complete"):
                check += f" (capped: {e['rows']:,} rows)"
            mb_s, gets_s = e.get("mb_s", float("nan")), e.get("gets_per_s", float("nan"))
            cells = [
                _f(mb_s, ",.0f"),
                _f(mb_s / ref if ref else None, ".2f"),
                _f(gets_s, ",.0f"),
                _f(gets_s / rate, ".2f"),
                _f(e.get("first_s"), ".2f"),
                _f(e.get("fetched_ratio"), ".3f"),
                _f(e.get("cpu_ms_per_mb"), ".2f"),
                _f(lv.get("gets_after"), "d"),
                _f(lv.get("idle_s"), ".2f"),
            ]
            lines.append(f"| {label} | {name} | {' | '.join(cells)} | {check} |")
    return [*lines, ""]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=1000.0, help="bytes of rows in x (default 1000)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="latency of the second S3 pass (0: none)")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="cap per epoch, after its first batch")
    parser.add_argument("--concurrency", type=int, default=64, help="GETs in flight for the client's own rate")
    parser.add_argument("--servers", default="s3,http", help="s3 (benchmarks.s3_server), http (nginx)")
    parser.add_argument("--src", action="append", default=[], help="NAME=DIR: also run the checkout at DIR")
    parser.add_argument("--dir", type=Path, default=ROOT / "data" / "bench-object-speed")
    parser.add_argument("--quick", action="store_true", help="a 256 MB object, 6 s caps (~3-4 minutes)")
    parser.add_argument("--output", type=Path, help="also write the report here (markdown)")
    parser.add_argument("--step", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mb, args.max_seconds = 256.0, 6.0
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.step:
        job = json.loads(Path(args.step[0]).read_text())
        try:
            result = STEPS[job["step"]](job)
        except Exception as e:  # reported in the table
            import traceback

            result = {"failed": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        Path(args.step[1]).write_text(json.dumps(result))
        sys.stdout.flush()
        os._exit(0)  # do not wait for the loader's daemon threads or the client's loop thread
    started = time.time()
    srcs: list[tuple[str, str | None]] = [("this", None)] + [tuple(s.split("=", 1)) for s in args.src]  # type: ignore[misc]
    root = args.dir / "root"
    files = make_files(root / BUCKET, KIND, int(args.size_mb * MB))
    x_name, y_name, rows, x_offset = Path(files.x).name, Path(files.y or "").name, files.num_rows, files.x_offset
    for name in (x_name, y_name):  # served from the page cache: the link is measured, not the disk
        with open(root / BUCKET / name, "rb", buffering=0) as f:
            while f.read(16 << 20):
                pass
    configs = []
    for kind in args.servers.split(","):
        if kind == "http" and not shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin"):
            print("nginx not installed: the HTTP pass is skipped", file=sys.stderr)
            continue
        configs.append((kind, 0.0))
        if kind == "s3" and args.latency_ms > 0:
            configs.append((kind, args.latency_ms))
    text = [
        "## benchmarks.object_speed",
        "",
        f"{' '.join(sys.argv)}; object {rows:,} rows of 1 KiB + int64 labels ({rows * (ROW_BYTES + 8) / MB:,.0f} MB); "
        f"load average before: {os.getloadavg()[0]:.2f}; cores: {os.cpu_count()}",
        "",
    ]
    for kind, delay in configs:
        server = Server(kind, root, delay, args.dir / "nginx")
        try:
            x_url, y_url = server.urls(x_name, y_name)
            http_url = f"{server.base}/{BUCKET}/{x_name}"
            common = {"x_url": x_url, "y_url": y_url, "http_url": http_url, "rows": rows, "x_offset": x_offset}
            common |= {"storage_options": {}, "max_seconds": args.max_seconds, "leave_seconds": 3.0}
            common |= {"rate_seconds": 3.0, "concurrency": args.concurrency}
            env = server.env()
            logs = args.dir / "logs" / f"{kind}-{delay:g}"
            results: dict[str, dict[str, Any]] = {}
            print(f"{server.name}: download, client rate ...", file=sys.stderr, flush=True)
            results["download"] = run_in_child({**common, "step": "download"}, env, None, logs / "download.log")
            results["rate"] = run_in_child({**common, "step": "rate"}, env, None, logs / "rate.log")
            for order in ORDERS:
                for step in ("epoch", "leave"):
                    for label, src in srcs:  # interleaved: each checkout's run of a step follows the other's
                        print(f"{server.name}: {label} {step} {order} ...", file=sys.stderr, flush=True)
                        job = {**common, "step": step, "shuffle": order}
                        log = logs / f"{label}-{step}-{order}.log"
                        results[f"{label}/{step}/{order}"] = run_in_child(job, env, src, log)
            text += report(server.name, results, [label for label, _ in srcs])
        finally:
            server.stop()
    text.append(
        f"load average after: {os.getloadavg()[0]:.2f}; {time.time() - started:.0f} s. Targets: x download >= 0.8 "
        "(sequential, block), x client rate >= 0.8 (shuffle=True), 1st batch < 1 s, block fetched / delivered <= 1.01 "
        "(a shard of 2: about 2, each window byte once), reads stop within one request timeout of leaving."
    )
    out = "\n".join(text)
    print(out)
    if args.output:
        args.output.write_text(out + "\n")


if __name__ == "__main__":
    main()
