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

``shard="auto"`` (:func:`resolve`) asks, in order: an initialized ``torch.distributed`` process group, a JAX
multi-process runtime, a Ray Train worker, ``TF_CONFIG``, then the launcher environment (``RANK``/``WORLD_SIZE``
from torchrun, ``SLURM_PROCID``/``SLURM_NTASKS``); else ``(0, 1)``. It only looks at frameworks that are already
imported (``sys.modules``): importing one here would cost seconds, and could change how it initializes.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from npyfeed.errors import ConfigError

__all__ = ["Layout", "Shard", "resolve"]


@dataclass(frozen=True)
class Shard:
    """Worker ``index`` of ``count``; ``source`` says where it came from (``"explicit"``, ``"TF_CONFIG"``, ...)."""

    index: int = 0
    count: int = 1
    source: str = field(default="explicit", compare=False)

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
    def of(cls, shard: Any) -> Shard:
        """A Shard from ``None``, a Shard, ``(index, count)``, ``"auto"`` or a ``tf.distribute.InputContext``."""
        if shard is None:
            return cls()
        if isinstance(shard, Shard):
            return shard
        if isinstance(shard, str):
            if shard != "auto":
                raise ConfigError(f"shard must be 'auto', an (index, count) tuple or a Shard, got {shard!r}")
            return resolve()
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
    def _tail(self) -> tuple[int, int]:
        """(first position, rows) of the tail shared out as one smaller batch per worker (0 rows: none)."""
        first = self.start + self.rounds * self.count * self.batch_size
        rows = self.num_rows - first
        if self.drop_remainder or rows < self.count:
            return first, 0
        return first, rows

    def __len__(self) -> int:
        """Batches of this worker (the same for every worker)."""
        return self.rounds + (1 if self._tail[1] else 0)

    def positions(self, k: int) -> tuple[int, int]:
        """``[lo, hi)``: the positions of this worker's batch ``k``."""
        if k < self.rounds:
            lo = self.start + (k * self.count + self.index) * self.batch_size
            return lo, lo + self.batch_size
        first, rows = self._tail
        size, extra = divmod(rows, self.count)
        lo = first + self.index * size + min(self.index, extra)
        return lo, lo + size + (1 if self.index < extra else 0)

    @property
    def num_positions(self) -> int:
        """Positions this worker reads in the epoch."""
        size, extra = divmod(self._tail[1], self.count)
        return self.rounds * self.batch_size + size + (1 if self.index < extra else 0)

    def consumed(self, k: int) -> int | None:
        """The global position all workers consumed after ``k`` synchronous steps; ``None`` once the epoch is done."""
        if k >= len(self):
            return None
        return self.start + k * self.count * self.batch_size


# -- shard="auto" -------------------------------------------------------------------------------------------------
def _torch_distributed() -> tuple[int, int] | None:
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist.get_rank(), dist.get_world_size()


def _jax() -> tuple[int, int] | None:
    jax = sys.modules.get("jax")
    # process_count() would initialize a backend (then jax.distributed.initialize() fails): ask the runtime first.
    if jax is None or not jax.distributed.is_initialized():
        return None
    count = jax.process_count()
    return (jax.process_index(), count) if count > 1 else None


def _ray_train() -> tuple[int, int] | None:
    if "ray.train" not in sys.modules:
        return None
    train = sys.modules["ray.train"]
    try:
        context = train.get_context()
        rank, size = context.get_world_rank(), context.get_world_size()
    except Exception:  # outside a Ray Train worker the context raises or holds no rank
        return None
    return (int(rank), int(size)) if isinstance(rank, int) and isinstance(size, int) and size > 0 else None


def _tf_config() -> tuple[int, int] | None:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        config = json.loads(raw)
        cluster, task = config.get("cluster", {}), config.get("task", {})
        chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"TF_CONFIG is not valid cluster JSON with task type and index: {raw[:200]!r}") from e
    if kind == "evaluator":
        return None  # an evaluator reads everything
    if kind not in ("chief", "worker"):
        raise ConfigError(f"TF_CONFIG task type {kind!r} does not read input; shard='auto' needs a chief or worker")
    # MultiWorkerMirroredStrategy numbers the chief 0 and the workers after it.
    return (index if kind == "chief" else chiefs + index), chiefs + workers


def _environment(rank: str, size: str) -> tuple[int, int] | None:
    if rank not in os.environ or size not in os.environ:
        return None
    try:
        return int(os.environ[rank]), int(os.environ[size])
    except ValueError as e:
        raise ConfigError(
            f"{rank}={os.environ[rank]!r} and {size}={os.environ[size]!r} must be integers for shard='auto'"
        ) from e


_SOURCES = (
    ("torch.distributed", _torch_distributed),
    ("jax.distributed", _jax),
    ("ray.train", _ray_train),
    ("TF_CONFIG", _tf_config),
    ("RANK/WORLD_SIZE", lambda: _environment("RANK", "WORLD_SIZE")),
    ("SLURM_PROCID/SLURM_NTASKS", lambda: _environment("SLURM_PROCID", "SLURM_NTASKS")),
)


def resolve() -> Shard:
    """This process's shard, from the first source above that knows it; ``Shard(0, 1, "default")`` if none does.

    An initialized engine that disagrees with ``RANK``/``WORLD_SIZE`` in the environment is a ``ConfigError``
    (two launchers, or a process group that is not the default one): guessing would silently skip or repeat rows.
    """
    for name, probe in _SOURCES:
        found = probe()
        if found is None:
            continue
        index, count = found
        launcher = _environment("RANK", "WORLD_SIZE") if name in ("torch.distributed", "jax.distributed") else None
        if launcher is not None and launcher != found:
            raise ConfigError(
                f"shard='auto': {name} says worker {index} of {count}, but RANK/WORLD_SIZE say {launcher[0]} of "
                f"{launcher[1]}; pass shard=(index, count) explicitly"
            )
        try:
            return Shard(index, count, name)
        except ConfigError as e:
            raise ConfigError(f"shard='auto': {name} gave worker {index} of {count}: {e}") from e
    return Shard(0, 1, "default")
