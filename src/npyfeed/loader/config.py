"""The Loader's configuration, validated once where it enters, and what it decides: block geometry, shard fit.

Every argument of :class:`npyfeed.Loader` passes one rule (:mod:`npyfeed.arguments`: NumPy ints are ints, bools
are never ints); an argument that cannot apply (a block geometry without ``shuffle="block"``) is refused, and a
shard count the epoch cannot feed is refused before any read.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from npyfeed import arguments as args
from npyfeed.arguments import ShuffleMode
from npyfeed.errors import ConfigError
from npyfeed.launcher import resolve as resolve_launch
from npyfeed.loader.geometry import default_geometry
from npyfeed.shard import Layout, Shard
from npyfeed.sources.columns import Columns
from npyfeed.system import cpu_count

__all__ = ["LoaderConfig"]


@dataclass(frozen=True)
class LoaderConfig:
    """The Loader's arguments, each checked (see :class:`npyfeed.Loader` for their meaning)."""

    batch_size: int
    shuffle: ShuffleMode
    seed: int
    drop_remainder: bool
    transform: Callable[[Any], Any] | None
    shard: Shard
    num_threads: int
    io_threads: int
    prefetch: int | None
    io_hints: bool | None
    epoch: int
    tune_depth: bool
    """Autotune the read-ahead depth (``autotune`` on and no ``prefetch`` given)."""
    tune_threads: bool
    """Autotune the reads at once (``autotune`` on and no ``num_threads`` given)."""
    geometry_given: tuple[int | None, int | None]
    """``(block_rows, window_blocks)`` as given (``None``: chosen by default, and a saved state's may replace it)."""

    @classmethod
    def of(
        cls,
        batch_size: Any,
        *,
        shuffle: Any,
        seed: Any,
        drop_remainder: Any,
        transform: Any,
        shard: Any,
        block_rows: Any,
        window_blocks: Any,
        num_threads: Any,
        io_threads: Any,
        prefetch: Any,
        io_hints: Any,
        epoch: Any,
        autotune: Any = None,
    ) -> LoaderConfig:
        """Check every argument, in the order the Loader lists them; a ``ConfigError`` names the first bad one."""
        batch_size = args.positive_int("batch_size", batch_size)
        shuffle_mode = args.shuffle_mode(shuffle)
        given_seed = args.seed("seed", seed)
        drop_remainder = args.flag("drop_remainder", drop_remainder)
        transform = args.function("transform", transform)
        shard = Shard(*resolve_launch()) if isinstance(shard, str) and shard == "auto" else Shard.of(shard)
        given_threads = args.optional_positive_int("num_threads", num_threads)
        threads = given_threads or min(16, max(2, cpu_count()))
        io = max(threads, args.optional_positive_int("io_threads", io_threads) or min(16, 4 * threads))
        prefetch = args.optional_positive_int("prefetch", prefetch)
        io_hints = args.optional_flag("io_hints", io_hints)
        epoch = args.integer("epoch", epoch)
        tune = args.optional_flag("autotune", autotune)
        if tune and given_threads is not None and prefetch is not None:
            why = "num_threads and prefetch are both given, which fixes what it would tune (leave one out)"
            raise args.inapplicable("autotune", tune, why)
        tune = tune is not False
        given = (
            args.optional_positive_int("block_rows", block_rows),
            args.optional_positive_int("window_blocks", window_blocks),
        )
        for name, value in zip(("block_rows", "window_blocks"), given, strict=True):
            if value is not None and shuffle_mode != "block":
                why = f"it sets the block shuffle's geometry, and shuffle is {shuffle_mode!r} (pass shuffle='block')"
                raise args.inapplicable(name, value, why)
        return cls(
            batch_size=batch_size,
            shuffle=shuffle_mode,
            seed=given_seed if given_seed is not None else secrets.randbits(63),
            drop_remainder=drop_remainder,
            transform=transform,
            shard=shard,
            num_threads=threads,
            io_threads=io,
            prefetch=prefetch,
            io_hints=io_hints,
            epoch=epoch,
            tune_depth=tune and prefetch is None,
            tune_threads=tune and given_threads is None,
            geometry_given=given,
        )

    def geometry(self, source: Columns) -> tuple[int, int]:
        """``(block_rows, window_blocks)``: those given, the rest chosen for where ``source``'s bytes live."""
        default = default_geometry(source) if None in self.geometry_given else (0, 0)
        block, window = (g or d for g, d in zip(self.geometry_given, default, strict=True))
        return block, window

    def layout(self, source: Columns) -> Layout:
        """This shard's positions of a whole epoch; a ``ConfigError`` if there are more shards than batches."""
        n, shard = len(source), self.shard
        layout = Layout(n, self.batch_size, shard.count, shard.index, self.drop_remainder)
        batches = -(-n // self.batch_size)
        if shard.count > 1 and n > 0 and (shard.count > batches or not len(layout)):
            raise ConfigError(
                f"shard count {shard.count} is more than the {batches} batches per epoch of "
                f"{n} rows in batches of {self.batch_size}: use at most {batches} shards (or smaller "
                "batches)"
            )
        return layout
