"""``LoaderCheckpoint``: a run stopped mid-epoch and resumed trains to the same weights as one that never stopped
(Adam's moments and step count restored with the weights), with no misleading warning and the right epoch labels,
fed by ``to_keras()`` or by ``to_tf_dataset()`` on the TensorFlow backend."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

import npyfeed  # noqa: E402
from npyfeed.keras import LoaderCheckpoint  # noqa: E402

pytestmark = pytest.mark.slow

N = 40  # 5 batches of 8 per epoch
EPOCHS = 3


class Stop(Exception):
    """Raised by :class:`StopAfter` to kill a run between two batches."""


class StopAfter(keras.callbacks.Callback):
    def __init__(self, epoch: int, batches: int) -> None:
        super().__init__()
        self.at = (epoch, batches)
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if (self.epoch, batch + 1) == self.at:
            raise Stop


@pytest.fixture
def xy(tmp_path: Path) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.1).astype(np.float32)[:, None]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return str(tmp_path / "x.npy"), str(tmp_path / "y.npy")


def make_model() -> Any:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dense(4, activation="tanh")(inputs)))
    model.compile(keras.optimizers.Adam(0.05), "mse")
    return model


def make_loader(xy: tuple[str, str]) -> npyfeed.Loader:
    return npyfeed.Loader(xy, batch_size=8, shuffle=True, seed=5)


def train(xy: tuple[str, str], directory: Path, feed: str, stop: tuple[int, int] | None) -> Any:
    model = make_model()
    checkpoint = LoaderCheckpoint(make_loader(xy), directory, save_freq=1)
    try:
        checkpoint.fit(model, epochs=EPOCHS, feed=feed, verbose=0, callbacks=[] if stop is None else [StopAfter(*stop)])
    except Stop:
        return None
    return model


@pytest.mark.parametrize("feed", ["keras", "tf"])
def test_a_resumed_run_trains_the_same_weights(xy: tuple[str, str], tmp_path: Path, feed: str) -> None:
    straight = train(xy, tmp_path / "straight", feed, None)
    assert train(xy, tmp_path / "resumed", feed, (1, 2)) is None  # killed after 2 batches of epoch 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        resumed = train(xy, tmp_path / "resumed", feed, None)
    # neither npyfeed's "pass shuffle=False" (a BatchOrderWarning) nor Keras' "Skipping variable loading"
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []
    assert int(resumed.optimizer.iterations.numpy()) == int(straight.optimizer.iterations.numpy()) == EPOCHS * 5
    for a, b in zip(straight.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_resumed_epoch_is_labelled_as_such(xy: tuple[str, str], tmp_path: Path, capsys: Any) -> None:
    assert train(xy, tmp_path, "keras", (1, 2)) is None
    capsys.readouterr()
    LoaderCheckpoint(make_loader(xy), tmp_path, save_freq=1).fit(make_model(), epochs=EPOCHS, verbose=2)
    labels = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch ")]
    assert labels == ["Epoch 2/3", "Epoch 3/3"]
