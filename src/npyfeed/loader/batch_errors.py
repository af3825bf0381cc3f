"""A batch's errors: what the consumer gets when batch ``index`` of an epoch fails to read or to transform.

An error keeps its type where it can (an ``OSError`` stays an ``OSError``, a ``FileChangedError`` names the file)
and says which batch of which epoch failed, with the original as ``__cause__``; anything else becomes a
``WorkerError``. A transform must keep a batch's rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from npyfeed.errors import ConfigError, NpyfeedError, WorkerError

__all__ = ["batch_error", "check_rows"]


def batch_error(paths: tuple[str, ...], epoch: int, index: int, stage: str, error: Exception) -> Exception:
    """The error the consumer gets for batch ``index``: what failed where, the original as ``__cause__``."""
    shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
    where = f"batch {index} of epoch {epoch} ({shown})"
    wrapped: Exception | None = None
    if isinstance(error, ConfigError) and f"batch {index} of epoch {epoch}" in str(error):
        wrapped = error  # already names the batch (a transform returning other rows)
    elif isinstance(error, NpyfeedError) and not isinstance(error, WorkerError):
        with contextlib.suppress(Exception):
            wrapped = type(error)(f"{error} (reading {where})")
    if wrapped is None:
        wrapped = WorkerError(f"reading {where} failed: {type(error).__name__}: {error} (in the {stage})")
    if wrapped is not error:
        wrapped.__cause__ = error
    wrapped.epoch, wrapped.batch = epoch, index  # type: ignore[attr-defined]
    return wrapped


def _leaves(batch: Any) -> Iterator[Any]:
    if isinstance(batch, dict):
        for value in batch.values():
            yield from _leaves(value)
    elif isinstance(batch, (tuple, list)):
        for value in batch:
            yield from _leaves(value)
    else:
        yield batch


def check_rows(batch: Any, rows: int, epoch: int, index: int, paths: tuple[str, ...]) -> None:
    """A transform must keep a batch's rows: every array it returns has ``rows`` entries along axis 0."""
    for leaf in _leaves(batch):
        shape = getattr(leaf, "shape", None)
        if shape is not None and len(shape) >= 1 and shape[0] is not None and int(shape[0]) != rows:
            raise ConfigError(
                f"transform returned {int(shape[0])} rows for batch {index} of epoch {epoch} ({paths[0]}), "
                f"expected {rows}: a transform maps a batch to a batch of the same rows (filter rows in the "
                "training step, or return a mask column)"
            )
