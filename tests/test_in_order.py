"""Warm passes in file order copied on the consumer's thread (npyfeed.loader.in_order), with np.load as the oracle."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import npyfeed
from npyfeed import Loader
from npyfeed.loader import in_order
from npyfeed.loader.buffers import Ring
from npyfeed.loader.kernel_hints import KernelHints

N = 5000


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    data = {
        "x": rng.standard_normal((N, 3, 5)).astype(np.float32),
        "y": np.arange(N, dtype=np.int64),
        "w": rng.standard_normal(N).astype(">f4"),
        "s": np.array(
            [(i % 256, i * 0.5) for i in range(N)],
            dtype=np.dtype({"names": ["a", "b"], "formats": ["u1", "<f8"], "itemsize": 16}),
        ),
    }
    out = {}
    for name, array in data.items():
        out[name] = tmp_path / f"{name}.npy"
        np.save(out[name], array)
    return out


def _threads_started(loader: Loader) -> bool:
    return loader.read_path._here().pool is not None


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("batch_size", [1, 7, 256, 4999, 5000, 6000])
def test_a_pass_in_file_order_is_the_file_and_never_a_view_of_it(files: dict[str, Path], batch_size: int) -> None:
    x, y, s = (np.load(files[k], mmap_mode="r") for k in ("x", "y", "s"))
    loader = Loader((files["x"], files["y"], files["s"]), batch_size)
    kept = list(loader)  # every batch kept: a buffer still held is never reused
    assert not _threads_started(loader)  # copied here, no read-ahead
    assert len(kept) == len(loader) == -(-N // batch_size)
    for k, (bx, by, bs) in enumerate(kept):
        rows = slice(k * batch_size, (k + 1) * batch_size)
        assert _same_bytes(bx, x[rows]) and _same_bytes(by, y[rows]) and _same_bytes(bs, s[rows])
        assert not any(np.may_share_memory(b, m) for b, m in ((bx, x), (by, y), (bs, s)))


def test_dicts_big_endian_and_one_dimensional_columns(files: dict[str, Path]) -> None:
    w = np.load(files["w"])
    loader = Loader({"w": files["w"], "y": files["y"]}, 300, drop_remainder=True)
    batches = list(loader)
    assert len(batches) == N // 300 and all(list(b) == ["w", "y"] for b in batches)
    for k, b in enumerate(batches):
        assert _same_bytes(b["w"], w[k * 300 : k * 300 + 300])  # big-endian kept, as np.load gives it
    np.testing.assert_array_equal(np.concatenate([b["y"] for b in batches]), np.arange(N // 300 * 300))


def test_strided_sharded_and_resumed_passes(files: dict[str, Path]) -> None:
    y = np.load(files["y"])
    loader = Loader(files["y"], 10)
    got = [(i, b) for i, b in loader.iter_batches(0, range(1, len(loader), 3))]
    assert [i for i, _ in got] == list(range(1, len(loader), 3))
    for i, b in got:
        np.testing.assert_array_equal(b, y[i * 10 : i * 10 + 10])
    shards = [Loader(files["y"], 64, shard=(k, 3)) for k in range(3)]
    seen = np.concatenate([np.concatenate(list(s)) for s in shards])
    np.testing.assert_array_equal(np.sort(seen), y)  # every row once, across the workers
    for k, shard in enumerate(shards):
        first = next(iter(shard.iter_batches(1)))[1]
        np.testing.assert_array_equal(first, y[k * 64 : k * 64 + 64])
    # A checkpoint taken mid-pass resumes exactly after the last batch received.
    a = Loader(files["y"], 64)
    it = iter(a)
    head = [next(it) for _ in range(7)]
    state = a.get_state()
    b = Loader(files["y"], 64)
    b.set_state(state)
    rest = list(b)
    np.testing.assert_array_equal(np.concatenate(head + rest), y)
    assert not any(_threads_started(x) for x in (loader, *shards, a, b))


def test_a_file_rewritten_mid_pass_raises_after_the_batches_read_before(tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    n = 3 * in_order.GROUP_BYTES // 8  # three groups of int64 rows
    np.save(path, np.arange(n, dtype=np.int64))
    loader = Loader(path, 4096)
    got = []
    with pytest.raises(npyfeed.FileChangedError, match="since it was opened") as info:
        for k, b in enumerate(loader):
            got.append(b.copy())
            if k == 3:
                with open(path, "r+b") as f:  # in place: the same inode and size, other bytes
                    f.seek(-8 * n, os.SEEK_END)
                    f.write(np.full(n, -1, np.int64).tobytes())
                os.utime(path, ns=(1, 1))  # a different mtime whatever the clock's resolution
    assert str(path) in str(info.value) and "epoch 0" in " ".join(info.value.__notes__)
    assert 4 <= len(got) < len(loader)
    np.testing.assert_array_equal(np.concatenate(got), np.arange(4096 * len(got)))  # no row of the new version


def test_reads_that_turn_slow_hand_the_rest_of_the_pass_to_the_read_threads(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The speed is the kernel hints' measurement and the waits for storage major page faults: both made "slow"
    # here, so the test does not depend on the disk.
    def slow(self: KernelHints, nbytes: int, seconds: float) -> None:
        self.hinting = True

    monkeypatch.setattr(in_order, "GROUP_BYTES", 1024)  # groups of two batches of 512 bytes
    monkeypatch.setattr(in_order, "CHECK_BYTES", 4096)  # a check period of 8 batches
    monkeypatch.setattr(KernelHints, "measured", slow)
    faults = iter(range(1000))
    monkeypatch.setattr(in_order, "major_faults", lambda: next(faults))  # every copy waited for storage
    y = np.load(files["y"])
    loader = Loader(files["y"], 64)
    batches = list(loader)
    assert _threads_started(loader)
    np.testing.assert_array_equal(np.concatenate(batches), y)
    assert loader.metrics.snapshot()["batches"] == len(loader)


def test_read_ahead_asked_for_or_a_transform_keeps_the_read_threads(files: dict[str, Path]) -> None:
    y = np.load(files["y"])
    for kw in ({"prefetch": 4}, {"transform": lambda b: b + 1}, {"io_hints": True}, {"shuffle": "block"}):
        loader = Loader(files["y"], 64, seed=0, **kw)  # type: ignore[arg-type]
        batches = list(loader)
        assert _threads_started(loader), kw
        assert sorted(np.concatenate(batches).tolist()) == (y + ("transform" in kw)).tolist()


def test_a_ring_buffer_is_taken_again_only_once_no_array_refers_to_it() -> None:
    ring = Ring([((4, 3), np.dtype(np.float32)), ((4,), np.dtype(">i8"))], capacity=2)
    (x, y), (rx, ry) = ring.take()
    assert x.ctypes.data % 64 == 0 and y.ctypes.data % 64 == 0 and y.dtype == np.dtype(">i8")
    assert rx.shape == (4, 12) and ry.shape == (4, 8) and np.shares_memory(rx, x) and np.shares_memory(ry, y)
    held = y[1:2]  # a batch the user keeps, of one column
    del x, y, rx, ry
    (x2, _), _ = ring.take()
    first = x2.ctypes.data
    del x2
    (x3, _), _ = ring.take()
    assert x3.ctypes.data == first  # the second buffer again: the first is still held
    del held
    (x4, _), _ = ring.take()
    assert x4.ctypes.data != first  # the first, free again (the second is still held: x3 is its array itself)
    kept = [ring.take()[0] for _ in range(3)]  # all held: fresh buffers past the capacity, none shared
    addresses = {a[0].ctypes.data for a in kept} | {x3.ctypes.data, x4.ctypes.data}
    assert len(addresses) == 5
