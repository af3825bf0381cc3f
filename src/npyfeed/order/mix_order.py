"""The order of a weighted mixture: which row of the concatenated sources each position of an epoch reads.

A pure function of ``(seed, epoch, position)`` like every order; what an epoch of a mixture is, and why positions
are interleaved by time keys, is told in :mod:`npyfeed.sources.mix` and docs/mixing.md. The mixture itself (its
sources, ``counts`` per epoch, ``sizes`` and ``offsets`` in the concatenation) is a source; this module only
needs those numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npyfeed.errors import ConfigError
from npyfeed.order.orders import ChunkCache, GlobalShuffle, Order, Sequential, mix64
from npyfeed.runs import runs

__all__ = ["MixOrder", "mix_order"]

_M64 = (1 << 64) - 1


def mix_order(
    counts: tuple[int, ...], sizes: tuple[int, ...], offsets: tuple[int, ...], shuffle: str, seed: int
) -> Order:
    """The order of a mixture: ``shuffle`` is ``"none"`` or ``"global"`` (within each source)."""
    if shuffle not in ("none", "global"):
        raise ConfigError(f"a mix supports shuffle=False or True (global), not {shuffle!r}")
    order = MixOrder(counts, sizes, offsets, seed, shuffle == "global")
    return ChunkCache(order) if shuffle == "global" else order


@dataclass(frozen=True)
class MixOrder:
    """Positions of an epoch -> rows of the concatenated sources, interleaved by weight (see the module docs).

    Item ``j`` of source ``s`` in an epoch has the integer time key ``(j * Q + u_s) // c_s`` (``c_s`` its rows
    per epoch, ``Q`` the time resolution, ``u_s`` in ``[0, Q)`` its phase), and position ``p`` is the item of
    rank ``p`` by (key, source). The items with a key below ``T`` are counted in closed form per source, so the
    ranks of any range of positions are found by bisection on ``T``: no per-epoch table in memory.
    """

    counts: tuple[int, ...]
    sizes: tuple[int, ...]
    offsets: tuple[int, ...]
    seed: int
    shuffled: bool

    @property
    def num_rows(self) -> int:
        return sum(self.counts)

    @property
    def _resolution(self) -> int:
        return max(1, (1 << 61) // self.num_rows)  # j * Q + u < 2**62: int64 keys never overflow

    def _phases(self, epoch: int) -> list[int]:
        q = self._resolution
        if not self.shuffled:
            return [q // 2] * len(self.counts)
        base = mix64(mix64(self.seed & _M64) ^ mix64((epoch * 0x9E3779B97F4A7C15 + 0x3C6EF372) & _M64))
        return [mix64(base + 0xD1B54A32D192ED03 * (s + 1)) % q for s in range(len(self.counts))]

    def _before(self, t: int, phases: list[int]) -> list[int]:
        """Per source, how many of its items have a time key below ``t``."""
        q = self._resolution
        return [min(c, max(0, -((u - c * t) // q))) for c, u in zip(self.counts, phases, strict=True)]

    def _bisect(self, target: int, phases: list[int], *, at_most: bool) -> int:
        """The largest ``t`` with ``rank(t) <= target`` (``at_most``), else the smallest with ``rank(t) >= target``."""
        lo, hi = 0, self._resolution
        while lo < hi:
            mid = (lo + hi + 1) // 2 if at_most else (lo + hi) // 2
            rank = sum(self._before(mid, phases))
            if at_most:
                lo, hi = (mid, hi) if rank <= target else (lo, mid - 1)
            else:
                lo, hi = (lo, mid) if rank >= target else (mid + 1, hi)
        return lo

    def source_items(self, epoch: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """For positions ``start..stop-1``: which source each reads, and its item index within the epoch."""
        if not 0 <= start <= stop <= self.num_rows:
            raise ConfigError(f"positions [{start}, {stop}) are outside an epoch of {self.num_rows} rows")
        if stop == start:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        phases, q = self._phases(epoch), self._resolution
        t0 = self._bisect(start, phases, at_most=True)
        t1 = self._bisect(stop, phases, at_most=False)
        first, last = self._before(t0, phases), self._before(t1, phases)
        keys, sources, items = [], [], []
        for s, (a, b, c, u) in enumerate(zip(first, last, self.counts, phases, strict=True)):
            j = np.arange(a, b, dtype=np.int64)
            keys.append((j * q + u) // c)
            sources.append(np.full(j.size, s, np.int64))
            items.append(j)
        key, source, item = np.concatenate(keys), np.concatenate(sources), np.concatenate(items)
        ranked = np.lexsort((source, key))[start - sum(first) : stop - sum(first)]
        return source[ranked], item[ranked]

    def _source_order(self, s: int) -> Order:
        if not self.shuffled:
            return Sequential(self.sizes[s])
        return GlobalShuffle(self.sizes[s], mix64(self.seed ^ mix64(0x5EED0000 + s)))

    def rows(self, epoch: int, start: int, stop: int) -> np.ndarray:
        source, item = self.source_items(epoch, start, stop)
        out = np.empty(source.size, np.int64)
        for s in np.unique(source).tolist():
            sel = source == s
            j = item[sel]  # consecutive: the items of one source come in order
            n, c = self.sizes[s], self.counts[s]
            first = epoch * c + int(j[0])  # this source's stream position: it carries on across epochs
            order = self._source_order(s)
            parts, k, end = [], first, first + j.size
            while k < end:  # one pass over the source per cycle, each cycle in its own order
                cycle, r = divmod(k, n)
                take = min(end - k, n - r)
                parts.append(order.rows(cycle, r, r + take))
                k += take
            out[sel] = np.concatenate(parts) + self.offsets[s]
        return out

    def hint_ranges(self, epoch: int, start: int, stop: int) -> list[tuple[int, int]]:
        return runs(np.sort(self.rows(epoch, start, stop)))
