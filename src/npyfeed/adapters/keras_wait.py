"""A Keras callback that puts a Loader's data wait into the training logs (History, TensorBoard, CSVLogger).

At each epoch's end it adds ``data_wait_fraction``, ``data_wait_p50_s``/``p95``/``p99``, ``data_rows_per_s`` and the
other :meth:`snapshot` keys (prefixed ``data_``) to ``logs``, optionally appends them to a JSON-lines file, then
starts a new account, so every epoch's numbers are its own. Put it before ``TensorBoard`` in ``callbacks``: Keras
calls callbacks in order, and a logger placed earlier would not see the keys yet.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Protocol

import keras

from npyfeed.errors import NpyfeedWarning

__all__ = ["DataWaitLogger", "WaitMetrics"]


class WaitMetrics(Protocol):
    """What this callback needs of ``loader.metrics``."""

    def snapshot(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...

    def histogram(self) -> dict[int, int]: ...


class DataWaitLogger(keras.callbacks.Callback):
    """Add ``metrics.snapshot()`` to each epoch's logs (keys prefixed ``prefix``); see the module docstring.

    Args:
        metrics: ``loader.metrics`` of the Loader feeding ``fit``.
        json_lines: a file to append one JSON line per epoch to (``{"epoch": e, ...}``), or ``None``.
        every_steps: also append a line every this many training steps (``json_lines`` needed), or ``None``.
        prefix: the logs' key prefix.
    """

    def __init__(
        self,
        metrics: WaitMetrics,
        *,
        json_lines: str | Path | None = None,
        every_steps: int | None = None,
        prefix: str = "data_",
    ) -> None:
        super().__init__()
        if every_steps is not None and (json_lines is None or every_steps < 1):
            raise ValueError(f"every_steps={every_steps!r} needs a json_lines file and a count >= 1")
        self.metrics, self.prefix, self.every_steps = metrics, prefix, every_steps
        self.json_lines = Path(json_lines) if json_lines is not None else None
        self._epoch = 0

    def _write(self, line: dict[str, Any]) -> None:
        if self.json_lines is not None:
            with self.json_lines.open("a") as f:
                f.write(json.dumps(line) + "\n")

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self.metrics.reset()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.every_steps is not None and (batch + 1) % self.every_steps == 0:
            self._write({"epoch": self._epoch, "step": batch + 1, **self.metrics.snapshot()})

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        snapshot = self.metrics.snapshot()
        if not snapshot.get("batches"):  # zeros would read as "never waited"
            warnings.warn(
                f"npyfeed: DataWaitLogger: the loader handed no batches to fit in epoch {epoch}, so its wait is "
                "not known (to_tf_dataset() counts only with data_wait=True; DataLoader worker processes keep "
                "accounts of their own): nothing logged",
                NpyfeedWarning,
                stacklevel=2,
            )
            return
        if logs is not None:
            logs.update({self.prefix + k: float(v) for k, v in snapshot.items()})
        # With the histogram, so the lines of several ranks merge (npyfeed.loader.wait_ranks).
        self._write({"epoch": epoch, **snapshot, "wait_histogram": self.metrics.histogram()})
