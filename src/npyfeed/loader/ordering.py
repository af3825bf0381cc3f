"""The order a Loader reads and what a saved state may change of it: the seed, and a block geometry chosen by default.

A saved state pins ``(seed, epoch, position)`` and the block geometry. Restoring one adopts the saved seed, and the
saved geometry where this loader's was chosen by default (so a state saved reading local files resumes reading the
same files from a store, and back); anything else that differs is refused by :meth:`LoaderState.check`.
"""

from __future__ import annotations

from typing import Any

from npyfeed.arguments import ShuffleMode
from npyfeed.loader.config import LoaderConfig
from npyfeed.loader.state import LoaderState, fingerprint
from npyfeed.order.mix_order import mix_order
from npyfeed.order.orders import BlockShuffle, ChunkCache, GlobalShuffle, Order, Sequential, block_geometry
from npyfeed.sources.columns import Columns
from npyfeed.sources.mix import Mix

__all__ = ["Ordering", "make_order"]


def make_order(source: Columns, shuffle: ShuffleMode, seed: int, block_rows: int, window_blocks: int) -> Order:
    """The order of ``source``'s rows: a mixture's from its per-source counts, else the ``shuffle`` mode's."""
    n = len(source)
    if isinstance(source, Mix):
        return mix_order(source.counts, source.sizes, source.offsets, shuffle, seed)
    if shuffle == "global":
        return ChunkCache(GlobalShuffle(n, seed))
    if shuffle == "block":
        return ChunkCache(BlockShuffle(n, seed, block_rows, window_blocks))
    return Sequential(n)


class Ordering:
    """The seed and order of one Loader's rows, described as a :class:`LoaderState` and restored from one."""

    def __init__(self, config: LoaderConfig, source: Columns, block_rows: int, window_blocks: int) -> None:
        self.config = config
        self.source = source
        self.seed = config.seed
        self.order = make_order(source, config.shuffle, self.seed, block_rows, window_blocks)

    def describe(self, epoch: int, position: int) -> LoaderState:
        """The state of this order at global ``position`` of ``epoch``."""
        c = self.config
        return LoaderState(
            epoch=epoch,
            position=position,
            seed=self.seed,
            shuffle=c.shuffle,
            order=list(block_geometry(self.order)) if c.shuffle == "block" else [],
            num_rows=len(self.source),
            batch_size=c.batch_size,
            drop_remainder=c.drop_remainder,
            shard=(c.shard.index, c.shard.count),
            fingerprint=fingerprint(self.source),
        )

    def restore(self, state: dict[str, Any]) -> LoaderState:
        """Check ``state`` against this order and adopt its seed (and a default geometry's replacement); the
        order is unchanged if the state is refused."""
        saved = LoaderState.from_dict(state)
        order = self.order
        adopted = self._adoptable_geometry(saved.order)
        if adopted is not None:  # a geometry chosen by default follows the state's (saved locally, resumed remotely)
            self.order = self._make(*adopted)
        try:
            saved.check(self.describe(0, 0), ", ".join(self.source.paths[:3]))
        except BaseException:
            self.order = order
            raise
        if saved.seed != self.seed:
            self.seed = saved.seed
            self.order = self._make(*block_geometry(self.order))
        return saved

    def _make(self, block_rows: int, window_blocks: int) -> Order:
        return make_order(self.source, self.config.shuffle, self.seed, block_rows, window_blocks)

    def _adoptable_geometry(self, saved: list[int]) -> tuple[int, int] | None:
        """The block geometry of a saved block-shuffle state, when it differs from this order's only in values
        chosen by default (not ``block_rows=``/``window_blocks=`` given explicitly)."""
        if self.config.shuffle != "block" or len(saved) != 2:
            return None
        wanted = tuple(g or v for g, v in zip(self.config.geometry_given, saved, strict=True))
        if wanted != tuple(saved) or wanted == block_geometry(self.order):
            return None
        return int(saved[0]), int(saved[1])
