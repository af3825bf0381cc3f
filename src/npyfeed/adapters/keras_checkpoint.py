"""Keras checkpoint glue: the loader's position saved with the model's weights, from Keras' own counters.

Keras restarts an interrupted epoch from its first batch (``BackupAndRestore`` records the epoch only), and cannot
run one epoch shorter than the others within a ``fit``. :class:`LoaderCheckpoint` therefore saves, every
``save_freq`` batches and at every epoch end, the weights and the loader state after the batches Keras reports as
trained (``on_train_batch_end``; not what was read ahead), and :meth:`LoaderCheckpoint.fit` resumes: it restores
both, finishes the interrupted epoch with a ``fit`` of just its remaining steps, then runs the remaining epochs.
Keras epoch ``e`` is loader epoch ``e``; data comes from ``loader.to_keras()`` (any backend).

>>> checkpoint = LoaderCheckpoint(loader, "ckpt/", save_freq=100)  # doctest: +SKIP
>>> checkpoint.fit(model, epochs=10)  # the same line starts and resumes  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras

from npyfeed import arguments as args
from npyfeed.errors import ConfigError

if TYPE_CHECKING:
    from npyfeed.loader.loader import Loader

__all__ = ["LoaderCheckpoint"]

_INDEX = "checkpoint.json"


class LoaderCheckpoint(keras.callbacks.Callback):
    """Save the model's weights and ``loader``'s position in ``directory`` every ``save_freq`` batches and epoch."""

    def __init__(self, loader: Loader, directory: str | os.PathLike[str], *, save_freq: int = 100) -> None:
        super().__init__()
        self.loader = loader
        self.directory = Path(directory)
        self.save_freq = args.positive_int("save_freq", save_freq)
        self._epoch = 0
        self._resumed = loader.next_pass  # (epoch, offset): the pass over that epoch reads its rest from offset

    # -- recording -------------------------------------------------------------------------------------------
    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if (batch + 1) % self.save_freq == 0:
            self.save(self._epoch, batch + 1)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.save(epoch, self.loader.num_batches(self._offset(epoch)))

    def _offset(self, epoch: int) -> int:
        return self._resumed[1] if epoch == self._resumed[0] else 0

    def save(self, epoch: int, batches: int) -> None:
        """Save the weights and the position after ``batches`` trained batches of ``epoch``, crash-safely.

        The weights go to a new file first; the index naming it and holding the loader state replaces the old
        index atomically, so a kill at any moment leaves a matching pair.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        weights = f"model-{epoch}-{batches}.weights.h5"
        self.model.save_weights(str(self.directory / weights), overwrite=True)
        index = {"weights": weights, "keras": {"epoch": epoch, "batch": batches}}
        index["loader"] = self.loader.state_after(epoch, batches, offset=self._offset(epoch))
        tmp = self.directory / f"{_INDEX}.tmp"
        with open(tmp, "w") as f:
            json.dump(index, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.directory / _INDEX)
        for old in self.directory.glob("model-*.weights.h5"):
            if old.name != weights:
                old.unlink(missing_ok=True)

    # -- resuming --------------------------------------------------------------------------------------------
    def restore(self, model: Any) -> int:
        """Load the last checkpoint into ``model`` and the loader; the epoch to continue (0 without one)."""
        path = self.directory / _INDEX
        if not path.exists():
            return self.loader.epoch
        try:
            index = json.loads(path.read_text())
            weights, state = index["weights"], index["loader"]
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path} is not an npyfeed LoaderCheckpoint index") from e
        model.load_weights(str(self.directory / weights))
        self.loader.set_state(state)
        return self.loader.epoch

    def fit(self, model: Any, *, epochs: int, callbacks: list[Any] | None = None, **kwargs: Any) -> list[Any]:
        """``model.fit`` on ``loader.to_keras()`` from the last checkpoint: the rest of an interrupted epoch as a
        ``fit`` of its remaining steps, then the remaining epochs. Returns the ``History`` objects."""
        callbacks = [self, *(callbacks or [])]
        kwargs.setdefault("shuffle", False)
        self.restore(model)
        epoch, offset = self._resumed = self.loader.next_pass
        histories = []
        remaining = self.loader.num_batches(offset)
        if epoch < epochs and remaining < len(self.loader):
            data = self.loader.to_keras(start_epoch=epoch)
            histories.append(
                model.fit(
                    data,
                    initial_epoch=epoch,
                    epochs=epoch + 1,
                    steps_per_epoch=remaining,
                    callbacks=callbacks,
                    **kwargs,
                )
            )
            epoch += 1
        if epoch < epochs:
            data = self.loader.to_keras(start_epoch=epoch)
            histories.append(model.fit(data, initial_epoch=epoch, epochs=epochs, callbacks=callbacks, **kwargs))
        return histories
