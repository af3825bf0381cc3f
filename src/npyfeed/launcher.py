"""``shard="auto"``: which worker of how many this process is, asked of the engine or launcher that started it.

:func:`resolve` asks, in order: an initialized ``torch.distributed`` process group, a JAX multi-process runtime, a
Ray Train worker, ``TF_CONFIG``, then the launcher environment (``RANK``/``WORLD_SIZE`` from torchrun,
``SLURM_PROCID``/``SLURM_NTASKS``); else worker 0 of 1. It only looks at frameworks that are already imported
(``sys.modules``): importing one here would cost seconds, and could change how it initializes.

It is strict, because a guess is silent data loss or repetition (every worker reading the whole epoch): half a
launcher environment (``RANK`` without ``WORLD_SIZE`` or the reverse, ``SLURM_PROCID`` without
``SLURM_NTASKS``), values that are not integers, a rank outside ``[0, world size)``, a ``TF_CONFIG`` task index
that is not an integer in range, or an engine that disagrees with ``RANK``/``WORLD_SIZE`` is a
:class:`~npyfeed.errors.ConfigError` naming the variables and their values.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from npyfeed import arguments as args
from npyfeed.errors import ConfigError

__all__ = ["Launch", "resolve"]

_PAIRS = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"))


class Launch(NamedTuple):
    """Worker ``rank`` of ``size``, and the ``source`` that said so (``"TF_CONFIG"``, ``"default"``, ...)."""

    rank: int
    size: int
    source: str


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
        kind, index = task["type"], task["index"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"TF_CONFIG is not valid cluster JSON with task type and index: {raw[:200]!r}") from e
    if kind == "evaluator":
        return None  # an evaluator reads everything
    if kind not in ("chief", "worker"):
        raise ConfigError(f"TF_CONFIG task type {kind!r} does not read input; shard='auto' needs a chief or worker")
    size = chiefs if kind == "chief" else workers
    if not args.is_int(index) or not 0 <= index < size:
        raise ConfigError(
            f"TF_CONFIG task index {index!r} of type {kind!r} must be an integer in [0, {size}) (the cluster lists "
            f"{size} {kind}{'s' if size != 1 else ''}); shard='auto' cannot tell which worker this is"
        )
    # MultiWorkerMirroredStrategy numbers the chief 0 and the workers after it.
    return (index if kind == "chief" else chiefs + index), chiefs + workers


def _integer(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError as e:
        raise ConfigError(f"shard='auto': {name}={value!r} is not an integer") from e


def _environment(rank: str, size: str) -> tuple[int, int] | None:
    """``(rank, size)`` from a launcher's two variables, ``None`` if neither is set; anything half or wrong refused."""
    have_rank, have_size = rank in os.environ, size in os.environ
    if not have_rank and not have_size:
        return None
    if have_rank != have_size:
        set_, unset = (rank, size) if have_rank else (size, rank)
        raise ConfigError(
            f"shard='auto': {set_}={os.environ[set_]!r} is set but {unset} is not; a launcher sets both. Set "
            f"{unset} too, unset {set_}, or pass shard=(index, count)"
        )
    index, count = _integer(rank), _integer(size)
    if count < 1 or not 0 <= index < count:
        raise ConfigError(
            f"shard='auto': {rank}={os.environ[rank]!r} and {size}={os.environ[size]!r} are not a worker of a "
            f"world: {rank} must be in [0, {size}) and {size} at least 1"
        )
    return index, count


_SOURCES: tuple[tuple[str, Callable[[], tuple[int, int] | None]], ...] = (
    ("torch.distributed", _torch_distributed),
    ("jax.distributed", _jax),
    ("ray.train", _ray_train),
    ("TF_CONFIG", _tf_config),
    ("RANK/WORLD_SIZE", lambda: _environment("RANK", "WORLD_SIZE")),
    ("SLURM_PROCID/SLURM_NTASKS", lambda: _environment("SLURM_PROCID", "SLURM_NTASKS")),
)


def resolve() -> Launch:
    """This process's worker index and count, from the first source above that knows it; ``(0, 1, "default")``.

    Every launcher environment present is checked first, whichever source answers; an initialized engine that
    disagrees with ``RANK``/``WORLD_SIZE`` (two launchers, or a process group that is not the default one) is
    refused too: guessing would silently skip or repeat rows.
    """
    launchers: dict[str, Any] = {f"{a}/{b}": _environment(a, b) for a, b in _PAIRS}
    for name, probe in _SOURCES:
        found = launchers[name] if name in launchers else probe()
        if found is None:
            continue
        index, count = found
        launcher = launchers["RANK/WORLD_SIZE"]
        if name in ("torch.distributed", "jax.distributed") and launcher is not None and launcher != found:
            raise ConfigError(
                f"shard='auto': {name} says worker {index} of {count}, but RANK/WORLD_SIZE say {launcher[0]} of "
                f"{launcher[1]}; pass shard=(index, count) explicitly"
            )
        if not args.is_int(index) or not args.is_int(count) or count < 1:
            raise ConfigError(f"shard='auto': {name} gave worker {index!r} of {count!r}, not two integers")
        if not 0 <= index < count:
            raise ConfigError(f"shard='auto': {name} gave worker {index} of {count}, outside [0, {count})")
        return Launch(index, count, name)
    return Launch(0, 1, "default")
