"""One save/resume harness for every way of consuming a Loader: numpy, tf.data, torch, Keras, JAX.

A *way* turns a fresh Loader (and a saved token, or ``None``) into a :class:`Session`: the stream of batches a
consumer receives, epoch after epoch, and ``save()``, which returns what that way checkpoints (a Loader state, a
``tf.train.Checkpoint`` prefix, a directory). :func:`assert_resumes` runs a way without interruption, then stops it
after the first, a middle and the last batch of an epoch, saves, resumes in a fresh Loader (with the same way or
another that reads the same token) and checks that the resumed stream is exactly the rest of the uninterrupted one,
through full epochs after. Batches are compared by their row ids (the tuple source's second column).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from npyfeed import Loader

__all__ = ["Session", "Way", "assert_resumes", "ids", "numpy_way"]

Ids = list[int]


def ids(batch: Any) -> Ids:
    """The row ids of a batch of a tuple source ``(x, ids)``, from NumPy, TensorFlow, torch or JAX."""
    return np.asarray(batch[1]).tolist()


class Session(Protocol):
    def take(self, n: int) -> list[Ids]:
        """The row ids of the next ``n`` batches the consumer receives (no more are asked for)."""
        ...

    def save(self) -> Any:
        """What this way checkpoints after the batches taken so far."""
        ...


Way = Callable[[Loader, Any], Session]
"""``way(fresh_loader, token_or_None) -> Session``."""


class StreamSession:
    """A session over an endless stream of batches; ``save`` is given."""

    def __init__(self, stream: Iterable[Any], save: Callable[[], Any]) -> None:
        self._stream = iter(stream)
        self._save = save

    def take(self, n: int) -> list[Ids]:
        return [ids(b) for b in itertools.islice(self._stream, n)]

    def save(self) -> Any:
        return self._save()


def epochs_of(iterable: Any) -> Iterator[Any]:
    """``iter(iterable)`` again and again: each iteration is the next epoch."""
    while True:
        yield from iterable


def json_state(state: Any) -> Any:
    return json.loads(json.dumps(state))  # a state must survive JSON


def numpy_way(loader: Loader, token: Any) -> Session:
    """``for batch in loader``, one epoch per ``iter()``; ``loader.get_state()`` / ``loader.set_state()``."""
    if token is not None:
        loader.set_state(token)
    return StreamSession(epochs_of(loader), lambda: json_state(loader.get_state()))


def assert_resumes(
    make: Callable[[], Loader],
    save_with: Way,
    resume_with: Way | None = None,
    *,
    stops: Iterable[int] | None = None,
    epochs: int = 3,
) -> None:
    """Stop ``save_with`` after each of ``stops`` batches (default: the first, a middle and the last batch of the
    first epoch, and one into the second), save, resume with ``resume_with`` (default: the same way) in a fresh
    loader: the batches before and after equal the uninterrupted run of ``epochs`` epochs, which equals
    ``loader.read_batch(e, i)`` for every epoch and batch."""
    resume_with = resume_with or save_with
    oracle_loader = make()
    per_epoch = len(oracle_loader)
    total = epochs * per_epoch
    oracle = [ids(oracle_loader.read_batch(e, i)) for e in range(epochs) for i in range(per_epoch)]
    assert save_with(make(), None).take(total) == oracle, "the uninterrupted run is not the loader's epochs"
    for stop in sorted(set(stops if stops is not None else (1, per_epoch // 2, per_epoch, per_epoch + 1))):
        session = save_with(make(), None)
        head = session.take(stop)
        token = session.save()
        rest = resume_with(make(), token).take(total - stop)
        assert head == oracle[:stop], f"stopped after {stop}: the run before saving differs"
        assert rest == oracle[stop:], f"stopped after {stop} of {per_epoch} batches per epoch: the resumed run differs"


def write_columns(directory: Path, rows: int, name: str = "") -> tuple[str, str]:
    """``(x, ids)`` files of ``rows`` rows: x float32 ``[rows, 3]`` encoding the id, ids int32."""
    x = (np.arange(rows)[:, None] * 10 + np.arange(3)).astype(np.float32)
    paths = (str(directory / f"{name}x.npy"), str(directory / f"{name}ids.npy"))
    np.save(paths[0], x)
    np.save(paths[1], np.arange(rows, dtype=np.int32))
    return paths
