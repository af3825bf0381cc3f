"""``to_keras``: a PyDataset whose epochs are the Loader's, through model.fit on the PyTorch backend too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

import npyfeed  # noqa: E402
from npyfeed.adapters.keras_dataset import to_keras  # noqa: E402
from npyfeed.errors import ConfigError  # noqa: E402

N = 53  # 6 batches of 10, the last one partial


def loader_epoch(loader: npyfeed.Loader, epoch: int) -> list[list[int]]:
    return [loader.read_batch(epoch, i)[1].tolist() for i in range(len(loader))]


def keras_epoch(dataset: Any, order: list[int] | None = None) -> list[list[int]]:
    """One epoch the way Keras' PyDatasetAdapter runs it: on_epoch_begin, batches by index, on_epoch_end."""
    dataset.on_epoch_begin()
    batches = {i: dataset[i][1].tolist() for i in (order if order is not None else range(len(dataset)))}
    dataset.on_epoch_end()
    return [batches[i] for i in sorted(batches)]


def test_epochs_follow_the_loader(files: dict[str, str]) -> None:
    loader = npyfeed.Loader((files["big"], files["ids"]), batch_size=10, shuffle=True, seed=2)
    dataset = to_keras(loader)
    assert isinstance(dataset, keras.utils.PyDataset)
    assert len(dataset) == dataset.num_batches == len(loader) == 6
    assert [keras_epoch(dataset) for _ in range(3)] == [loader_epoch(loader, e) for e in range(3)]
    assert dataset.epoch == 3
    assert loader.epoch == 3  # one cursor: the dataset moves the loader's
    assert loader.get_state()["epoch"] == 3


def test_batches_are_native_and_exact(files: dict[str, str]) -> None:
    loader = npyfeed.Loader((files["big"], files["ids"]), batch_size=10, shuffle=True, seed=2)
    dataset = to_keras(loader)
    dataset.on_epoch_begin()
    for i in range(len(dataset)):
        x, ids = dataset[i]
        assert x.dtype == np.dtype("<f4")
        np.testing.assert_array_equal(x, np.load(files["big"])[ids])
    dataset.on_epoch_end()


def test_a_build_probe_does_not_consume_an_epoch(files: dict[str, str]) -> None:
    """Keras on JAX/PyTorch runs begin, batch 0, end to build the model; on TF it probes batches outside epochs."""
    loader = npyfeed.Loader((files["big"], files["ids"]), batch_size=10, shuffle=True, seed=2, epoch=4)
    dataset = to_keras(loader)
    assert dataset[1][1].tolist() == loader_epoch(loader, 4)[1]  # outside an epoch: read, not counted
    dataset.on_epoch_begin()
    assert dataset[0][1].tolist() == loader_epoch(loader, 4)[0]
    dataset.on_epoch_end()
    assert keras_epoch(dataset) == loader_epoch(loader, 4)
    assert keras_epoch(dataset) == loader_epoch(loader, 5)


def test_out_of_order_access_warns_once_and_stays_exact(files: dict[str, str]) -> None:
    loader = npyfeed.Loader((files["big"], files["ids"]), batch_size=10, shuffle=True, seed=2)
    dataset = to_keras(loader, start_epoch=1)
    with pytest.warns(npyfeed.BatchOrderWarning, match="shuffle=False"):
        assert keras_epoch(dataset, order=[3, 0, 5, 1, 4, 2]) == loader_epoch(loader, 1)
    assert keras_epoch(dataset, order=[5, 4, 3, 2, 1, 0]) == loader_epoch(loader, 2)  # no second warning


def test_bad_arguments(files: dict[str, str]) -> None:
    loader = npyfeed.Loader(files["ids"], batch_size=10)
    with pytest.raises(ConfigError):
        to_keras(loader, start_epoch=-2)
    with pytest.raises(ConfigError):
        to_keras(loader, prefetch=0)
    with pytest.raises(IndexError):
        to_keras(loader)[len(loader)]


FIT_SCRIPT = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, keras, npyfeed
from npyfeed.adapters.keras_dataset import to_keras

x_path, ids_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
loader = npyfeed.Loader(
    {"x": x_path, "id": ids_path}, batch_size=10, shuffle=True, seed=7,
    transform=lambda b: ({"x": b["x"], "id": b["id"]}, b["x"].sum(axis=1)),
)
seen = []

class Record(keras.layers.Layer):
    def call(self, ids, training=None):
        if training:
            seen.append(keras.ops.convert_to_numpy(ids).tolist())
        return keras.ops.zeros_like(keras.ops.cast(ids, "float32"))[:, None]

x_in, id_in = keras.Input((4,), name="x"), keras.Input((), name="id", dtype="int64")
model = keras.Model({"x": x_in, "id": id_in}, keras.layers.Dense(1)(x_in) + Record()(id_in))
model.compile("sgd", "mse", run_eagerly=True)
steps = []

class Steps(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        steps.append(self.params["steps"])

dataset = to_keras(loader)
model.fit(dataset, epochs=3, shuffle=False, verbose=0, callbacks=[Steps()])
expected = [[loader.read_batch(e, i)[0]["id"].tolist() for i in range(len(loader))] for e in range(3)]
print(json.dumps({"backend": keras.backend.backend(), "seen": seen, "expected": expected, "steps": steps,
                  "next_epoch": dataset.epoch}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "jax", "tensorflow"])
def test_model_fit_sees_the_loaders_epochs(files: dict[str, str], backend: str) -> None:
    if backend != "tensorflow":
        pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend}
    cmd = [sys.executable, "-c", textwrap.dedent(FIT_SCRIPT), files["big"], files["ids"], str(N)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, timeout=300).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["backend"] == backend
    assert result["steps"] == [6]  # known steps per epoch
    assert result["seen"] == [b for epoch in result["expected"] for b in epoch]  # the loader's epochs 0, 1, 2
    for e in range(3):
        assert sorted(i for b in result["seen"][6 * e : 6 * e + 6] for i in b) == list(range(N))
    assert result["next_epoch"] == 3
