"""Which row comes at each position of an epoch: a pure function of ``(seed, epoch, position)``.

No order keeps an N-sized permutation in memory. :class:`GlobalShuffle` is a keyed Feistel bijection on
``[0, 2**k)`` with cycle walking down to ``[0, N)``, so a billion-row shuffle costs a few hundred bytes, starts at
once, and any position of any epoch can be computed directly: a checkpoint is just ``(seed, epoch, position)``.

>>> order = GlobalShuffle(10, seed=0)
>>> sorted(order.rows(epoch=0, start=0, stop=10).tolist()) == list(range(10))
True
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from npyfeed.errors import ConfigError
from npyfeed.runs import runs

__all__ = ["BlockShuffle", "ChunkCache", "GlobalShuffle", "Order", "Sequential", "block_geometry", "mix64", "unwrap"]

_M64 = (1 << 64) - 1
_ROUNDS = 6  # Feistel rounds; 4 make a pseudo-random permutation, 6 leave a margin for a weak round function.


def mix64(x: int) -> int:
    """SplitMix64's finalizer on a Python int: a fast 64-bit bijection with good avalanche."""
    x &= _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _mix64_array(x: np.ndarray) -> np.ndarray:
    """``mix64`` on a uint64 array, in place (multiplications wrap modulo 2**64, as intended)."""
    tmp = np.empty_like(x)
    for shift, factor in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        np.right_shift(x, np.uint64(shift), out=tmp)
        x ^= tmp
        x *= np.uint64(factor)
    np.right_shift(x, np.uint64(31), out=tmp)
    x ^= tmp
    return x


@runtime_checkable
class Order(Protocol):
    """Maps positions ``[start, stop)`` of an epoch to row indices; every epoch is a permutation of rows."""

    @property
    def num_rows(self) -> int: ...

    def rows(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Row indices (int64) at positions ``start..stop-1`` of ``epoch``."""
        ...

    def hint_ranges(self, epoch: int, start: int, stop: int) -> list[tuple[int, int]]:
        """Row ranges worth asking the kernel to read ahead before positions ``start..stop-1`` are read."""
        ...


def _check_range(num_rows: int, start: int, stop: int) -> None:
    if not 0 <= start <= stop <= num_rows:
        raise ConfigError(f"positions [{start}, {stop}) are outside an epoch of {num_rows} rows")


@dataclass(frozen=True)
class Sequential:
    """Rows in file order, every epoch."""

    num_rows: int

    def rows(self, epoch: int, start: int, stop: int) -> np.ndarray:
        _check_range(self.num_rows, start, stop)
        return np.arange(start, stop, dtype=np.int64)

    def hint_ranges(self, epoch: int, start: int, stop: int) -> list[tuple[int, int]]:
        return [(start, stop)] if stop > start else []


@dataclass(frozen=True)
class GlobalShuffle:
    """A uniformly scrambled order of all rows, different for every ``(seed, epoch)``, in O(1) memory.

    A balanced Feistel network over ``2 * half_bits`` bits is a bijection for any round function; positions that
    land outside ``[0, num_rows)`` are walked through the network again (cycle walking) until they land inside,
    which keeps it a bijection on ``[0, num_rows)``. The domain is less than 4x ``num_rows``, so a position needs
    fewer than 4 passes on average.
    """

    num_rows: int
    seed: int
    _half_bits: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.num_rows < 0:
            raise ConfigError(f"num_rows must be >= 0, got {self.num_rows}")
        bits = max(1, (self.num_rows - 1).bit_length())
        object.__setattr__(self, "_half_bits", (bits + 1) // 2)

    def _round_keys(self, epoch: int) -> list[np.uint64]:
        base = mix64(mix64(self.seed & _M64) ^ mix64((epoch + 0x9E3779B97F4A7C15) & _M64))
        return [np.uint64(mix64(base + 0x632BE59BD9B4E019 * (r + 1))) for r in range(_ROUNDS)]

    def _network(self, x: np.ndarray, keys: list[np.uint64]) -> np.ndarray:
        h = np.uint64(self._half_bits)
        mask = np.uint64((1 << self._half_bits) - 1)
        left, right = x >> h, x & mask
        for key in keys:
            f = right ^ key
            _mix64_array(f)
            f &= mask
            f ^= left
            left, right = right, f
        left <<= h
        left |= right
        return left

    def permute(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        """The rows at ``positions`` (any int array in ``[0, num_rows)``) in ``epoch``."""
        keys = self._round_keys(epoch)
        x = self._network(np.asarray(positions, dtype=np.uint64), keys)
        limit = np.uint64(self.num_rows)
        outside = np.flatnonzero(x >= limit)
        while outside.size:
            x[outside] = self._network(x[outside], keys)
            outside = outside[x[outside] >= limit]
        return x.astype(np.int64)

    def rows(self, epoch: int, start: int, stop: int) -> np.ndarray:
        _check_range(self.num_rows, start, stop)
        return self.permute(epoch, np.arange(start, stop, dtype=np.uint64))

    def hint_ranges(self, epoch: int, start: int, stop: int) -> list[tuple[int, int]]:
        return runs(np.sort(self.rows(epoch, start, stop)))


@dataclass(frozen=True)
class BlockShuffle:
    """An I/O-friendly shuffle: contiguous blocks in a shuffled order, rows mixed within windows of blocks.

    Full blocks of ``block_rows`` rows are put in a random order (a :class:`GlobalShuffle` over block ids); the
    final partial block, if any, stays last. The epoch is then cut into windows of ``window_blocks`` consecutive
    blocks, and rows are shuffled uniformly inside each window. A batch therefore draws its rows from
    ``window_blocks`` blocks: larger windows are closer to a global shuffle, larger blocks read faster from disk.
    Rows that start in the same block stay within one window of each other, so two rows more than a window apart
    on disk never meet in a batch in the same epoch; between epochs the grouping changes.
    """

    num_rows: int
    seed: int
    block_rows: int
    window_blocks: int

    def __post_init__(self) -> None:
        if self.block_rows < 1:
            raise ConfigError(f"block_rows must be >= 1, got {self.block_rows}")
        if self.window_blocks < 1:
            raise ConfigError(f"window_blocks must be >= 1, got {self.window_blocks}")

    @property
    def window_rows(self) -> int:
        return self.block_rows * self.window_blocks

    @property
    def _full_blocks(self) -> int:
        return self.num_rows // self.block_rows

    def _block_order(self) -> GlobalShuffle:
        return GlobalShuffle(self._full_blocks, mix64(self.seed ^ 0xB10C))

    def rows(self, epoch: int, start: int, stop: int) -> np.ndarray:
        _check_range(self.num_rows, start, stop)
        positions = np.arange(start, stop, dtype=np.int64)
        out = np.empty_like(positions)
        window_of = positions // self.window_rows
        blocks = self._block_order()
        for window in np.unique(window_of).tolist():
            sel = window_of == window
            first = window * self.window_rows
            size = min(self.window_rows, self.num_rows - first)
            inner = GlobalShuffle(size, mix64(self.seed ^ mix64(window + 1))).permute(epoch, positions[sel] - first)
            slot = window * self.window_blocks + inner // self.block_rows
            full = slot < self._full_blocks
            block = np.full_like(slot, self._full_blocks)  # the partial tail block keeps the last slot
            if full.any():
                block[full] = blocks.permute(epoch, slot[full])
            out[sel] = block * self.block_rows + inner % self.block_rows
        return out

    def hint_ranges(self, epoch: int, start: int, stop: int) -> list[tuple[int, int]]:
        """The whole blocks of the windows these positions fall in: read sequentially, a block at a time."""
        _check_range(self.num_rows, start, stop)
        if stop <= start:
            return []
        first_window, last_window = start // self.window_rows, (stop - 1) // self.window_rows
        slots = np.arange(
            first_window * self.window_blocks,
            min((last_window + 1) * self.window_blocks, -(-self.num_rows // self.block_rows)),
            dtype=np.int64,
        )
        full = slots[slots < self._full_blocks]
        ids = sorted(self._block_order().permute(epoch, full).tolist()) if full.size else []
        if slots.size and slots[-1] >= self._full_blocks:
            ids.append(self._full_blocks)
        return [(b * self.block_rows, min((b + 1) * self.block_rows, self.num_rows)) for b in ids]


class ChunkCache:
    """Wraps an order and computes its rows a large chunk of positions at a time, keeping the last few chunks.

    A batch needs a few hundred positions, but each NumPy call has a fixed cost of about a microsecond, so a
    permutation computed per batch costs far more than the copy it schedules. Chunks of ``chunk`` positions
    amortize it; ``keep`` chunks (``keep x chunk x 8`` bytes) bound the memory.
    """

    def __init__(self, order: Order, chunk: int = 1 << 16, keep: int = 4) -> None:
        self.order, self.chunk, self.keep = order, chunk, keep
        self._chunks: dict[tuple[int, int], np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def num_rows(self) -> int:
        return self.order.num_rows

    def __getstate__(self) -> dict[str, object]:
        return {"order": self.order, "chunk": self.chunk, "keep": self.keep}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["order"], state["chunk"], state["keep"])  # type: ignore[misc]

    def _chunk(self, epoch: int, index: int) -> np.ndarray:
        key = (epoch, index)
        with self._lock:
            rows = self._chunks.get(key)
            if rows is None:
                start = index * self.chunk
                rows = self.order.rows(epoch, start, min(start + self.chunk, self.num_rows))
                self._chunks[key] = rows
                while len(self._chunks) > self.keep:
                    del self._chunks[next(iter(self._chunks))]
            return rows

    def rows(self, epoch: int, start: int, stop: int) -> np.ndarray:
        _check_range(self.num_rows, start, stop)
        if stop <= start:
            return np.empty(0, np.int64)
        first, last = start // self.chunk, (stop - 1) // self.chunk
        parts = [self._chunk(epoch, c) for c in range(first, last + 1)]
        joined = parts[0] if len(parts) == 1 else np.concatenate(parts)
        offset = start - first * self.chunk
        return joined[offset : offset + stop - start].copy()

    def hint_ranges(self, epoch: int, start: int, stop: int) -> list[tuple[int, int]]:
        return self.order.hint_ranges(epoch, start, stop)


def unwrap(order: Order) -> Order:
    """The order a :class:`ChunkCache` computes (``order`` itself when it is not cached)."""
    return order.order if isinstance(order, ChunkCache) else order


def block_geometry(order: Order) -> tuple[int, int]:
    """``(block_rows, window_blocks)`` of a (cached) :class:`BlockShuffle`; ``(1, 1)`` for any other order."""
    inner = unwrap(order)
    return (inner.block_rows, inner.window_blocks) if isinstance(inner, BlockShuffle) else (1, 1)
