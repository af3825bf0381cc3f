"""Keras checkpoint glue: the loader's position saved with the model's weights, from Keras' own counters.

Keras restarts an interrupted epoch from its first batch (``BackupAndRestore`` records the epoch only), and cannot
run one epoch shorter than the others within a ``fit``. :class:`LoaderCheckpoint` therefore saves, every
``save_freq`` batches and at every epoch end, the weights with the optimizer's state (Keras' ``.weights.h5``:
Adam's step count and moments too) and the loader state after the batches Keras reports as trained
(``on_train_batch_end``; not what was read ahead), and :meth:`LoaderCheckpoint.fit` resumes: it restores all of it,
finishes the interrupted epoch with a ``fit`` of just its remaining steps (labelled with its place in the whole
run, "Epoch 2/3"), then runs the remaining epochs, training to the weights an uninterrupted run reaches. Keras epoch
``e`` is loader epoch ``e``; data comes from ``loader.to_keras()`` (any backend) or, with ``feed="tf"``,
``loader.to_tf_dataset()`` (TensorFlow backend).

>>> checkpoint = LoaderCheckpoint(loader, "ckpt/", save_freq=100)  # doctest: +SKIP
>>> checkpoint.fit(model, epochs=10)  # the same line starts and resumes  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from npyfeed import arguments as args
from npyfeed.adapters.frameworks import require_keras
from npyfeed.errors import ConfigError

require_keras()  # a clear ImportError, naming what to install, when Keras is missing
import keras  # noqa: E402

if TYPE_CHECKING:
    from npyfeed.adapters.feed import Feed

__all__ = ["LoaderCheckpoint"]

_INDEX = "checkpoint.json"


class LoaderCheckpoint(keras.callbacks.Callback):
    """Save the model's weights and ``loader``'s position in ``directory`` every ``save_freq`` batches and epoch."""

    def __init__(self, loader: Feed, directory: str | os.PathLike[str], *, save_freq: int = 100) -> None:
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
        # The weights file holds the optimizer's variables too (Adam's step count and moments); an optimizer that
        # has not run yet has none to load them into (Keras would skip them with a warning), so build it first.
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)
        model.load_weights(str(self.directory / weights))
        self.loader.set_state(state)
        return self.loader.epoch

    def fit(
        self,
        model: Any,
        *,
        epochs: int,
        feed: Literal["keras", "tf"] = "keras",
        callbacks: list[Any] | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """``model.fit`` from the last checkpoint: the rest of an interrupted epoch as a ``fit`` of its remaining
        steps, then the remaining epochs. Returns the ``History`` objects.

        Args:
            model: a compiled Keras model (its weights and optimizer state are restored from the checkpoint).
            epochs: the total number of epochs, as for ``model.fit``: a resumed run stops at the same epoch.
            feed: ``"keras"`` reads ``loader.to_keras()`` (any backend); ``"tf"`` reads ``loader.to_tf_dataset()``
                (the TensorFlow backend).
            callbacks: more Keras callbacks (this checkpoint runs first).
            kwargs: passed to ``model.fit`` (``shuffle`` defaults to ``False``: the loader shuffles).
        """
        epochs = args.integer("epochs", epochs)
        if feed not in ("keras", "tf"):
            raise ConfigError(f"feed must be 'keras' or 'tf', got {feed!r}")
        callbacks = [self, *(callbacks or [])]
        if not any(isinstance(c, keras.callbacks.ProgbarLogger) for c in callbacks):
            callbacks.append(_Progbar(epochs))  # "Epoch 2/3" for a resumed epoch 2, not fit's "Epoch 2/2"
        kwargs.setdefault("shuffle", False)
        self.restore(model)
        epoch, offset = self._resumed = self.loader.next_pass
        histories = []
        remaining = self.loader.num_batches(offset)
        if epoch < epochs and remaining < len(self.loader):
            data = self._data(feed, epoch)
            histories.append(
                model.fit(
                    data if feed == "tf" else _First(data, remaining),
                    initial_epoch=epoch,
                    epochs=epoch + 1,
                    steps_per_epoch=remaining,
                    callbacks=callbacks,
                    **kwargs,
                )
            )
            epoch += 1
        if epoch < epochs:
            data = self._data(feed, epoch)
            histories.append(model.fit(data, initial_epoch=epoch, epochs=epochs, callbacks=callbacks, **kwargs))
        return histories

    def _data(self, feed: str, epoch: int) -> Any:
        if feed == "tf":
            from npyfeed.adapters.tf_data import to_tf_dataset  # TensorFlow, imported only for this feed

            return to_tf_dataset(self.loader, start_epoch=epoch)
        return self.loader.to_keras(start_epoch=epoch)


class _Progbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, labelling epochs out of the run's total rather than one ``fit``'s ``epochs``."""

    def __init__(self, total_epochs: int) -> None:
        super().__init__()
        self._total = total_epochs

    def set_params(self, params: dict[str, Any]) -> None:
        super().set_params({**params, "epochs": self._total})


class _First(keras.utils.PyDataset):
    """The first ``count`` batches of a PyDataset: a resumed epoch's rest, so Keras reads no batch beyond it (it
    reads one ahead, which would take the next epoch's first batch out of order)."""

    def __init__(self, dataset: Any, count: int) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.dataset, self.count = dataset, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.count:
            raise IndexError(f"batch {index} is out of range for {self.count} batches")
        return self.dataset[index]

    def on_epoch_begin(self) -> None:
        self.dataset.on_epoch_begin()

    def on_epoch_end(self) -> None:
        self.dataset.on_epoch_end()
