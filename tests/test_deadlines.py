"""Time bounds that hold: ``deadline`` bounds what a consumer waits for its next batch, whatever is queued.

A real HTTP range server on 127.0.0.1 behind :class:`FaultProxy`, which can hang (accept and read requests, never
answer) or go down and come back (connections refused and reset, then served again). Limits are small
(``timeout=1``, ``deadline=3``) so each case takes seconds; every wait of the consumer is measured.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("obstore")

import npyfeed
from servers import FaultProxy, RangeServer

TIMEOUT, DEADLINE = 1.0, 3.0
# Scheduling on a shared 2-core machine: what a bound may be late by without being wrong.
SLACK = 1.5
LIMITS = {"timeout": TIMEOUT, "connect_timeout": TIMEOUT, "deadline": DEADLINE}
# Many small requests through few slots, so reads queue behind each other and behind read-ahead; Loaders read one
# read (16 batches, 4 MiB) ahead, so the faults land before the whole file was read.
SMALL = {"request_bytes": 256 << 10, "gap_bytes": 0, "max_concurrency": 2, "prefetch_bytes": 256 << 10, **LIMITS}


@pytest.fixture
def data(tmp_path: Path) -> Iterator[tuple[np.ndarray, FaultProxy]]:
    # 16 MB in batches of 256 KB: four reads of 4 MiB, so the first batch does not read (ahead) the whole file.
    x = np.random.default_rng(0).integers(0, 1 << 40, (32_000, 64), dtype=np.int64)
    np.save(tmp_path / "x.npy", x)
    # 50 ms a request: the epoch takes over a second, so the faults below land before it was all read ahead.
    with RangeServer(tmp_path) as server, FaultProxy(server.url.removeprefix("http://"), delay=0.05) as proxy:
        yield x, proxy


def waits(iterator: Iterator[np.ndarray]) -> tuple[list[float], list[np.ndarray], BaseException | None]:
    """Seconds each ``next()`` took, the batches, and the error that ended the iteration (if any)."""
    took, got = [], []
    while True:
        began = time.monotonic()
        try:
            got.append(next(iterator))
        except StopIteration:
            return took, got, None
        except Exception as e:
            took.append(time.monotonic() - began)
            return took, got, e
        took.append(time.monotonic() - began)


@pytest.mark.parametrize("shuffle", ["block", "none"])
def test_a_hung_server_ends_each_wait_within_the_deadline(data: tuple[np.ndarray, FaultProxy], shuffle: str) -> None:
    _, proxy = data
    url = f"{proxy.url}/x.npy"
    blocks = {"block_rows": 1000, "window_blocks": 2} if shuffle == "block" else {}
    loader = npyfeed.Loader(url, 500, shuffle=shuffle, seed=1, prefetch=1, storage_options=SMALL, **blocks)
    iterator = iter(loader)
    next(iterator)
    proxy.stall_rate = 1.0  # from now on every request is read and never answered
    took, _, error = waits(iterator)
    assert isinstance(error, TimeoutError) and error.errno == errno.ETIMEDOUT, repr(error)
    assert url in str(error) and f"{DEADLINE:g} s deadline" in str(error), str(error)
    assert max(took) < DEADLINE + TIMEOUT + SLACK, took
    assert proxy.counts["stalls"] >= 2, proxy.counts
    notes = getattr(error, "__notes__", [])
    assert any(f"of epoch 0 ({url})" in n for n in notes), notes


def test_a_hung_server_at_open_times_out(data: tuple[np.ndarray, FaultProxy]) -> None:
    _, proxy = data
    proxy.stall_rate = 1.0
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="reading its metadata: no complete answer"):
        npyfeed.open(f"{proxy.url}/x.npy", storage_options=LIMITS)
    assert time.monotonic() - began < DEADLINE + TIMEOUT + SLACK


def test_an_outage_shorter_than_the_deadline_is_survived(data: tuple[np.ndarray, FaultProxy]) -> None:
    x, proxy = data
    options = {**SMALL, "deadline": 6.0}
    loader = npyfeed.Loader(
        f"{proxy.url}/x.npy",
        500,
        shuffle="block",
        seed=2,
        block_rows=1000,
        window_blocks=2,
        prefetch=1,
        storage_options=options,
    )
    iterator = iter(loader)
    first = next(iterator)
    proxy.down()
    threading.Timer(2.0, proxy.up).start()  # back after 2 s, within the 6 s deadline
    took, got, error = waits(iterator)
    assert error is None, repr(error)
    rows = np.concatenate([first, *got])
    assert np.array_equal(np.sort(rows[:, 0]), np.sort(x[:, 0]))  # each row once (first columns are distinct)
    assert np.array_equal(rows[np.argsort(rows[:, 0])], x[np.argsort(x[:, 0])])
    assert 1.0 < max(took) < 6.0, took  # someone waited out the outage, and no longer than the deadline


def test_a_server_down_past_the_deadline_fails_within_it(data: tuple[np.ndarray, FaultProxy]) -> None:
    _, proxy = data
    url = f"{proxy.url}/x.npy"
    loader = npyfeed.Loader(
        url, 500, shuffle="block", seed=3, block_rows=1000, window_blocks=2, prefetch=1, storage_options=SMALL
    )
    iterator = iter(loader)
    next(iterator)
    proxy.down()
    took, _, error = waits(iterator)
    assert isinstance(error, TimeoutError), repr(error)
    assert url in str(error) and f"{DEADLINE:g} s deadline" in str(error), str(error)
    assert max(took) < DEADLINE + TIMEOUT + SLACK, took
    began = time.monotonic()
    with pytest.raises(TimeoutError, match=r"reading its metadata: .* deadline \(\d+ attempts, last: ") as info:
        npyfeed.open(url, storage_options=LIMITS)  # refused at open too, after retrying until the deadline
    assert DEADLINE - 0.5 < time.monotonic() - began < DEADLINE + TIMEOUT + SLACK
    print(info.value)


def test_request_slots_serve_reads_waited_for_first_then_the_earliest() -> None:
    """A freed request slot goes to a read someone waits for before read-ahead, and among those to the read that
    must end first (began first): a consumer's first batch is not queued behind the batches read ahead of it."""
    import asyncio

    from npyfeed.storage.concurrency import Slots

    async def scenario() -> list[str]:
        slots = Slots(1)
        served: list[str] = []
        release = asyncio.Event()

        async def read(name: str, background: bool, end: float) -> None:
            async with slots.hold(background, end):
                served.append(name)
                await release.wait()

        first = asyncio.create_task(read("holder", False, 0.0))
        await asyncio.sleep(0)
        waiting = [("ahead", True, 1.0), ("later read", False, 9.0), ("gone", False, 0.5), ("first read", False, 2.0)]
        tasks = {name: asyncio.create_task(read(name, bg, end)) for name, bg, end in waiting}
        await asyncio.sleep(0)
        tasks["gone"].cancel()  # a waiter cancelled in the queue is skipped, its place not lost
        release.set()
        await asyncio.gather(first, *tasks.values(), return_exceptions=True)
        return served

    assert asyncio.run(scenario()) == ["holder", "first read", "later read", "ahead"]
