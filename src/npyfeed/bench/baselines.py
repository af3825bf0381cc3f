"""What the machine gives without npyfeed, for ``npyfeed bench`` to compare against: the raw sequential read speed
of files (plain ``readv`` into one buffer; ``drop_from_cache`` makes it cold, ``POSIX_FADV_DONTNEED``, no root
needed) and of objects (one large ranged GET per object, streamed and dropped), and the process's peak anonymous
memory (``RssAnon``: heap and buffers, not page cache) sampled on a thread."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from npyfeed.storage.client import import_obstore
from npyfeed.storage.urls import parse_url

__all__ = ["anon_memory", "drop_from_cache", "peak_anon_memory", "raw_object_speed", "raw_read_speed"]


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


def raw_object_speed(objects: Sequence[Any], *, max_bytes: int = 4 << 30, piece: int = 256 << 20) -> tuple[float, int]:
    """(bytes per second, requests) of each object read from its start in ranged GETs of ``piece`` bytes, one
    after the other, streamed into nothing: the sequential speed of the link to the store, measured at the same
    time as the Loader. Pieces keep every GET inside the client's per-request ``timeout`` on slow links."""
    total, requests, started = 0, 0, time.perf_counter()
    for storage in {s.name: s for s in objects}.values():
        if total >= max_bytes:
            break
        size = min(storage.size, max_bytes - total)
        client, key = storage.client, parse_url(storage.name).key
        for start in range(0, size, piece):

            async def read(
                client: Any = client, key: str = key, start: int = start, end: int = min(size, start + piece)
            ) -> int:
                result = await import_obstore().get_async(client.store, key, options={"range": (start, end)})
                got = 0
                async for chunk in result.stream(min_chunk_size=8 << 20):
                    got += len(chunk)
                return got

            total += client.run(read)
            requests += 1
    return total / max(time.perf_counter() - started, 1e-9), requests


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
