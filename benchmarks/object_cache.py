"""Epochs of a remote ``.npy`` with and without the local chunk cache (``storage_options["cache_dir"]``).

    python -m benchmarks.object_cache                 # 256 MB object, +20 ms per request (~2-4 min)
    python -m benchmarks.object_cache --quick         # 64 MB
    python -m benchmarks.object_cache --size-mb 512 --latency-ms 5

One object of 4 KiB rows (each row's first 8 bytes hold its index) served by ``benchmarks.s3_server`` on 127.0.0.1
in this process, with ``--latency-ms`` added before every answer (a store's per-request latency). For block and
global shuffle, in one run: an epoch without a cache, then with a cache in a fresh directory: the first epoch (chunks
fetched), the second (from disk), and a new loader on the same directory (a later job). Each row says the seconds,
rows/s, the requests the server answered, and the ratio to the epoch without a cache. Every epoch is checked to hold
each row exactly once. The machine is shared with the server (and with whoever else runs on it): compare rows of
the same run only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import npyfeed
from benchmarks.s3_server import RangeServer

__all__ = ["main"]

ROW_BYTES = 4096


def make_object(path: Path, size_mb: int) -> int:
    """A ``(rows, 4096)`` uint8 ``.npy`` whose rows start with their index; returns the row count."""
    rows = size_mb * (1 << 20) // ROW_BYTES
    array = np.lib.format.open_memmap(path, "w+", np.uint8, (rows, ROW_BYTES))
    for start in range(0, rows, 8192):
        stop = min(rows, start + 8192)
        block = np.random.default_rng(start).integers(0, 255, (stop - start, ROW_BYTES), dtype=np.uint8)
        block[:, :8] = np.arange(start, stop, dtype=np.int64)[:, None].view(np.uint8)
        array[start:stop] = block
    array.flush()
    del array
    return rows


def run_epoch(loader: npyfeed.Loader, rows: int) -> float:
    began = time.perf_counter()
    ids = np.concatenate([np.ascontiguousarray(b[:, :8]).view(np.int64).ravel() for b in loader])
    seconds = time.perf_counter() - began
    if not np.array_equal(np.sort(ids), np.arange(rows)):
        raise AssertionError("an epoch did not hold every row exactly once")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="a 64 MB object")
    args = parser.parse_args(argv)
    size_mb = 64 if args.quick else args.size_mb
    warnings.filterwarnings("ignore", category=npyfeed.RemoteShuffleWarning)  # what the "no cache" rows measure
    with tempfile.TemporaryDirectory(prefix="npyfeed-cache-bench-") as tmp:
        root = Path(tmp)
        rows = make_object(root / "x.npy", size_mb)
        print(
            f"{size_mb} MB object, {rows} rows of {ROW_BYTES} B, +{args.latency_ms:g} ms per request, batch "
            f"{args.batch_size}; cache in {root} (chunks of 4 MiB)"
        )
        print(f"{'order':<7} {'run':<26} {'seconds':>8} {'rows/s':>10} {'requests':>9} {'vs no cache':>12}")
        with RangeServer(root, delay=args.latency_ms / 1e3) as server:
            url = f"{server.url}/x.npy"
            for shuffle in ("block", "global"):
                cache = root / f"cache-{shuffle}"
                opts = {"cache_dir": str(cache), "cache_size": f"{2 * size_mb}MB"}
                plain = npyfeed.Loader(url, args.batch_size, shuffle=shuffle, seed=0)
                cached = npyfeed.Loader(url, args.batch_size, shuffle=shuffle, seed=0, storage_options=opts)
                runs: list[tuple[str, npyfeed.Loader | None]] = [
                    ("no cache", plain),
                    ("cache, epoch 1 (fetch)", cached),
                    ("cache, epoch 2 (disk)", cached),
                    ("cache, a new loader", None),  # a later job on the same directory
                ]
                baseline = 0.0
                for name, loader in runs:
                    if loader is None:
                        loader = npyfeed.Loader(url, args.batch_size, shuffle=shuffle, seed=1, storage_options=opts)
                    before = server.requests
                    seconds = run_epoch(loader, rows)
                    baseline = baseline or seconds
                    print(
                        f"{shuffle:<7} {name:<26} {seconds:8.2f} {rows / seconds:10.0f} "
                        f"{server.requests - before:9d} {baseline / seconds:11.1f}x"
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
