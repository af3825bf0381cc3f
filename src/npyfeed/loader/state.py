"""A Loader's checkpoint: a small JSON-able dict that resumes exactly, on any worker count.

What all workers consumed is one global position in the epoch's order (see :mod:`npyfeed.shard`), so a state
is ``(seed, epoch, position)`` plus what must not change between save and restore: the files (a fingerprint of
their paths, sizes and headers), the batch size, the shuffle and its block geometry (which a loader that chose
its own by default adopts: local and remote defaults differ), ``drop_remainder``. The
worker count may change: each new worker calls ``set_state`` with the state of any one old worker (all took it
at the same synchronous step), and the rest of the epoch is shared out among the new workers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from npyfeed import arguments as args
from npyfeed.errors import ConfigError

if TYPE_CHECKING:
    from npyfeed.loader.loader import Loader

__all__ = ["STATE_VERSION", "fingerprint", "loader_state", "restore_state"]

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


def fingerprint(loader: Loader) -> str:
    """A short digest of the loader's files (paths, sizes, headers) and columns: different data, different digest."""
    columns = loader.source
    text = json.dumps([[str(k), _describe(a)] for k, a in zip(columns.keys, columns.arrays, strict=True)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _order_geometry(loader: Loader) -> list[int]:
    return list(loader._block_geometry()) if loader.shuffle == "block" else []


def loader_state(loader: Loader, progress: tuple[int, int] | None = None) -> dict[str, Any]:
    """Where the consumer is, as a global position: after ``progress = (epoch, batches received)`` (default: what
    ``iter(loader)`` delivered, not what was read ahead)."""
    epoch, batch = loader._position if progress is None else progress
    position = loader.layout(epoch).consumed(batch)
    if position is None:
        epoch, position = epoch + 1, 0
    return {
        "version": STATE_VERSION,
        "epoch": epoch,
        "position": position,
        "seed": loader.seed,
        "shuffle": loader.shuffle,
        "order": _order_geometry(loader),
        "num_rows": len(loader.source),
        "batch_size": loader.batch_size,
        "drop_remainder": loader.drop_remainder,
        "shard": [loader.shard.index, loader.shard.count],  # who saved it; any count may restore it
        "fingerprint": fingerprint(loader),
    }


def restore_state(loader: Loader, state: dict[str, Any]) -> tuple[int, int]:
    """Check ``state`` against ``loader``; the ``(epoch, position)`` to continue from."""
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        version = state.get("version") if isinstance(state, dict) else None
        raise ConfigError(
            f"not an npyfeed Loader state of version {STATE_VERSION} (found version {version!r}): {str(state)[:200]}"
        )
    expected = {
        "num_rows": len(loader.source),
        "shuffle": loader.shuffle,
        "batch_size": loader.batch_size,
        "drop_remainder": loader.drop_remainder,
    }
    for key, value in expected.items():
        if state.get(key) != value:
            raise ConfigError(f"saved state has {key}={state.get(key)!r} but this loader has {key}={value!r}")
    digest = fingerprint(loader)
    if state.get("fingerprint") != digest:
        paths = ", ".join(loader.source.paths[:3])
        raise ConfigError(
            f"saved state is for other data (files fingerprint {state.get('fingerprint')!r}); this loader reads "
            f"{paths} (fingerprint {digest!r}): the paths, sizes or headers differ"
        )
    if state.get("order") != _order_geometry(loader):
        raise ConfigError(
            f"saved state has block geometry (block_rows, window_blocks)={state.get('order')!r} but this loader has "
            f"{_order_geometry(loader)!r}: the order would differ"
        )
    # The one argument rule (bools are not ints, NumPy ints are, everything bounded); "saved state's epoch" names it.
    epoch = args.integer("saved state's epoch", state.get("epoch"))
    args.integer("saved state's position", state.get("position"), maximum=len(loader.source))
    if args.seed("saved state's seed", state.get("seed")) is None:
        raise ConfigError("saved state's seed must be an int, got None")
    return epoch, int(state["position"])
