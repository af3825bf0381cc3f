"""Weighted mixing of sources: which source, and which of its rows, each position of an epoch reads.

``mix(sources, weights)`` returns a :class:`Mix`, a :class:`~npyfeed.Columns` over all the sources' rows that
also defines the Loader's order (:meth:`Mix.make_order`). Like every order it is a pure function of
``(seed, epoch, position)``, so a mixture shuffles, shards, resumes and reads the same through every adapter.

What an epoch of a mixture is (see docs/mixing.md): ``epoch_rows`` positions (default: all sources' rows
together), of which source ``s`` gets ``counts[s]`` — its weight's share, rounded so the counts add up. Each
source streams its rows through epochs: its rows ``e * counts[s] ... (e + 1) * counts[s] - 1`` of its own stream
fall in epoch ``e``, and its stream is its rows in a fresh order per *cycle* (one pass over the source). So no
row of a source repeats before all its rows were read; an upsampled source wraps into a new cycle with a new
order, a downsampled one continues next epoch where it stopped.

Positions are interleaved smoothly, not drawn at random: the ``j``-th item of source ``s`` sits at the time
``(j + u_s) / counts[s]`` of the epoch (``u_s`` a per-epoch random phase in [0, 1)), and positions take items in
time order. Every prefix of an epoch then holds each source's share to within a row or two, so every batch has
its weight's share of rows, not just the epoch on average.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from npyfeed.errors import ColumnMismatchError, ConfigError
from npyfeed.order.orders import ChunkCache, GlobalShuffle, Order, Sequential, mix64
from npyfeed.sources.columns import Columns, Source
from npyfeed.sources.concat import ConcatArray

__all__ = ["Mix", "MixOrder", "mix"]

_M64 = (1 << 64) - 1


def mix(
    sources: Sequence[Source] | Mapping[str, Source],
    weights: Sequence[float] | Mapping[str, float],
    *,
    epoch_rows: int | None = None,
) -> Mix:
    """Mix ``sources`` (anything :func:`npyfeed.open` accepts, all of the same structure) by ``weights``.

    >>> import numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> np.save(os.path.join(d, "web.npy"), np.zeros(700)); np.save(os.path.join(d, "code.npy"), np.ones(100))
    >>> m = mix({"web": os.path.join(d, "web.npy"), "code": os.path.join(d, "code.npy")}, {"web": 0.7, "code": 0.3})
    >>> len(m), m.counts
    (800, (560, 240))

    Args:
        sources: a list, or a dict of named sources.
        weights: positive numbers, a list as long as ``sources`` or a dict with the same keys.
        epoch_rows: positions per epoch (default: the sources' rows added up).
    """
    if isinstance(sources, Mapping):
        names: tuple[str | int, ...] = tuple(sources)
        specs = list(sources.values())
    elif isinstance(sources, (list, tuple)):
        names, specs = tuple(range(len(sources))), list(sources)
    else:
        raise ConfigError(f"mix() takes a list or dict of sources, got {type(sources).__name__}")
    if not specs:
        raise ConfigError("mix() needs at least one source")
    values = _weights(names, weights)
    opened = []
    for name, spec in zip(names, specs, strict=True):
        if isinstance(spec, Mix):
            raise ConfigError(f"mix source {name!r} is itself a mix; mix the underlying sources with one weight each")
        opened.append(Columns.of(spec))
    return Mix(names, tuple(opened), values, epoch_rows)


def _weights(names: tuple[str | int, ...], weights: Sequence[float] | Mapping[str, float]) -> tuple[float, ...]:
    if isinstance(weights, Mapping):
        if set(weights) != set(names):
            missing, extra = sorted(map(str, set(names) - set(weights))), sorted(map(str, set(weights) - set(names)))
            raise ConfigError(f"mix weights must have the sources' keys: missing {missing}, unexpected {extra}")
        values = [weights[n] for n in names]  # type: ignore[index]
    elif isinstance(weights, (list, tuple)):
        if len(weights) != len(names):
            raise ConfigError(f"mix got {len(names)} sources but {len(weights)} weights")
        values = list(weights)
    else:
        raise ConfigError(f"mix weights must be a list or dict of positive numbers, got {type(weights).__name__}")
    for name, w in zip(names, values, strict=True):
        ok = isinstance(w, (int, float, np.integer, np.floating)) and not isinstance(w, (bool, np.bool_))
        if not ok or not math.isfinite(float(w)) or float(w) <= 0:
            raise ConfigError(f"mix weight of source {name!r} must be a positive number, got {w!r}")
    return tuple(float(w) for w in values)


def apportion(total: int, weights: Sequence[float]) -> tuple[int, ...]:
    """``total`` split in proportion to ``weights`` (largest remainders; the parts add up to ``total``)."""
    whole = sum(weights)
    quotas = [total * w / whole for w in weights]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return tuple(counts)


class Mix(Columns):
    """Several sources with one structure, read as a weighted mixture (see :func:`mix` and the module docs).

    As :class:`Columns`, its rows are all the sources' rows one after another (``mix[i]`` is row ``i`` of that
    concatenation); ``len(mix)`` is the number of positions per epoch, and the Loader asks :meth:`make_order`
    which row each position reads.
    """

    def __init__(
        self,
        names: tuple[str | int, ...],
        sources: tuple[Columns, ...],
        weights: tuple[float, ...],
        epoch_rows: int | None,
    ) -> None:
        first = sources[0]
        for name, src in zip(names, sources, strict=True):
            _check_same_structure(names[0], first, name, src)
            if len(src) == 0:
                raise ConfigError(f"mix source {name!r} ({src.paths[0]}) has no rows")
        self.kind, self.keys = first.kind, first.keys
        self.arrays = tuple(
            ConcatArray([src.arrays[c] for src in sources]) if len(sources) > 1 else first.arrays[c]
            for c in range(len(first.keys))
        )
        self.names, self.sources, self.weights = names, sources, weights
        self.sizes = tuple(len(s) for s in sources)
        total = sum(self.sizes) if epoch_rows is None else epoch_rows
        if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < 1:
            raise ConfigError(f"epoch_rows must be a positive int, got {epoch_rows!r}")
        self.epoch_rows = int(total)
        self.counts = apportion(self.epoch_rows, weights)
        for name, count, w in zip(names, self.counts, weights, strict=True):
            if count == 0:
                raise ConfigError(
                    f"mix source {name!r} (weight {w:g}) gets no row in an epoch of {self.epoch_rows} rows; "
                    "raise its weight or epoch_rows"
                )
        self.offsets = tuple(int(x) for x in np.cumsum((0, *self.sizes[:-1])))

    def __len__(self) -> int:
        return self.epoch_rows

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{n!r}: {c}/{size} rows" for n, c, size in zip(self.names, self.counts, self.sizes, strict=True)
        )
        return f"Mix({self.epoch_rows} rows per epoch, {{{parts}}})"

    def make_order(self, shuffle: str, seed: int, block_rows: int, window_blocks: int) -> Order:
        """The Loader's order for this mixture: ``shuffle`` is ``"none"`` or ``"global"`` (within each source)."""
        if shuffle not in ("none", "global"):
            raise ConfigError(f"a mix supports shuffle=False or True (global), not {shuffle!r}")
        order = MixOrder(self.counts, self.sizes, self.offsets, seed, shuffle == "global")
        return ChunkCache(order) if shuffle == "global" else order

    def slice(self, start: int, stop: int) -> Columns:
        raise ConfigError("a mix cannot be split by rows: split each source first, then mix the parts")

    def will_need(self, ranges: Sequence[tuple[int, int]]) -> None:
        rows = sum(self.sizes)
        if list(ranges) == [(0, len(self))]:  # "the whole dataset" in positions: every row of every source
            ranges = [(0, rows)]
        clipped = [(max(0, a), min(rows, b)) for a, b in ranges if min(rows, b) > max(0, a)]
        super().will_need(clipped)


def _check_same_structure(first_name: str | int, first: Columns, name: str | int, src: Columns) -> None:
    where, there = f"mix source {name!r} ({src.paths[0]})", f"source {first_name!r} ({first.paths[0]})"
    if (src.kind, src.keys) != (first.kind, first.keys):
        raise ColumnMismatchError(
            f"{where} has columns {src.kind} {list(src.keys)}, but {there} has {first.kind} {list(first.keys)}"
        )
    for key, a, b in zip(first.keys, first.arrays, src.arrays, strict=True):
        if (b.dtype, b.shape[1:]) != (a.dtype, a.shape[1:]):
            raise ColumnMismatchError(
                f"{where}: column {key!r} has rows of shape {b.shape[1:]} and dtype {b.dtype}, but {there} has "
                f"shape {a.shape[1:]} and dtype {a.dtype}"
            )


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
        rows = np.sort(self.rows(epoch, start, stop))
        if rows.size == 0:
            return []
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = rows[np.concatenate(([0], breaks))]
        stops = rows[np.concatenate((breaks - 1, [rows.size - 1]))] + 1
        return list(zip(starts.tolist(), stops.tolist(), strict=True))
