"""Every way of consuming a Loader resumes exactly from a state saved at any batch, then runs full epochs.

The ways (see :mod:`resume`): numpy iteration, the JAX helper, tf.data (an iterator checkpoint, and a dataset built
after ``set_state``), torch (``to_torch`` with its ``state_dict``, and torchdata's ``StatefulDataLoader``), Keras'
``PyDataset`` (``to_keras``) and ``LoaderCheckpoint`` around a real ``model.fit``; global and block shuffles, local
files and an s3:// object on a moto server.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from npyfeed import ConfigError, Loader
from resume import Session, StreamSession, Way, assert_resumes, epochs_of, json_state, numpy_way, write_columns

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

N = 53  # 6 batches of 10 per epoch, the last one of 3 rows
SHUFFLES = {
    "global": {"shuffle": True, "seed": 7},
    "block": {"shuffle": "block", "seed": 7, "block_rows": 4, "window_blocks": 3},
}


@pytest.fixture
def columns(tmp_path: Path) -> tuple[str, str]:
    return write_columns(tmp_path, N)


def maker(source: Any, shuffle: str, **kwargs: Any) -> Callable[[], Loader]:
    return lambda: Loader(source, 10, **SHUFFLES[shuffle], **kwargs)


# -- the ways ----------------------------------------------------------------------------------------------------
def jax_way(loader: Loader, token: Any) -> Session:
    """:func:`npyfeed.jax_arrays.global_batches` over the loader's epochs; the Loader's state."""
    import jax

    from npyfeed.jax_arrays import global_batches

    if token is not None:
        loader.set_state(token)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    return StreamSession(global_batches(epochs_of(loader), sharding), lambda: json_state(loader.get_state()))


def tf_checkpoint_way(directory: Path) -> Way:
    """One tf.data iterator per epoch (as Keras makes them); ``tf.train.Checkpoint(iterator=...)``."""
    tf = pytest.importorskip("tensorflow")

    def way(loader: Loader, token: Any) -> Session:
        dataset = loader.to_tf_dataset()
        current = [iter(dataset)]
        if token is not None:
            tf.train.Checkpoint(iterator=current[0]).restore(token).assert_consumed()

        def stream() -> Iterator[Any]:
            while True:
                yield from current[0]
                current[0] = iter(dataset)

        def save() -> str:
            return str(tf.train.Checkpoint(iterator=current[0]).save(str(directory / "ckpt")))

        return StreamSession(stream(), save)

    return way


def tf_after_set_state_way(loader: Loader, token: Any) -> Session:
    """``loader.set_state(state)``, then ``loader.to_tf_dataset()``: the rest of the epoch, then whole epochs."""
    pytest.importorskip("tensorflow")
    if token is not None:
        loader.set_state(token)
    dataset = loader.to_tf_dataset()
    return StreamSession(epochs_of(dataset), loader.get_state)


def torch_way(loader: Loader, token: Any) -> Session:
    """``DataLoader(loader.to_torch(), batch_size=None)``; the dataset's ``state_dict()``."""
    torch = pytest.importorskip("torch")
    dataset = loader.to_torch()
    if token is not None:
        dataset.load_state_dict(token)
    data = torch.utils.data.DataLoader(dataset, batch_size=None)
    return StreamSession(epochs_of(data), lambda: json_state(dataset.state_dict()))


def stateful_dataloader_way(loader: Loader, token: Any) -> Session:
    """torchdata's ``StatefulDataLoader(loader.to_torch(), batch_size=None)``; its ``state_dict()``."""
    pytest.importorskip("torch")
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    data = stateful.StatefulDataLoader(loader.to_torch(), batch_size=None)
    if token is not None:
        data.load_state_dict(token)
    return StreamSession(epochs_of(data), lambda: json_state(data.state_dict()))


def keras_dataset_way(loader: Loader, token: Any) -> Session:
    """``loader.to_keras()`` driven as Keras' ``PyDatasetAdapter`` does (``on_epoch_begin``, batches by index,
    ``on_epoch_end``); the rest of a resumed epoch is a shorter Keras epoch, as ``LoaderCheckpoint.fit`` runs it."""
    pytest.importorskip("keras")
    if token is not None:
        loader.set_state(token)
    first = loader.num_batches(loader.next_pass[1])
    dataset = loader.to_keras()

    def stream() -> Iterator[Any]:
        steps = first
        while True:
            dataset.on_epoch_begin()
            for i in range(steps):
                yield dataset[i]
            dataset.on_epoch_end()
            steps = len(dataset)

    return StreamSession(stream(), lambda: json_state(loader.get_state()))


class _Interrupt(Exception):
    """Stands for a job killed after a batch."""


def loader_checkpoint_way(directory: Path, epochs: int) -> Way:
    """``LoaderCheckpoint(loader, directory, save_freq=1).fit(model, epochs=...)`` around a real ``model.fit``;
    taking ``n`` batches is a fit interrupted after its ``n``-th trained batch; the token is the directory (a fresh
    session gets a new one)."""
    keras = pytest.importorskip("keras")
    from npyfeed.keras import LoaderCheckpoint

    class Recorded(keras.Sequential):  # type: ignore[misc]
        def train_step(self, data: Any) -> Any:
            self.seen.append(np.asarray(data[1]).tolist())
            return super().train_step(data)

    class Session_:
        def __init__(self, loader: Loader, token: Any) -> None:
            self.loader = loader
            self.directory = token if token is not None else directory / str(len(list(directory.glob("*"))))

        def take(self, n: int) -> list[list[int]]:
            model = Recorded([keras.Input((3,)), keras.layers.Dense(1)])
            model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
            model.seen = []

            class Stop(keras.callbacks.Callback):  # type: ignore[misc]
                def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                    if len(model.seen) == n:
                        raise _Interrupt

            with contextlib.suppress(_Interrupt):
                LoaderCheckpoint(self.loader, self.directory, save_freq=1).fit(
                    model, epochs=epochs, callbacks=[Stop()], verbose=0
                )
            return list(model.seen)

        def save(self) -> Path:
            return self.directory

    return Session_


# -- the matrix ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shuffle", SHUFFLES)
def test_numpy_iteration_resumes(columns: tuple[str, str], shuffle: str) -> None:
    assert_resumes(maker(columns, shuffle), numpy_way, stops=range(0, 13))


@pytest.mark.parametrize("shuffle", SHUFFLES)
def test_numpy_iteration_resumes_on_another_shard_count(columns: tuple[str, str], shuffle: str) -> None:
    """Saved by worker 1 of 2 after two steps: one worker reads the rest of the epoch, then whole epochs."""
    loader = maker(columns, shuffle, shard=(1, 2))()
    it = iter(loader)
    next(it), next(it)
    state = json_state(loader.get_state())
    assert state["position"] == 40
    resumed = maker(columns, shuffle)()
    resumed.set_state(state)
    order = resumed.order
    assert [b[1].tolist() for b in resumed] == [sorted(order.rows(0, 40, 50)), sorted(order.rows(0, 50, N))]
    assert [b[1].tolist() for b in resumed] == [resumed.read_batch(1, i)[1].tolist() for i in range(6)]


@pytest.mark.slow
def test_jax_helper_resumes(columns: tuple[str, str]) -> None:
    """In a child process: JAX's runtime, once started, warns at every later fork (other tests fork)."""
    pytest.importorskip("jax")
    script = (
        "import sys, test_resume as t\n"
        "for s in t.SHUFFLES:\n"
        "    t.assert_resumes(t.maker(tuple(sys.argv[1:]), s), t.jax_way)\n"
    )
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-c", script, *columns]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("shuffle", SHUFFLES)
def test_torch_dataset_resumes(columns: tuple[str, str], shuffle: str) -> None:
    assert_resumes(maker(columns, shuffle), torch_way)


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata 0.11 on torch 2.13
@pytest.mark.parametrize("shuffle", SHUFFLES)
def test_stateful_dataloader_resumes(columns: tuple[str, str], shuffle: str) -> None:
    assert_resumes(maker(columns, shuffle), stateful_dataloader_way)


@pytest.mark.parametrize("shuffle", SHUFFLES)
def test_states_move_between_ways(columns: tuple[str, str], shuffle: str) -> None:
    """A Loader state is one format: saved iterating NumPy, resumed by torch, and back."""
    make = maker(columns, shuffle)
    assert_resumes(make, numpy_way, torch_way)
    assert_resumes(make, torch_way, numpy_way)


@pytest.mark.parametrize("shuffle", SHUFFLES)
def test_keras_dataset_resumes(columns: tuple[str, str], shuffle: str) -> None:
    assert_resumes(maker(columns, shuffle), keras_dataset_way)


@pytest.mark.slow
@pytest.mark.parametrize("shuffle", SHUFFLES)
def test_tf_iterator_checkpoint_resumes(columns: tuple[str, str], shuffle: str, tmp_path: Path) -> None:
    assert_resumes(maker(columns, shuffle), tf_checkpoint_way(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("shuffle", SHUFFLES)
def test_tf_dataset_built_after_set_state_resumes(columns: tuple[str, str], shuffle: str) -> None:
    """The rest of the saved epoch (fewer batches than ``len(loader)``), then whole epochs."""
    assert_resumes(maker(columns, shuffle), numpy_way, tf_after_set_state_way)


@pytest.mark.slow
@pytest.mark.parametrize("shuffle", SHUFFLES)
def test_loader_checkpoint_resumes_model_fit(columns: tuple[str, str], shuffle: str, tmp_path: Path) -> None:
    stops = None if shuffle == "global" else [3]  # a real fit per stop: the middle one for the block shuffle
    assert_resumes(maker(columns, shuffle), loader_checkpoint_way(tmp_path, 3), stops=stops)


# -- read_batch is pure, get_state is never stale ------------------------------------------------------------------
def test_read_batch_ignores_set_state(columns: tuple[str, str]) -> None:
    make = maker(columns, "global")
    fresh = make()
    resumed = make()
    it = iter(resumed)
    next(it), next(it)
    resumed.set_state(resumed.get_state())
    assert [resumed.read_batch(0, i)[1].tolist() for i in range(6)] == [
        fresh.read_batch(0, i)[1].tolist() for i in range(6)
    ]
    assert resumed.num_batches() == len(resumed) == 6
    assert resumed.num_batches(20) == 4  # the rest of an epoch: an explicit offset
    assert resumed.read_batch(0, 0, offset=20)[1].tolist() == sorted(fresh.order.rows(0, 20, 30).tolist())


@pytest.mark.slow
def test_get_state_after_tf_data_names_the_iterator_checkpoint(columns: tuple[str, str]) -> None:
    """tf.data reads ahead in its own graph: the Loader cannot know what the consumer received, so it says so."""
    pytest.importorskip("tensorflow")
    loader = maker(columns, "global")()
    dataset = loader.to_tf_dataset()
    for _ in range(2):
        assert len(list(dataset)) == 6
    with pytest.raises(ConfigError, match=r"tf\.train\.Checkpoint\(iterator="):
        loader.get_state()
    list(loader)  # iterating the loader itself: its position is known again
    assert loader.get_state()["epoch"] == 1


# -- object storage ------------------------------------------------------------------------------------------------
BUCKET = "npyfeed-resume"


@pytest.fixture(scope="module")
def bucket(s3: Any) -> str:
    s3.client().create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.mark.parametrize("shuffle", SHUFFLES)
def test_a_remote_loader_resumes(columns: tuple[str, str], shuffle: str, s3: Any, bucket: str) -> None:
    pytest.importorskip("obstore")
    urls = []
    for path in columns:
        key = f"{shuffle}/{Path(path).name}"
        s3.client().put_object(Bucket=bucket, Key=key, Body=Path(path).read_bytes())
        urls.append(f"s3://{bucket}/{key}")
    assert_resumes(maker(tuple(urls), shuffle), numpy_way, torch_way, stops=[1, 3, 6])
