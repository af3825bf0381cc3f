"""Sharding: which slice of every epoch one worker or host reads."""

from __future__ import annotations

from dataclasses import dataclass

from npyfeed.errors import ConfigError

__all__ = ["Shard", "even_split"]


@dataclass(frozen=True)
class Shard:
    """Worker ``index`` of ``count``: every epoch is cut into ``count`` disjoint, equal parts.

    Equal parts keep distributed training in lock-step (a worker with one batch more would hang a collective),
    so up to ``count - 1`` rows are left out of each epoch; with shuffling they are different rows every epoch.
    """

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        for name in ("index", "count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"Shard.{name} must be an int, got {value!r}")
        if self.count < 1:
            raise ConfigError(f"Shard.count must be >= 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(f"Shard.index must be in [0, {self.count}), got {self.index}")

    @classmethod
    def of(cls, shard: Shard | tuple[int, int] | None) -> Shard:
        if shard is None:
            return cls()
        if isinstance(shard, Shard):
            return shard
        if isinstance(shard, tuple) and len(shard) == 2:
            return cls(*shard)
        raise ConfigError(f"shard must be a Shard or an (index, count) tuple, got {shard!r}")

    def positions(self, num_rows: int) -> tuple[int, int]:
        """This shard's ``[start, stop)`` positions within an epoch of ``num_rows``."""
        return even_split(num_rows, self.count)[self.index]


def even_split(num_rows: int, count: int) -> list[tuple[int, int]]:
    """``count`` disjoint ``[start, stop)`` ranges of equal size ``num_rows // count``, in order."""
    if count < 1:
        raise ConfigError(f"count must be >= 1, got {count}")
    size = num_rows // count
    return [(i * size, (i + 1) * size) for i in range(count)]
