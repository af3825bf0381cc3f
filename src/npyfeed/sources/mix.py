"""Weighted mixing of sources: which source, and which of its rows, each position of an epoch reads.

``mix(sources, weights)`` returns a :class:`Mix`, a :class:`~npyfeed.Columns` over all the sources' rows whose
per-epoch counts define the Loader's order (:func:`npyfeed.order.mix_order.mix_order`). Like every order, that
one is a pure function of ``(seed, epoch, position)``, so a mixture shuffles, shards, resumes and reads the same
through every adapter.

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
from typing import Any

import numpy as np

from npyfeed import arguments as args
from npyfeed.errors import ColumnMismatchError, ConfigError
from npyfeed.sources.columns import Columns, Source, check_storage_options, opens_urls
from npyfeed.sources.concat import ConcatArray

__all__ = ["Mix", "apportion", "mix"]


def mix(
    sources: Sequence[Source] | Mapping[str, Source],
    weights: Sequence[float] | Mapping[str, float],
    *,
    epoch_rows: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
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
        storage_options: object-store configuration for the sources that are URLs, as for :func:`npyfeed.open`.
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
    check_storage_options(specs, storage_options)
    opened = []
    for name, spec in zip(names, specs, strict=True):
        if isinstance(spec, Mix):
            raise ConfigError(f"mix source {name!r} is itself a mix; mix the underlying sources with one weight each")
        opened.append(Columns.of(spec, storage_options=storage_options if opens_urls(spec) else None))
    return Mix(names, tuple(opened), values, args.optional_positive_int("epoch_rows", epoch_rows))


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
    return tuple(
        args.number(f"mix weight of source {name!r}", w, exclusive=True) for name, w in zip(names, values, strict=True)
    )


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
    concatenation); ``len(mix)`` is the number of positions per epoch; which row each position reads is the
    order :func:`npyfeed.order.mix_order.mix_order` builds from ``counts``, ``sizes`` and ``offsets``.
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
        self.epoch_rows = sum(self.sizes) if epoch_rows is None else args.positive_int("epoch_rows", epoch_rows)
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
