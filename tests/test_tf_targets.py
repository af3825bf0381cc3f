"""``to_tf_dataset(targets=..., sample_weights=...)``: dict batches as Keras' ``(inputs, targets[, weights])``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

import npyfeed  # noqa: E402
from npyfeed.errors import ConfigError  # noqa: E402

N = 60  # rows: 6 batches of 10


@pytest.fixture
def source(tmp_path: Path) -> dict[str, str]:
    """image: uint8 4x4x3; size: float32 (1,); label: int64 = row id % 3; weight: float32; id: the row id."""
    rows = np.arange(N)
    arrays = {
        "image": (np.arange(N * 48) % 256).astype(np.uint8).reshape(N, 4, 4, 3),
        "size": (rows[:, None] / N).astype(np.float32),
        "label": rows % 3,
        "weight": np.where(rows % 2 == 0, 1.0, 0.0).astype(np.float32),
        "id": rows,
    }
    paths = {name: str(tmp_path / f"{name}.npy") for name in arrays}
    for name, array in arrays.items():
        np.save(paths[name], array)
    return paths


def spec(shape: tuple[int | None, ...], dtype: Any) -> Any:
    return tf.TensorSpec(shape, dtype)


def test_element_spec_is_inputs_and_targets(source: dict[str, str]) -> None:
    columns = {k: source[k] for k in ("image", "size", "label")}
    loader = npyfeed.Loader(columns, batch_size=10, drop_remainder=True)
    ds = loader.to_tf_dataset(targets="label")
    assert ds.element_spec == (
        {"image": spec((10, 4, 4, 3), tf.uint8), "size": spec((10, 1), tf.float32)},
        spec((10,), tf.int64),
    )
    assert ds.cardinality().numpy() == len(loader)
    for (inputs, label), batch in zip(ds, loader.to_tf_dataset(), strict=True):
        np.testing.assert_array_equal(inputs["image"], batch["image"])
        np.testing.assert_array_equal(inputs["size"], batch["size"])
        np.testing.assert_array_equal(label, batch["label"])


def test_sample_weights_and_several_targets(source: dict[str, str]) -> None:
    loader = npyfeed.Loader(source, batch_size=7)  # 60 rows: the last batch is partial, so no static batch size
    ds = loader.to_tf_dataset(targets=["label", "id"], sample_weights="weight")
    assert ds.element_spec == (
        {"image": spec((None, 4, 4, 3), tf.uint8), "size": spec((None, 1), tf.float32)},
        {"label": spec((None,), tf.int64), "id": spec((None,), tf.int64)},
        spec((None,), tf.float32),
    )
    ids = []
    for inputs, targets, weights in ds:
        np.testing.assert_array_equal(targets["label"], targets["id"] % 3)
        np.testing.assert_array_equal(weights, np.where(targets["id"] % 2 == 0, 1.0, 0.0))
        np.testing.assert_array_equal(inputs["size"][:, 0], (targets["id"].numpy() / N).astype(np.float32))
        ids += targets["id"].numpy().tolist()
    assert ids == list(range(N))


def test_targets_of_a_transform_that_returns_dicts(source: dict[str, str]) -> None:
    def scale(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**batch, "image": batch["image"].astype(np.float32) / 255}

    loader = npyfeed.Loader({k: source[k] for k in ("image", "label")}, batch_size=10, transform=scale)
    inputs, label = loader.to_tf_dataset(targets="label").element_spec
    assert inputs == {"image": spec((10, 4, 4, 3), tf.float32)}
    assert label == spec((10,), tf.int64)


def per_batch_ops(ds: Any) -> list[str]:
    """The dataset ops every batch passes through after the reads are split into batches, from the dataset's graph
    (``OptionsDataset`` left out: it only carries options)."""
    graph = tf.compat.v1.GraphDef()
    ignore = 1  # ExternalStatePolicy.IGNORE: the numpy_function reads are external state
    graph.ParseFromString(
        tf.raw_ops.DatasetToGraphV2(input_dataset=ds._variant_tensor, external_state_policy=ignore).numpy()
    )
    nodes = {node.name: node for node in graph.node}
    node, ops = nodes["dataset"], []
    while node.input:
        node = nodes[node.input[0].split(":")[0]]
        ops.append(node.op)
    ops.reverse()
    return [op for op in ops[ops.index("UnbatchDataset") :] if op != "OptionsDataset"]


@pytest.mark.parametrize("kwargs", [{}, {"targets": "label"}, {"targets": ["label"], "sample_weights": "weight"}])
def test_targets_cost_no_op_per_batch(source: dict[str, str], kwargs: dict[str, Any]) -> None:
    """(inputs, targets) is made once per read, before the reads are split into batches: a Keras feed's batches
    pass through the same three ops as plain ones (a map per batch used to follow them)."""
    loader = npyfeed.Loader({k: source[k] for k in ("size", "label", "weight")}, batch_size=5, shuffle=True, seed=3)
    assert loader.batches_per_read > 1  # several batches per read: split by unbatch()
    ds = loader.to_tf_dataset(**kwargs)
    assert per_batch_ops(ds) == ["UnbatchDataset", "AssertCardinalityDataset", "PrefetchDataset"]
    labels = [b[1] if kwargs else b["label"] for b in ds]
    labels = [lab["label"] if isinstance(lab, dict) else lab for lab in labels]
    expected = [loader.read_batch(0, i)["label"] for i in range(len(loader))]
    assert [lab.numpy().tolist() for lab in labels] == [e.tolist() for e in expected]


def test_native_pipeline_takes_targets_too(source: dict[str, str]) -> None:
    loader = npyfeed.Loader({k: source[k] for k in ("size", "label")}, batch_size=10)
    ds = loader.to_tf_dataset(native=True, targets="label")
    assert ds.element_spec == ({"size": spec((10, 1), tf.float32)}, spec((10,), tf.int64))
    labels = np.concatenate([label.numpy() for _, label in ds])
    np.testing.assert_array_equal(labels, np.arange(N) % 3)


@pytest.mark.parametrize(
    ("columns", "kwargs", "message"),
    [
        (("size", "label"), {"targets": "label"}, "dict batches, but the batches are tuples"),
        (["size", "label"], {"targets": "lable"}, "no key 'lable' in the batches: they have ['label', 'size']"),
        (["size", "label"], {"targets": ["label", "size"]}, "no inputs left"),
        (["size", "label"], {"targets": []}, "a key or a list of distinct keys"),
        (["size", "label"], {"targets": ["label", "label"]}, "a key or a list of distinct keys"),
        (["size", "label"], {"sample_weights": "size"}, "needs targets="),
        (["size", "label", "weight"], {"targets": "label", "sample_weights": "label"}, "is also a target"),
        (["size", "label"], {"targets": "label", "sample_weights": 3}, "sample_weights must be a key"),
    ],
)
def test_bad_targets_are_refused(source: dict[str, str], columns: Any, kwargs: Any, message: str) -> None:
    chosen = tuple(source[k] for k in columns) if isinstance(columns, tuple) else {k: source[k] for k in columns}
    loader = npyfeed.Loader(chosen, batch_size=10)
    with pytest.raises(ConfigError) as info:
        loader.to_tf_dataset(**kwargs)
    assert message in str(info.value)


def test_functional_model_with_named_inputs_fits_a_dict_source(source: dict[str, str]) -> None:
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("Keras runs on another backend")
    columns = {k: source[k] for k in ("image", "size", "label", "weight")}
    loader = npyfeed.Loader(columns, batch_size=10, shuffle=True, seed=0)
    image = keras.Input((4, 4, 3), name="image", dtype="uint8")
    size = keras.Input((1,), name="size")
    features = keras.layers.Concatenate()([keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(image)), size])
    model = keras.Model({"image": image, "size": size}, keras.layers.Dense(3, activation="softmax")(features))
    model.compile("adam", "sparse_categorical_crossentropy")
    steps: list[int] = []

    class Steps(keras.callbacks.Callback):  # type: ignore[name-defined]
        def on_train_begin(self, logs: object = None) -> None:
            steps.append(self.params["steps"])

    ds = loader.to_tf_dataset(targets="label", sample_weights="weight")
    history = model.fit(ds, epochs=2, shuffle=False, verbose=0, callbacks=[Steps()])
    assert steps == [len(loader)]
    assert len(history.history["loss"]) == 2
    assert all(np.isfinite(history.history["loss"]))
    predictions = model.predict(ds, verbose=0)  # the inputs of each (inputs, targets, weights)
    assert predictions.shape == (N, 3)
