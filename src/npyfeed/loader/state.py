"""A Loader's checkpoint as a value: a small JSON-able dict that resumes exactly, on any worker count.

What all workers consumed is one global position in the epoch's order (see :mod:`npyfeed.shard`), so a state
is ``(seed, epoch, position)`` plus what must not change between save and restore: the files (a fingerprint of
their paths, sizes and headers), the batch size, the shuffle and its block geometry (which a loader that chose
its own by default adopts: local and remote defaults differ), ``drop_remainder``. The
worker count may change: each new worker calls ``set_state`` with the state of any one old worker (all took it
at the same synchronous step), and the rest of the epoch is shared out among the new workers.

This module knows rows and files, never a Loader: the Loader describes itself as a :class:`LoaderState` and
checks a saved one against that description (:meth:`LoaderState.check`).

>>> s = LoaderState(epoch=1, position=40, seed=7, shuffle="global", order=[], num_rows=53, batch_size=10,
...                 drop_remainder=False, shard=(0, 1), fingerprint="0" * 16)
>>> LoaderState.from_dict(s.to_dict()) == s
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npyfeed import arguments as args
from npyfeed.errors import ConfigError

__all__ = ["STATE_VERSION", "LoaderState", "fingerprint"]

STATE_VERSION = 2


def _describe(source: Any) -> Any:
    """What identifies a row source's data: each file's path, size and header, and any row slicing."""
    parts = getattr(source, "parts", None)
    if parts is not None:  # ConcatArray
        return [_describe(p) for p in parts]
    base = getattr(source, "base", None)
    if base is not None:  # RowSlice
        return {"slice": [source.start, source.stop], "of": _describe(base)}
    # File names without their directory or URL prefix: the same files copied to a bucket (or another mount)
    # are the same data, so a state saved reading them locally resumes reading them from s3://... and back.
    names = [p.replace("\\", "/").rsplit("/", 1)[-1] for p in source.paths]
    path = names[0] if len(names) == 1 else names
    storage = getattr(source, "storage", None)  # NpyArray: the bytes' backend knows their size, local or remote
    size = getattr(storage, "size", None)
    if size is None and len(source.paths) == 1 and Path(source.paths[0]).is_file():
        size = Path(source.paths[0]).stat().st_size
    fortran = bool(getattr(source, "fortran_order", False))
    return {"path": path, "size": size, "dtype": source.dtype.str, "shape": list(source.shape), "fortran": fortran}


def fingerprint(columns: Any) -> str:
    """A short digest of a :class:`~npyfeed.sources.columns.Columns`' files (paths, sizes, headers): different data,
    different digest."""
    text = json.dumps([[str(k), _describe(a)] for k, a in zip(columns.keys, columns.arrays, strict=True)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LoaderState:
    """Where the consumer is (``epoch``, global ``position``) and what must match to resume there."""

    epoch: int
    position: int
    seed: int
    shuffle: str
    order: list[int]  # (block_rows, window_blocks) of a block shuffle, else empty
    num_rows: int
    batch_size: int
    drop_remainder: bool
    shard: tuple[int, int]  # who saved it; any count may restore it
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict :meth:`Loader.get_state` returns."""
        out = {"version": STATE_VERSION, **dataclasses.asdict(self)}
        out["order"], out["shard"] = list(self.order), list(self.shard)
        return out

    @classmethod
    def from_dict(cls, state: Any) -> LoaderState:
        """The state a dict holds, its fields' types and ranges checked; a ``ConfigError`` naming what is wrong."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            version = state.get("version") if isinstance(state, dict) else None
            raise ConfigError(
                f"not an npyfeed Loader state of version {STATE_VERSION} (found version {version!r}): "
                f"{str(state)[:200]}"
            )
        fields = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in fields if name not in state]
        if missing:
            raise ConfigError(f"saved Loader state lacks {', '.join(missing)}: {str(state)[:200]}")
        # The one argument rule (bools are not ints, NumPy ints are, all bounded); "saved state's epoch" names it.
        num_rows = args.integer("saved state's num_rows", state["num_rows"])
        epoch = args.integer("saved state's epoch", state["epoch"])
        position = args.integer("saved state's position", state["position"], maximum=num_rows)
        seed = args.seed("saved state's seed", state["seed"])
        if seed is None:
            raise ConfigError("saved state's seed must be an int, got None")
        order, shard = state["order"], state["shard"]
        if not (isinstance(order, list) and all(args.is_int(v) and v > 0 for v in order) and len(order) in (0, 2)):
            raise ConfigError(f"saved state has an invalid block geometry: order={order!r}")
        if not (isinstance(shard, (list, tuple)) and len(shard) == 2 and all(args.is_int(v) for v in shard)):
            raise ConfigError(f"saved state has an invalid shard: shard={shard!r}")
        values = {name: state[name] for name in fields}
        values.update(epoch=epoch, position=position, seed=seed, num_rows=num_rows)
        values["order"], values["shard"] = [int(v) for v in order], (int(shard[0]), int(shard[1]))
        return cls(**values)

    def check(self, expected: LoaderState, files: str = "") -> None:
        """Refuse a saved state (``self``) for a loader described by ``expected`` (reading ``files``): other data,
        another batch size, shuffle, block geometry or ``drop_remainder`` would give another order. The position
        and seed may differ."""
        for key in ("num_rows", "shuffle", "batch_size", "drop_remainder"):
            found, wanted = getattr(self, key), getattr(expected, key)
            if found != wanted:
                raise ConfigError(f"saved state has {key}={found!r} but this loader has {key}={wanted!r}")
        if self.fingerprint != expected.fingerprint:
            raise ConfigError(
                f"saved state is for other data (files fingerprint {self.fingerprint!r}); this loader reads "
                f"{files or 'files'} (fingerprint {expected.fingerprint!r}): the paths, sizes or headers differ"
            )
        if self.order != expected.order:
            raise ConfigError(
                f"saved state has block geometry (block_rows, window_blocks)={self.order!r} but this loader has "
                f"{expected.order!r}: the order would differ"
            )
