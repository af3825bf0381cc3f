"""Deadline vs. time to error: how long a consumer waits when the server hangs or stops mid-epoch.

``python -m benchmarks.deadlines`` reads a 16 MB ``.npy`` over HTTP from ``benchmarks/s3_server.py``'s RangeServer
through the tests' :class:`FaultProxy` (``tests/servers.py``), both on 127.0.0.1. After the first batch the proxy
either hangs (every request read and never answered) or stops (connections refused, open ones reset), and the
consumer keeps asking for batches. Printed per case: the ``timeout`` and ``deadline`` storage options, the error
raised, the seconds from the fault to that error, the longest single wait for a batch (what ``deadline`` bounds, from
when the consumer asked) and the bound the docs promise (``deadline`` + one request ``timeout``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import npyfeed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import FaultProxy, RangeServer  # the tests' servers (tests/ is not a package)

# (timeout, deadline) in seconds; None keeps npyfeed's default (30 s, 120 s).
FULL: list[tuple[float | None, float | None]] = [(5.0, 20.0), (None, None)]
QUICK: list[tuple[float | None, float | None]] = [(1.0, 4.0), (2.0, 8.0)]


def one(root: Path, fault: str, timeout: float | None, deadline: float | None) -> dict[str, Any]:
    """One case: a fresh server, proxy and Loader; the fault after the first batch; the waits until the error."""
    options: dict[str, Any] = {"request_bytes": 256 << 10, "gap_bytes": 0, "max_concurrency": 2}
    options["prefetch_bytes"] = 256 << 10
    if timeout is not None:
        options |= {"timeout": timeout, "connect_timeout": timeout}
    if deadline is not None:
        options["deadline"] = deadline
    with RangeServer(root) as server, FaultProxy(server.url.removeprefix("http://"), delay=0.05) as proxy:
        loader = npyfeed.Loader(
            f"{proxy.url}/x.npy",
            500,
            shuffle="block",
            seed=1,
            block_rows=1000,
            window_blocks=2,
            prefetch=1,
            storage_options=options,
        )
        batches = iter(loader)
        next(batches)
        if fault == "hung":
            proxy.stall_rate = 1.0
        else:
            proxy.down()
        began = time.monotonic()
        longest, error = 0.0, None
        while True:
            asked = time.monotonic()
            try:
                next(batches)
            except StopIteration:
                break
            except Exception as e:
                error = e
                longest = max(longest, time.monotonic() - asked)
                break
            longest = max(longest, time.monotonic() - asked)
        took = time.monotonic() - began
        loader.close()
    return {
        "server": fault,
        "timeout": timeout or 30.0,
        "deadline": deadline or 120.0,
        "error": type(error).__name__ if error is not None else "none (epoch ended)",
        "to_error": took,
        "longest_wait": longest,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short deadlines (4 s, 8 s): about half a minute")
    parser.add_argument("--faults", default="hung,stopped", help="comma-separated: hung, stopped")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="npyfeed-deadlines-") as tmp:
        root = Path(tmp)
        # 16 MB in batches of 256 KB (four reads of 4 MiB): the first batch does not read the whole file ahead.
        x = np.random.default_rng(0).integers(0, 1 << 40, (32_000, 64), dtype=np.int64)
        np.save(root / "x.npy", x)
        print("| server | timeout (s) | deadline (s) | error | fault to error (s) | longest wait (s) | bound (s) |")
        print("|---|---|---|---|---|---|---|")
        for fault in args.faults.split(","):
            for timeout, deadline in QUICK if args.quick else FULL:
                r = one(root, fault, timeout, deadline)
                print(
                    f"| {r['server']} | {r['timeout']:g} | {r['deadline']:g} | {r['error']} | {r['to_error']:.1f} | "
                    f"{r['longest_wait']:.1f} | {r['deadline'] + r['timeout']:g} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
