"""A batch's errors: what the consumer gets when batch ``index`` of an epoch fails to read or to transform.

An error keeps its type (an ``OSError`` stays an ``OSError``, a ``ZeroDivisionError`` from a transform stays one)
and gets a note (PEP 678) saying which batch of which epoch of which files failed, in the read or the transform;
only a ``StopIteration`` becomes a ``WorkerError`` (raised as it is, it would end the epoch). A transform must keep a
batch's rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from npyfeed.errors import ConfigError, WorkerError

__all__ = ["batch_error", "check_rows"]


def batch_error(paths: tuple[str, ...], epoch: int, index: int, stage: str, error: Exception) -> Exception:
    """The error the consumer gets for batch ``index``: the original one, its type kept (``except OSError`` still
    works), with a note naming the batch, its epoch, the files and the stage, and ``epoch`` and ``batch``
    attributes."""
    shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
    where = f"batch {index} of epoch {epoch} ({shown})"
    if isinstance(error, StopIteration | StopAsyncIteration):
        # These mean "no more data" to every iterator and to tf.data: raised as they are, the epoch would end early
        # without an error. The one case that needs a wrapper.
        wrapped = WorkerError(
            f"reading {where} failed: {type(error).__name__}: {error} (in the {stage}): a transform or read must "
            "not raise StopIteration, which would end the epoch early"
        )
        wrapped.__cause__ = error
        error = wrapped
    else:
        note = f"npyfeed: reading {where} failed in the {stage}"
        if note not in getattr(error, "__notes__", ()):
            error.add_note(note)
    error.epoch, error.batch = epoch, index  # type: ignore[attr-defined]
    return error


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
