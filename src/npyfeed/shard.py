"""Sharding: which batches of every epoch one worker or host reads, as positions in ONE global order.

An epoch's order (a pure function of seed and epoch) is cut into global batches of ``batch_size`` positions.
Worker ``i`` of ``n`` reads global batches ``i, i + n, i + 2n, ...``: after ``k`` synchronous steps the ``n``
workers together consumed exactly the first ``k * n * batch_size`` positions, whatever ``n`` is. A checkpoint is
therefore one global position, and a job can resume on another worker count (:class:`Layout` with ``start``).

What does not fill a round of ``n`` full batches (the tail, fewer than ``n * batch_size`` rows) is shared out as
one last, smaller batch per worker, sizes differing by at most one row, so every worker runs the same number of
steps (a worker with a batch more would hang a collective). A tail of fewer than ``n`` rows is left out (with
shuffling, different rows every epoch); with ``drop_remainder`` the whole tail is.

>>> [Layout(10, 2, 2, i).positions(k) for i in range(2) for k in range(3)]
[(0, 2), (4, 6), (8, 9), (2, 4), (6, 8), (9, 10)]

``shard="auto"`` is asked of the engine or launcher that started the process: see :mod:`npyfeed.launcher`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from npyfeed import arguments as args
from npyfeed.errors import ConfigError

__all__ = ["Layout", "Shard"]


@dataclass(frozen=True)
class Shard:
    """Worker ``index`` of ``count``; ``source`` says where it came from (``"explicit"``, ``"TF_CONFIG"``, ...)."""

    index: int = 0
    count: int = 1
    source: str = field(default="explicit", compare=False)

    def __post_init__(self) -> None:
        # Frozen: the checked values (NumPy ints become ints) are set through object.__setattr__.
        count = args.positive_int("Shard.count", self.count)
        object.__setattr__(self, "count", count)
        object.__setattr__(self, "index", args.integer("Shard.index", self.index, maximum=count - 1))

    @classmethod
    def of(cls, shard: Any) -> Shard:
        """A Shard from ``None``, a Shard, ``(index, count)`` or a ``tf.distribute.InputContext``.

        ``"auto"`` is the Loader's to resolve (:func:`npyfeed.launcher.resolve`): this module asks no launcher.
        """
        if shard is None:
            return cls()
        if isinstance(shard, Shard):
            return shard
        if isinstance(shard, str):
            if shard != "auto":
                raise ConfigError(f"shard must be 'auto', an (index, count) tuple or a Shard, got {shard!r}")
            raise ConfigError("Shard.of cannot resolve shard='auto': use Shard(*npyfeed.launcher.resolve())")
        if isinstance(shard, tuple) and len(shard) == 2:
            return cls(*shard)
        if hasattr(shard, "input_pipeline_id") and hasattr(shard, "num_input_pipelines"):
            # tf.distribute.InputContext (duck-typed: nothing imports TensorFlow for an isinstance check).
            return cls(int(shard.input_pipeline_id), int(shard.num_input_pipelines), "tf.distribute.InputContext")
        raise ConfigError(
            f"shard must be 'auto', an (index, count) tuple, a Shard or a tf.distribute.InputContext, got {shard!r}"
        )


@dataclass(frozen=True)
class Layout:
    """Positions read by worker ``index`` of ``count`` in an epoch of ``num_rows``, from position ``start`` on.

    ``start`` is 0 for a whole epoch, and the global position a checkpoint recorded for the rest of one.
    """

    num_rows: int
    batch_size: int
    count: int = 1
    index: int = 0
    drop_remainder: bool = False
    start: int = 0

    @property
    def rounds(self) -> int:
        """Rounds of ``count`` full global batches."""
        return (self.num_rows - self.start) // self.batch_size // self.count

    @property
    def tail(self) -> tuple[int, int]:
        """(first position, rows) of the tail shared out as one smaller batch per worker (0 rows: none)."""
        first = self.start + self.rounds * self.count * self.batch_size
        rows = self.num_rows - first
        if self.drop_remainder or rows < self.count:
            return first, 0
        return first, rows

    def __len__(self) -> int:
        """Batches of this worker (the same for every worker)."""
        return self.rounds + (1 if self.tail[1] else 0)

    def positions(self, k: int) -> tuple[int, int]:
        """``[lo, hi)``: the positions of this worker's batch ``k``."""
        if k < self.rounds:
            lo = self.start + (k * self.count + self.index) * self.batch_size
            return lo, lo + self.batch_size
        first, rows = self.tail
        size, extra = divmod(rows, self.count)
        lo = first + self.index * size + min(self.index, extra)
        return lo, lo + size + (1 if self.index < extra else 0)

    @property
    def num_positions(self) -> int:
        """Positions this worker reads in the epoch."""
        size, extra = divmod(self.tail[1], self.count)
        return self.rounds * self.batch_size + size + (1 if self.index < extra else 0)

    def consumed(self, k: int) -> int | None:
        """The global position all workers consumed after ``k`` synchronous steps; ``None`` once the epoch is done."""
        if k >= len(self):
            return None
        return self.start + k * self.count * self.batch_size
