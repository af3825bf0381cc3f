"""Measure a Loader on real files: rows/s and MB/s against the raw sequential read speed of the same files.

What ``npyfeed bench`` runs. The raw read is plain ``readv`` into one buffer (what the storage and page cache give
a single reader); ``cold`` drops the files from the page cache first (``POSIX_FADV_DONTNEED``, no root needed).
Peak memory is the process's anonymous memory (``RssAnon``: heap and buffers, not page cache) sampled on a thread.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from npyfeed.columns import Columns
from npyfeed.loader import Loader, ShuffleMode
from npyfeed.system import cpu_count

__all__ = ["BenchResult", "drop_from_cache", "raw_read_speed", "run_bench"]


def drop_from_cache(paths: Sequence[str]) -> None:
    """Evict these files' clean pages from the page cache, so the next read comes from storage."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read_speed(paths: Sequence[str], *, max_bytes: int = 4 << 30, chunk: int = 16 << 20) -> float:
    """Bytes per second of one thread reading the files front to back into a reused buffer."""
    buffer = bytearray(chunk)
    total, started = 0, time.perf_counter()
    for path in dict.fromkeys(paths):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while total < max_bytes:
                n = os.readv(fd, [buffer])
                if n == 0:
                    break
                total += n
        finally:
            os.close(fd)
    return total / max(time.perf_counter() - started, 1e-9)


def anon_memory() -> int:
    """This process's anonymous resident memory in bytes (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@contextmanager
def peak_anon_memory(interval: float = 0.02) -> Iterator[list[int]]:
    """Yields a one-item list that holds the peak ``RssAnon`` seen while the block ran."""
    peak = [anon_memory()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            peak[0] = max(peak[0], anon_memory())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], anon_memory())


@dataclass
class BenchResult:
    """One measured configuration."""

    shuffle: str
    batch_size: int
    num_threads: int
    prefetch: int | None
    cold: bool
    rows: int
    seconds: float
    row_bytes: int
    raw_bytes_per_s: float
    memory_baseline: int
    memory_peak: int
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / max(self.seconds, 1e-9)

    @property
    def bytes_per_s(self) -> float:
        return self.rows_per_s * self.row_bytes

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_s": self.rows_per_s, "bytes_per_s": self.bytes_per_s}


def _time_loader(
    loader: Loader, *, epochs: int, max_seconds: float | None, progress: bool, label: str
) -> tuple[int, float]:
    total = epochs * len(loader)
    bar = _progress_bar(total, label) if progress else None
    rows, started = 0, time.perf_counter()
    try:
        for _ in range(epochs):
            for batch in loader:
                first = next(iter(batch.values())) if isinstance(batch, dict) else batch
                rows += len(first[0] if isinstance(first, tuple) else first)
                if bar is not None:
                    bar.update(1)
                if max_seconds is not None and time.perf_counter() - started > max_seconds:
                    return rows, time.perf_counter() - started
    finally:
        if bar is not None:
            bar.close()
    return rows, time.perf_counter() - started


def _progress_bar(total: int, label: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # the progress bar is optional (extra "cli")
        return None
    return tqdm(total=total, desc=label, unit="batch", leave=False, dynamic_ncols=True)


def run_bench(
    source: Any,
    *,
    batch_size: int = 256,
    shuffle: ShuffleMode = "none",
    num_threads: int | None = None,
    prefetch: int | None = None,
    cold: bool = False,
    epochs: int = 1,
    max_seconds: float | None = 30.0,
    progress: bool = True,
    sweep: bool = True,
) -> BenchResult:
    """Time ``epochs`` of a Loader over ``source`` (capped at ``max_seconds``), plus the raw read reference.

    With ``sweep``, also tries a few thread counts briefly and records them in ``trials`` so the caller can
    recommend the fastest.
    """
    columns = Columns.of(source)
    paths = list(columns.paths)
    if cold:
        drop_from_cache(paths)
    raw = raw_read_speed(paths)
    if cold:
        drop_from_cache(paths)
    baseline = anon_memory()
    loader = Loader(columns, batch_size, shuffle=shuffle, seed=0, num_threads=num_threads, prefetch=prefetch)
    with peak_anon_memory() as peak:
        rows, seconds = _time_loader(
            loader, epochs=epochs, max_seconds=max_seconds, progress=progress, label=f"shuffle={shuffle}"
        )
    loader.close()
    result = BenchResult(
        shuffle=shuffle,
        batch_size=batch_size,
        num_threads=loader.num_threads,
        prefetch=prefetch,
        cold=cold,
        rows=rows,
        seconds=seconds,
        row_bytes=columns.row_bytes,
        raw_bytes_per_s=raw,
        memory_baseline=baseline,
        memory_peak=peak[0],
    )
    if sweep:
        for threads in sorted({1, cpu_count(), 2 * cpu_count()}):
            if cold:
                drop_from_cache(paths)
            trial = Loader(columns, batch_size, shuffle=shuffle, seed=1, num_threads=threads, prefetch=prefetch)
            n, s = _time_loader(trial, epochs=1, max_seconds=min(3.0, max_seconds or 3.0), progress=False, label="")
            trial.close()
            result.trials.append({"num_threads": threads, "rows_per_s": n / max(s, 1e-9)})
    return result


def recommend(result: BenchResult) -> list[str]:
    """Settings worth using, from what was measured."""
    advice = []
    if result.trials:
        best = max(result.trials, key=lambda t: t["rows_per_s"])
        if best["rows_per_s"] > 1.1 * result.rows_per_s:
            advice.append(f"num_threads={best['num_threads']} ({best['rows_per_s']:,.0f} rows/s)")
    if result.shuffle == "global" and result.bytes_per_s < 0.25 * result.raw_bytes_per_s:
        advice.append(
            'shuffle="block": a global shuffle reads at '
            f"{result.bytes_per_s / result.raw_bytes_per_s:.0%} of the sequential speed of these files"
        )
    return advice or ["the defaults"]
