"""The Loader against in-memory NumPy as the oracle: structure, coverage, order, transforms, sharding, errors."""

from __future__ import annotations

import gc
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import npyfeed
from children import epoch_in_child
from npyfeed import ColumnMismatchError, ConfigError, Loader, Shard

N = 1003  # prime-ish: batches never divide evenly


@pytest.fixture
def arrays(tmp_path: Path) -> dict[str, Any]:
    """x (uint8 images), y (row ids), w (big-endian weights): the arrays, their ``paths`` and the ``dir``.

    Not conftest's ``files`` (paths only): these tests compare batches with the arrays themselves."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(N, 4, 3), dtype=np.uint8)
    y = np.arange(N, dtype=np.int64)  # row ids
    w = rng.random(N).astype(">f4")  # big-endian on purpose
    paths = {}
    for name, arr in {"x": x, "y": y, "w": w}.items():
        paths[name] = str(tmp_path / f"{name}.npy")
        np.save(paths[name], arr)
    return {"x": x, "y": y, "w": w, "paths": paths, "dir": tmp_path}


def ids_of(loader: Loader, column: int | str = 1) -> list[np.ndarray]:
    return [batch[column] for batch in loader]


@pytest.mark.parametrize("shuffle", [False, True, "block"])
@pytest.mark.parametrize("batch_size", [1, 64, 250, N, 5000])
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_every_row_once_per_epoch_with_exact_content(
    arrays: dict[str, Any], shuffle: bool | str, batch_size: int, drop_remainder: bool
) -> None:
    p = arrays["paths"]
    geometry = {"block_rows": 16} if shuffle == "block" else {}
    loader = Loader((p["x"], p["y"]), batch_size, shuffle=shuffle, seed=1, drop_remainder=drop_remainder, **geometry)
    expected_batches = N // batch_size if drop_remainder else -(-N // batch_size)
    assert len(loader) == expected_batches
    for _ in range(2):
        seen = []
        for x, y in loader:
            assert x.dtype == np.uint8 and x.shape[1:] == (4, 3) and y.dtype == np.int64
            assert len(x) == len(y) <= batch_size
            if drop_remainder:
                assert len(x) == batch_size
            np.testing.assert_array_equal(x, arrays["x"][y])  # inputs aligned with labels
            seen.append(y)
        ids = np.concatenate(seen) if seen else np.empty(0, np.int64)
        assert len(seen) == expected_batches
        assert np.unique(ids).size == ids.size  # no row twice
        if not drop_remainder:
            assert ids.size == N
        else:
            assert ids.size == expected_batches * batch_size


def test_sequential_epoch_is_the_file_in_order(arrays: dict[str, Any]) -> None:
    loader = Loader(arrays["paths"]["x"], 100)
    np.testing.assert_array_equal(np.concatenate(list(loader)), arrays["x"])


def test_batches_are_shaped_like_the_source(arrays: dict[str, Any]) -> None:
    p = arrays["paths"]
    single = next(iter(Loader(p["w"], 10)))
    assert isinstance(single, np.ndarray) and single.dtype == np.dtype(">f4")
    np.testing.assert_array_equal(single, arrays["w"][:10])
    triple = next(iter(Loader((p["x"], p["y"], p["w"]), 10)))
    assert isinstance(triple, tuple) and len(triple) == 3
    named = next(iter(Loader({"image": p["x"], "label": p["y"]}, 10)))
    assert isinstance(named, dict) and list(named) == ["image", "label"]
    np.testing.assert_array_equal(named["image"], arrays["x"][:10])


def test_shuffled_epochs_differ_and_repeat_per_seed(arrays: dict[str, Any]) -> None:
    p = arrays["paths"]
    a = Loader((p["x"], p["y"]), 100, shuffle=True, seed=7)
    b = Loader((p["x"], p["y"]), 100, shuffle=True, seed=7)
    epochs_a = [np.concatenate(ids_of(a)) for _ in range(3)]
    epochs_b = [np.concatenate(ids_of(b)) for _ in range(3)]
    for ea, eb in zip(epochs_a, epochs_b, strict=True):
        np.testing.assert_array_equal(ea, eb)
    assert not np.array_equal(epochs_a[0], epochs_a[1])
    assert not np.array_equal(epochs_a[1], epochs_a[2])
    other = np.concatenate(ids_of(Loader((p["x"], p["y"]), 100, shuffle=True, seed=8)))
    assert not np.array_equal(other, epochs_a[0])


def test_batch_membership_is_shuffled_and_rows_within_a_batch_in_file_order(arrays: dict[str, Any]) -> None:
    p = arrays["paths"]
    batches = ids_of(Loader((p["x"], p["y"]), 100, shuffle=True, seed=0))
    first = batches[0]
    assert np.all(np.diff(first) > 0)  # read in one sorted pass
    assert first.max() - first.min() > 500  # drawn from across the file


def test_no_seed_draws_one_and_records_it(arrays: dict[str, Any]) -> None:
    a = Loader(arrays["paths"]["y"], 50, shuffle=True)
    b = Loader(arrays["paths"]["y"], 50, shuffle=True, seed=a.seed)
    np.testing.assert_array_equal(np.concatenate(list(a)), np.concatenate(list(b)))
    assert a.get_state()["seed"] == a.seed


def test_transform_runs_on_every_batch(arrays: dict[str, Any]) -> None:
    p = arrays["paths"]

    def scale(batch: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        x, y = batch
        return x.astype(np.float32) / 255.0, y

    loader = Loader((p["x"], p["y"]), 128, shuffle=True, seed=0, transform=scale)
    count = 0
    for x, y in loader:
        assert x.dtype == np.float32
        np.testing.assert_allclose(x, arrays["x"][y] / 255.0, rtol=1e-6)
        count += len(y)
    assert count == N


@pytest.mark.parametrize("shuffle", [False, True, "block"])
@pytest.mark.parametrize(("offset", "drop_remainder"), [(0, False), (0, True), (37, False)])
def test_batches_read_together_are_each_batch_s_rows(
    arrays: dict[str, Any], shuffle: bool | str, offset: int, drop_remainder: bool
) -> None:
    """A read of many batches (their rows computed at once) gives each batch exactly its own sorted rows."""
    kw: dict[str, Any] = {"block_rows": 16, "window_blocks": 4} if shuffle == "block" else {}
    loader = Loader(arrays["paths"]["y"], 50, shuffle=shuffle, seed=3, drop_remainder=drop_remainder, **kw)
    count = loader.num_batches(offset)
    together = loader.read_batches(1, 0, count, offset=offset)
    assert len(together) == count
    for index, batch in enumerate(together):
        rows = loader.batch_rows(1, index, offset=offset)
        assert (np.diff(rows) > 0).all()
        np.testing.assert_array_equal(batch, arrays["y"][rows])
        np.testing.assert_array_equal(batch, loader.read_batch(1, index, offset=offset))
    seen = np.concatenate(together)
    assert len(np.unique(seen)) == len(seen) == (N - offset if not drop_remainder else count * 50)


def test_a_transformed_batch_is_handed_over_before_the_rest_of_its_read_is_transformed(tmp_path: Path) -> None:
    path = tmp_path / "ids.npy"
    np.save(path, np.arange(640, dtype=np.int64))
    release, gave_up = threading.Event(), threading.Event()

    def held(batch: np.ndarray) -> np.ndarray:
        """Batches after the first wait until the consumer holds the first one (or give up after 10 s)."""
        if batch[0] != 0 and not gave_up.is_set() and not release.wait(timeout=10):
            gave_up.set()
        return batch

    loader = Loader(str(path), 10, transform=held)
    assert loader.batches_per_read == 64  # one read task fetches all 64 batches
    it = iter(loader)
    first = next(it)
    waited = gave_up.is_set()
    release.set()
    rest = list(it)
    assert not waited, "the first batch waited for the transforms of the other 63 batches of its read"
    np.testing.assert_array_equal(np.concatenate([first, *rest]), np.arange(640))


def test_transforms_of_the_batches_of_one_read_run_on_different_threads(tmp_path: Path) -> None:
    path = tmp_path / "ids.npy"
    np.save(path, np.arange(640, dtype=np.int64))
    both = threading.Barrier(2, timeout=10)  # broken (an error naming the batch) if they ran one after another
    threads: dict[int, int] = {}

    def meet(batch: np.ndarray) -> np.ndarray:
        if batch[0] in (0, 10):  # batches 0 and 1, read by the same task
            threads[int(batch[0])] = threading.get_ident()
            both.wait()
        return batch

    loader = Loader(str(path), 10, transform=meet)
    assert loader.batches_per_read == 64
    np.testing.assert_array_equal(np.concatenate(list(loader)), np.arange(640))
    assert threads[0] != threads[10]
    assert loader.metrics.snapshot()["batches"] == 64


def test_errors_on_read_threads_reach_the_consumer(arrays: dict[str, Any]) -> None:
    def explode(batch: np.ndarray) -> np.ndarray:
        if batch.min() > 500:
            raise ZeroDivisionError("boom")
        return batch

    loader = Loader(arrays["paths"]["y"], 100, transform=explode)
    with pytest.raises(ZeroDivisionError, match="boom") as info:
        list(loader)
    assert re.fullmatch(
        r"npyfeed: reading batch \d+ of epoch 0 \(.*y\.npy\) failed in the transform", info.value.__notes__[0]
    )


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_are_disjoint_equal_and_cover_all_but_a_remainder(
    arrays: dict[str, Any], shuffle: bool, count: int
) -> None:
    p = arrays["paths"]
    shards = [Loader((p["x"], p["y"]), 64, shuffle=shuffle, seed=3, shard=(i, count)) for i in range(count)]
    assert len({len(s) for s in shards}) == 1  # equal batches: no worker waits on another
    ids = [np.concatenate(ids_of(s)) for s in shards]
    union = np.concatenate(ids)
    # Shard i reads global batches i, i + count, ...; the tail (N - 64 x full rounds) is split among the shards,
    # unless it has fewer than `count` rows (see tests/test_shard.py for every count and size).
    tail = N - N // 64 // count * count * 64
    assert np.unique(union).size == union.size == (N if tail >= count else N - tail)
    assert shards[0].shard == Shard(0, count)


def test_many_files_as_one_array(arrays: dict[str, Any]) -> None:
    d = arrays["dir"]
    parts = np.array_split(arrays["x"], [100, 101, 600])  # includes a one-row shard
    for i, part in enumerate(parts):
        np.save(d / f"shard_{i:03d}.npy", part)
    for source in (str(d / "shard_*.npy"), [str(d / f"shard_{i:03d}.npy") for i in range(len(parts))]):
        array = npyfeed.open(source)
        assert len(array) == N
        np.testing.assert_array_equal(array[[1000, 5, 100, 101, 5]], arrays["x"][[1000, 5, 100, 101, 5]])
        loader = Loader((source, arrays["paths"]["y"]), 64, shuffle=True, seed=0)
        for x, y in loader:
            np.testing.assert_array_equal(x, arrays["x"][y])


def test_shards_of_different_rows_are_refused(arrays: dict[str, Any]) -> None:
    d = arrays["dir"]
    np.save(d / "a.npy", np.zeros((3, 2)))
    np.save(d / "b.npy", np.zeros((3, 4)))
    with pytest.raises(ColumnMismatchError, match=r"b\.npy.*\(4,\).*a\.npy.*\(2,\)"):
        npyfeed.open([str(d / "a.npy"), str(d / "b.npy")])


def test_columns_of_different_lengths_name_both_files(arrays: dict[str, Any]) -> None:
    d = arrays["dir"]
    np.save(d / "short.npy", np.zeros(N - 1))
    with pytest.raises(ColumnMismatchError, match=rf"x\.npy.*{N} rows.*short\.npy.*{N - 1}"):
        npyfeed.open({"x": arrays["paths"]["x"], "y": str(d / "short.npy")})


def test_split_without_copies(arrays: dict[str, Any]) -> None:
    p = arrays["paths"]
    train, val = npyfeed.split((p["x"], p["y"]), 0.8)
    assert len(train) == round(N * 0.8) and len(train) + len(val) == N
    train_ids = np.concatenate(ids_of(Loader(train, 64, shuffle=True, seed=0)))
    val_ids = np.concatenate(ids_of(Loader(val, 64)))
    assert set(train_ids.tolist()) == set(range(len(train)))
    np.testing.assert_array_equal(val_ids, np.arange(len(train), N))
    for x, y in Loader(val, 50, shuffle=True, seed=1):
        np.testing.assert_array_equal(x, arrays["x"][y])
    first, rest = npyfeed.split(p["y"], 10)
    assert len(first) == 10 and first[3] == 3 and rest[0] == 10
    with pytest.raises(ConfigError, match=r"split fraction must be a finite number in \(0, 1\), got 1.5"):
        npyfeed.split(p["y"], 1.5)


def test_batches_kept_by_the_user_are_never_overwritten(arrays: dict[str, Any]) -> None:
    p = arrays["paths"]
    loader = Loader((p["x"], p["y"]), 16, shuffle=True, seed=0, num_threads=2)
    kept = [batch for _ in range(3) for batch in loader]  # hold everything while buffers would be recycled
    for x, y in kept:
        np.testing.assert_array_equal(x, arrays["x"][y])


def test_buffers_are_recycled_when_batches_are_dropped(arrays: dict[str, Any]) -> None:
    loader = Loader(arrays["paths"]["x"], 16, num_threads=1, prefetch=2)
    for _ in range(3):
        for batch in loader:
            del batch
    gc.collect()
    assert loader.read_path.buffers.reused > 0
    assert loader.read_batch(0, 3).ctypes.data % 64 == 0  # aligned: TensorFlow shares it instead of copying


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"batch_size": 2.5}, "batch_size must be a positive int"),
        ({"batch_size": 8, "shuffle": "sometimes"}, "shuffle must be"),
        ({"batch_size": 8, "seed": "x"}, "seed must be an int"),
        ({"batch_size": 8, "shard": (2, 2)}, r"Shard.index must be an int in \[0, 1\], got 2 \(int\)"),
        ({"batch_size": 8, "shard": (0, 0)}, r"Shard.count must be a positive int, got 0 \(int\)"),
        ({"batch_size": 8, "num_threads": 0}, "num_threads"),
        ({"batch_size": 8, "transform": 3}, "transform must be callable"),
    ],
)
def test_bad_arguments_are_refused_clearly(arrays: dict[str, Any], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Loader(arrays["paths"]["y"], **kwargs)


def test_closing_stops_threads_and_iteration_restarts(arrays: dict[str, Any]) -> None:
    with Loader(arrays["paths"]["y"], 100) as loader:
        first = np.concatenate(list(loader))
    np.testing.assert_array_equal(first, arrays["y"])
    np.testing.assert_array_equal(np.concatenate(list(loader)), arrays["y"])  # a new pool on demand
    loader.close()


# -- save / resume: one harness, run over every kind of loader ---------------------------------------------------
def _run(make: Callable[[], Loader], epochs: int) -> list[np.ndarray]:
    loader = make()
    return [np.asarray(b[1] if isinstance(b, tuple) else b) for _ in range(epochs) for b in loader]


def assert_resumes(make: Callable[[], Loader], *, epochs: int = 3) -> None:
    """Stopping after any delivered batch and resuming in a fresh loader gives exactly the rest of the run."""
    reference = _run(make, epochs)
    per_epoch = len(make())
    stops = sorted({0, 1, per_epoch - 1, per_epoch, per_epoch + 1, len(reference) - 1})
    for stop in stops:
        loader = make()
        it: Iterator[Any] = iter(loader)
        got: list[np.ndarray] = []
        for _ in range(stop):
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)
                batch = next(it)
            got.append(np.asarray(batch[1] if isinstance(batch, tuple) else batch))
        state = json.loads(json.dumps(loader.get_state()))  # must survive JSON
        del it
        resumed = make()
        resumed.set_state(state)
        remaining = len(reference) - stop
        epochs_left = -(-remaining // per_epoch) + 1
        rest = [np.asarray(b[1] if isinstance(b, tuple) else b) for _ in range(epochs_left) for b in resumed]
        combined = got + rest[:remaining]
        assert len(combined) == len(reference), stop
        for a, b in zip(combined, reference, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shuffle": False},
        {"shuffle": True, "seed": 11},
        {"shuffle": "block", "seed": 11, "block_rows": 32, "window_blocks": 3},
        {"shuffle": True, "seed": 5, "shard": (1, 3), "drop_remainder": True},
    ],
)
def test_save_and_resume(arrays: dict[str, Any], kwargs: dict[str, Any]) -> None:
    p = arrays["paths"]
    assert_resumes(lambda: Loader((p["x"], p["y"]), 200, **kwargs))


def test_resume_adopts_the_saved_seed(arrays: dict[str, Any]) -> None:
    a = Loader(arrays["paths"]["y"], 100, shuffle=True)
    next(iter(a))
    b = Loader(arrays["paths"]["y"], 100, shuffle=True)
    b.set_state(a.get_state())
    assert b.seed == a.seed
    np.testing.assert_array_equal(next(iter(b)), a.read_batch(0, 1))


def test_state_from_another_configuration_is_refused(arrays: dict[str, Any]) -> None:
    state = Loader(arrays["paths"]["y"], 100).get_state()
    with pytest.raises(ConfigError, match="batch_size=100 but this loader has batch_size=50"):
        Loader(arrays["paths"]["y"], 50).set_state(state)
    with pytest.raises(ConfigError, match="not an npyfeed Loader state"):
        Loader(arrays["paths"]["y"], 100).set_state({"epoch": 1})
    with pytest.raises(ConfigError, match=r"saved state.s position must be an int in \[0, 1003\], got 1004"):
        Loader(arrays["paths"]["y"], 100).set_state({**state, "position": N + 1})


@pytest.mark.parametrize("shuffle", [False, True, "block"])
def test_a_process_forked_after_an_epoch_reads_with_read_threads_of_its_own(tmp_path: Path, shuffle: Any) -> None:
    """A child forked after its parent iterated (a DataLoader worker, a multiprocessing pool) inherits the Loader's
    read pool but not its threads: it starts its own instead of waiting on them forever."""
    x = np.arange(60_000, dtype=np.int32).reshape(20_000, 3)
    np.save(tmp_path / "x.npy", x)
    loader = Loader(tmp_path / "x.npy", batch_size=300, shuffle=shuffle, seed=5)
    list(loader)  # epoch 0 in the parent: its read pool has threads now
    status, got = epoch_in_child("fork", loader)
    assert status == "ok", got
    assert np.array_equal(got, np.concatenate([loader.read_batch(1, i) for i in range(len(loader))]))
    assert np.array_equal(np.sort(got, axis=0), x)
