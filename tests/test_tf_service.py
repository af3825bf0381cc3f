"""The native dataset in tf.data service: an in-process dispatcher and two workers on 127.0.0.1."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

import npyfeed  # noqa: E402

N = 500


@pytest.fixture(scope="module")
def service() -> object:
    service_api = tf.data.experimental.service
    dispatcher = service_api.DispatchServer(service_api.DispatcherConfig(port=0))
    address = dispatcher.target.split("://")[1]
    workers = [
        service_api.WorkerServer(
            service_api.WorkerConfig(dispatcher_address=address, worker_address="127.0.0.1:%port%")
        )
        for _ in range(2)
    ]
    yield dispatcher
    for worker in workers:
        worker.stop()
    dispatcher.stop()


def files(tmp_path: Path) -> tuple[str, str]:
    x = np.random.default_rng(0).normal(size=(N, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ids.npy", np.arange(N, dtype=np.int64))
    return str(tmp_path / "x.npy"), str(tmp_path / "ids.npy")


@pytest.mark.slow
@pytest.mark.parametrize("shuffle", ["block", False])
def test_distributed_epoch_delivers_every_row_once(service: object, tmp_path: Path, shuffle: object) -> None:
    geometry = {"block_rows": 20} if shuffle == "block" else {}
    loader = npyfeed.Loader(files(tmp_path), batch_size=32, shuffle=shuffle, seed=4, **geometry)
    ds = loader.to_tf_dataset(native=True).apply(
        tf.data.experimental.service.distribute("distributed_epoch", service.target, job_name=f"epoch{shuffle}")  # type: ignore[attr-defined]
    )
    seen = Counter(int(i) for _, ids in ds for i in ids.numpy())
    assert seen == Counter(range(N))
    expected = {k: loader.read_batch(0, k)[1].tobytes() for k in range(len(loader))}
    got = {b[1].numpy().tobytes() for b in ds}
    assert got == set(expected.values())  # whole batches, byte-identical, in some order across workers


@pytest.mark.slow
def test_parallel_epochs_with_npyfeed_shards(service: object, tmp_path: Path) -> None:
    paths = files(tmp_path)
    per_shard = []
    for index in range(2):
        loader = npyfeed.Loader(paths, batch_size=25, shard=(index, 2))
        ds = loader.to_tf_dataset(native=True).apply(
            tf.data.experimental.service.distribute("parallel_epochs", service.target, job_name=f"shard{index}")  # type: ignore[attr-defined]
        )
        per_shard.append(Counter(int(i) for _, ids in ds for i in ids.numpy()))
    # parallel_epochs: each of the 2 workers produces a whole epoch of the shard
    for counts in per_shard:
        assert set(counts.values()) == {2}
    assert not set(per_shard[0]) & set(per_shard[1])
    assert set(per_shard[0]) | set(per_shard[1]) == set(range(N))


@pytest.mark.slow
def test_keras_fit_trains_from_the_service(service: object, tmp_path: Path) -> None:
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("Keras runs on another backend")
    loader = npyfeed.Loader(files(tmp_path), batch_size=50, shuffle="block", seed=1)
    w = tf.constant(np.arange(1, 9, dtype=np.float32)[:, None])
    ds = (
        loader.to_tf_dataset(native=True, epochs=None)
        .apply(tf.data.experimental.service.distribute("distributed_epoch", service.target, job_name="fit"))  # type: ignore[attr-defined]
        .map(lambda x, ids: (x, tf.matmul(x, w)))
    )
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    history = model.fit(ds, epochs=4, steps_per_epoch=len(loader), verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert losses[-1] < 0.2 * losses[0]
