"""``to_tf_dataset``: specs, cardinality, epochs equal to the Loader's, model.fit, checkpoint resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

import npyfeed  # noqa: E402
from npyfeed.adapters.tf_data import to_tf_dataset  # noqa: E402
from npyfeed.errors import ConfigError  # noqa: E402

N = 103  # rows: 11 batches of 10, the last one partial
ROW = (4,)


def ids_of(batch: object) -> list[int]:
    """Row ids of one batch (tuple source ``(x, ids)``), from TF or NumPy."""
    ids = batch[1]  # type: ignore[index]
    return np.asarray(ids).tolist()


def loader_epoch(loader: npyfeed.Loader, epoch: int) -> list[list[int]]:
    return [ids_of(loader.read_batch(epoch, i)) for i in range(len(loader))]


def dataset_epoch(ds: Any) -> list[list[int]]:
    return [ids_of(b) for b in ds]


# -- spec and cardinality ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("batch_size", "drop", "expected"), [(10, False, 11), (10, True, 10), (103, False, 1), (200, True, 0)]
)
def test_cardinality_is_len(files: dict[str, str], batch_size: int, drop: bool, expected: int) -> None:
    loader = npyfeed.Loader((files["x"], files["ids"]), batch_size=batch_size, drop_remainder=drop)
    ds = to_tf_dataset(loader)
    assert len(loader) == expected
    assert int(ds.cardinality()) == expected
    assert sum(1 for _ in ds) == expected


def test_element_spec_single_array(files: dict[str, str]) -> None:
    loader = npyfeed.Loader(files["x"], batch_size=10)
    ds = loader.to_tf_dataset()
    assert ds.element_spec == tf.TensorSpec((None, *ROW), tf.float32)
    first = next(iter(ds))
    np.testing.assert_array_equal(first.numpy(), loader.read_batch(0, 0))


def test_element_spec_tuple_with_static_batch_when_drop_remainder(files: dict[str, str]) -> None:
    loader = npyfeed.Loader((files["x"], files["ids"], files["w"]), batch_size=10, drop_remainder=True)
    spec = to_tf_dataset(loader).element_spec
    assert spec == (
        tf.TensorSpec((10, *ROW), tf.float32),
        tf.TensorSpec((10,), tf.int64),
        tf.TensorSpec((10,), tf.float32),
    )


def test_element_spec_static_batch_when_every_batch_is_full(files: dict[str, str]) -> None:
    loader = npyfeed.Loader(files["ids"], batch_size=N)
    assert to_tf_dataset(loader).element_spec == tf.TensorSpec((N,), tf.int64)


def test_element_spec_dict(files: dict[str, str]) -> None:
    loader = npyfeed.Loader({"image": files["img"], "id": files["ids"]}, batch_size=10)
    ds = to_tf_dataset(loader)
    assert ds.element_spec == {
        "image": tf.TensorSpec((None, 2, 3), tf.uint8),
        "id": tf.TensorSpec((None,), tf.int64),
    }
    batch = next(iter(ds))
    expected = loader.read_batch(0, 0)
    for key in ("image", "id"):
        np.testing.assert_array_equal(batch[key].numpy(), expected[key])


def test_big_endian_file_becomes_native(files: dict[str, str]) -> None:
    loader = npyfeed.Loader((files["big"], files["ids"]), batch_size=10, shuffle=True, seed=3)
    ds = to_tf_dataset(loader)
    assert ds.element_spec[0].dtype == tf.float32
    for i, (x, ids) in enumerate(ds):
        np.testing.assert_array_equal(x.numpy(), np.load(files["x"])[ids.numpy()])
        np.testing.assert_array_equal(x.numpy(), loader.read_batch(0, i)[0].astype("<f4"))


def test_spec_follows_a_dtype_changing_transform(files: dict[str, str]) -> None:
    def to_float(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return batch["image"].astype(np.float32) / 255, batch["id"]

    loader = npyfeed.Loader({"image": files["img"], "id": files["ids"]}, batch_size=10, transform=to_float)
    ds = to_tf_dataset(loader)
    assert ds.element_spec == (tf.TensorSpec((None, 2, 3), tf.float32), tf.TensorSpec((None,), tf.int64))
    x, ids = next(iter(ds))
    np.testing.assert_allclose(x.numpy(), np.load(files["img"])[ids.numpy()] / 255, rtol=1e-6)


def test_transform_spec_static_batch_and_list_output(files: dict[str, str]) -> None:
    loader = npyfeed.Loader(
        files["img"], batch_size=10, drop_remainder=True, transform=lambda b: [b.reshape(len(b), 6).astype(np.float16)]
    )
    assert to_tf_dataset(loader).element_spec == (tf.TensorSpec((10, 6), tf.float16),)


def test_output_signature_overrides_the_probe(files: dict[str, str]) -> None:
    calls = []

    def ragged(batch: np.ndarray) -> np.ndarray:
        calls.append(1)
        return batch[:, : 1 + len(calls) % 3]  # the row length changes from batch to batch

    loader = npyfeed.Loader(files["x"], batch_size=10, transform=ragged)
    with pytest.raises(tf.errors.InvalidArgumentError, match="element spec says"):
        list(to_tf_dataset(loader))  # the probed spec has a fixed row length
    calls.clear()
    ds = to_tf_dataset(loader, output_signature=tf.TensorSpec((None, None), tf.float32))
    assert not calls  # no probe
    assert sorted({b.shape[1] for b in ds}) == [1, 2, 3]


def test_transform_dtype_mismatch_is_reported(files: dict[str, str]) -> None:
    loader = npyfeed.Loader(files["x"], batch_size=10, transform=lambda b: b.astype(np.float64))
    ds = to_tf_dataset(loader, output_signature=tf.TensorSpec((None, 4), tf.float32))
    mismatch = r"batch 0 of epoch 0: field \(the batch\) has dtype float64"
    with pytest.raises(tf.errors.InvalidArgumentError, match=mismatch):
        next(iter(ds))


def test_structured_and_datetime_dtypes_are_refused(tmp_path: Path) -> None:
    structured = tmp_path / "s.npy"
    np.save(structured, np.zeros(4, dtype=[("a", "<f4"), ("b", "<i4")]))
    with pytest.raises(ConfigError, match="structured dtype"):
        to_tf_dataset(npyfeed.Loader(str(structured), batch_size=2))
    # ... unless a transform splits the fields
    split = npyfeed.Loader(str(structured), batch_size=2, transform=lambda b: (b["a"], b["b"]))
    assert to_tf_dataset(split).element_spec == (tf.TensorSpec((2,), tf.float32), tf.TensorSpec((2,), tf.int32))
    dates = tmp_path / "d.npy"
    np.save(dates, np.arange(4).astype("datetime64[s]"))
    with pytest.raises(ConfigError, match=r"d\.npy: dtype datetime64\[s\] has no TensorFlow equivalent"):
        to_tf_dataset(npyfeed.Loader(str(dates), batch_size=2))


@pytest.mark.parametrize("dtype", ["<f2", "<c8", "|b1", "<u2", "<u4", "<u8", "|i1", "|S3", ">i8"])
def test_other_dtypes_round_trip(tmp_path: Path, dtype: str) -> None:
    path = tmp_path / "a.npy"
    data = np.arange(12).reshape(6, 2).astype(dtype)
    np.save(path, data)
    ds = to_tf_dataset(npyfeed.Loader(str(path), batch_size=4))
    got = np.concatenate([b.numpy() for b in ds])
    np.testing.assert_array_equal(got, data)


def test_empty_loader_with_transform_needs_a_signature(files: dict[str, str]) -> None:
    loader = npyfeed.Loader(files["x"], batch_size=200, drop_remainder=True, transform=lambda b: b)
    with pytest.raises(ConfigError, match="output_signature"):
        to_tf_dataset(loader)
    ds = to_tf_dataset(loader, output_signature=tf.TensorSpec((200, 4), tf.float32))
    assert int(ds.cardinality()) == 0


def test_bad_arguments(files: dict[str, str]) -> None:
    loader = npyfeed.Loader(files["x"], batch_size=10)
    for kwargs in ({"start_epoch": -1}, {"threads": 0}, {"num_parallel_calls": 1.5}, {"prefetch": True}):
        with pytest.raises(ConfigError):
            to_tf_dataset(loader, **kwargs)
    with pytest.raises(ConfigError, match="TensorSpec"):
        to_tf_dataset(loader, output_signature=(tf.float32,))


# -- epochs --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shuffle", [False, True, "block"])
def test_each_iterator_is_the_next_epoch_like_the_loader(files: dict[str, str], shuffle: Any) -> None:
    geometry = {"block_rows": 8} if shuffle == "block" else {}
    make = lambda: npyfeed.Loader((files["x"], files["ids"]), batch_size=10, shuffle=shuffle, seed=11, **geometry)  # noqa: E731
    python = make()
    expected = [[ids_of(b) for b in python] for _ in range(3)]
    loader = make()
    ds = to_tf_dataset(loader)
    got = [dataset_epoch(ds) for _ in range(3)]
    assert got == expected
    assert got == [loader_epoch(loader, e) for e in range(3)]
    if shuffle:
        assert got[0] != got[1] != got[2]
    for epoch in got:
        assert sorted(i for b in epoch for i in b) == list(range(N))
    assert loader.epoch == 0  # the dataset keeps its own count


def test_repeat_runs_consecutive_epochs_and_start_epoch(files: dict[str, str]) -> None:
    loader = npyfeed.Loader((files["x"], files["ids"]), batch_size=10, shuffle=True, seed=5, epoch=2)
    ds = to_tf_dataset(loader)
    flat = [ids_of(b) for b in ds.repeat(3)]
    assert flat == loader_epoch(loader, 2) + loader_epoch(loader, 3) + loader_epoch(loader, 4)
    assert dataset_epoch(to_tf_dataset(loader, start_epoch=7)) == loader_epoch(loader, 7)


def test_an_unused_iterator_consumes_no_epoch(files: dict[str, str]) -> None:
    loader = npyfeed.Loader((files["x"], files["ids"]), batch_size=10, shuffle=True, seed=5)
    ds = to_tf_dataset(loader)
    unused = iter(ds)
    time.sleep(0.2)  # give prefetch threads a chance to (wrongly) start
    del unused
    assert dataset_epoch(ds) == loader_epoch(loader, 0)


def test_reads_run_in_parallel(files: dict[str, str]) -> None:
    lock, active, peak, threads = threading.Lock(), [0], [0], set()

    def slow(batch: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            threads.add(threading.get_ident())
        time.sleep(0.02)  # stands in for a read waiting on storage (the GIL is free meanwhile)
        with lock:
            active[0] -= 1
        return batch

    loader = npyfeed.Loader((files["x"], files["ids"]), batch_size=10, transform=slow)
    ds = to_tf_dataset(loader, num_parallel_calls=4, threads=4)
    assert dataset_epoch(ds) == loader_epoch(loader, 0)  # batch 0 was also read once to probe the spec
    assert peak[0] >= 2
    assert len(threads) >= 2


def test_read_errors_surface_with_the_batch(files: dict[str, str]) -> None:
    def fail(batch: np.ndarray) -> np.ndarray:
        if batch[0, 0] >= 500:
            raise OSError("disk on fire")
        return batch

    loader = npyfeed.Loader(files["x"], batch_size=10, transform=fail)
    got = []
    with pytest.raises(tf.errors.OpError, match="disk on fire") as raised:
        for batch in to_tf_dataset(loader, start_epoch=2):
            got.append(batch)
    assert len(got) == 5  # every good batch first
    assert isinstance(raised.value, tf.errors.UnknownError)  # what tf.data makes of an OSError
    assert f"npyfeed: reading batch 5 of epoch 2 ({files['x']}) failed in the transform" in str(raised.value)


@pytest.mark.parametrize("chunked", [False, True])
def test_stop_iteration_from_a_read_is_an_error_not_the_end_of_the_epoch(
    files: dict[str, str], monkeypatch: pytest.MonkeyPatch, chunked: bool
) -> None:
    def stop(batch: np.ndarray) -> np.ndarray:
        if batch[0, 0] >= 500:
            raise StopIteration  # tf.data would take it for the end of the epoch, and drop the rest silently
        return batch

    loader = npyfeed.Loader(files["x"], batch_size=10, transform=None if chunked else stop)
    if chunked:
        real = loader.read_batches
        monkeypatch.setattr(loader, "read_batches", lambda e, a, b, **kw: [stop(x) for x in real(e, a, b, **kw)])
    with pytest.raises(tf.errors.OpError, match=r"of epoch 0 \(.*x\.npy\) failed: StopIteration"):
        list(to_tf_dataset(loader))


def test_import_npyfeed_does_not_import_tensorflow() -> None:
    code = "import sys, npyfeed; assert not {'tensorflow', 'keras', 'torch'} & {m.split('.')[0] for m in sys.modules}"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- model.fit -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_model_fit_sees_every_row_once_per_epoch_in_the_loaders_order(files: dict[str, str]) -> None:
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("Keras runs on another backend")
    loader = npyfeed.Loader({"x": files["x"], "id": files["ids"]}, batch_size=10, shuffle=True, seed=9)
    ds = to_tf_dataset(loader).map(lambda b: ({"x": b["x"], "id": b["id"]}, tf.reduce_sum(b["x"], axis=1)))

    class Seen(keras.layers.Layer):  # type: ignore[name-defined]
        """Counts, per row id, how often a training step saw it; records the ids of each step in order."""

        def build(self, shape: object) -> None:
            self.counts = self.add_weight(shape=(N,), initializer="zeros", trainable=False, dtype="int32")

        def call(self, ids: Any, training: bool | None = None) -> Any:
            if training:
                self.counts.assign_add(tf.math.bincount(tf.cast(ids, tf.int32), minlength=N, maxlength=N))
            return tf.zeros_like(ids, tf.float32)[:, None]

    x_in, id_in = keras.Input(ROW, name="x"), keras.Input((), name="id", dtype="int64")
    seen = Seen()
    model = keras.Model({"x": x_in, "id": id_in}, keras.layers.Dense(1)(x_in) + seen(id_in))
    model.compile("sgd", "mse")
    per_epoch, steps = [], []

    class Check(keras.callbacks.Callback):  # type: ignore[name-defined]
        def on_train_begin(self, logs: object = None) -> None:
            steps.append(self.params["steps"])

        def on_epoch_end(self, epoch: int, logs: object = None) -> None:
            per_epoch.append(seen.counts.numpy().copy())
            seen.counts.assign(tf.zeros_like(seen.counts))

    model.fit(ds, epochs=3, shuffle=False, verbose=0, callbacks=[Check()])
    assert steps == [len(loader)]  # known steps: Keras shows N/N
    assert len(per_epoch) == 3
    for counts in per_epoch:
        np.testing.assert_array_equal(counts, np.ones(N, np.int32))
    # the three fit epochs were the loader's epochs 0, 1, 2 (an extra iterator Keras makes at the end is unused):
    # the next iterator is epoch 3
    expected = [loader.read_batch(3, i)["id"].tolist() for i in range(len(loader))]
    assert [b["id"].numpy().tolist() for b, _ in ds] == expected


# -- checkpoints ---------------------------------------------------------------------------------------------------
def checkpoint_bytes(prefix: str) -> int:
    return sum(p.stat().st_size for p in Path(prefix).parent.glob(Path(prefix).name + "*"))


@pytest.mark.parametrize("consumed", [1, 4, 10, 11])
def test_checkpoint_resume_mid_epoch_in_a_fresh_dataset(files: dict[str, str], tmp_path: Path, consumed: int) -> None:
    make = lambda: npyfeed.Loader((files["wide"], files["ids"]), batch_size=10, shuffle=True, seed=21)  # noqa: E731
    loader = make()
    ds = to_tf_dataset(loader)
    dataset_epoch(ds)  # epoch 0
    it = iter(ds)  # epoch 1
    head = [ids_of(next(it)) for _ in range(consumed)]
    prefix = tf.train.Checkpoint(iterator=it).save(str(tmp_path / "ckpt"))
    tail = [ids_of(b) for b in it]
    assert head + tail == loader_epoch(loader, 1)
    assert checkpoint_bytes(prefix) < 4096  # positions only: one batch alone is 40 KiB, and many were read ahead

    fresh = to_tf_dataset(make())  # a new process would build exactly this
    restored = iter(fresh)
    tf.train.Checkpoint(iterator=restored).restore(prefix).assert_consumed()
    assert [ids_of(b) for b in restored] == tail
    assert dataset_epoch(fresh) == loader_epoch(loader, 2)  # and the next iterator is the next epoch


def test_checkpoint_at_an_epoch_boundary_with_repeat(files: dict[str, str], tmp_path: Path) -> None:
    make = lambda: npyfeed.Loader((files["x"], files["ids"]), batch_size=10, shuffle=True, seed=4)  # noqa: E731
    loader = make()
    it = iter(to_tf_dataset(loader).repeat())
    for _ in range(2 * len(loader)):  # exactly two epochs
        next(it)
    prefix = tf.train.Checkpoint(iterator=it).save(str(tmp_path / "ckpt"))
    restored = iter(to_tf_dataset(make()).repeat())
    tf.train.Checkpoint(iterator=restored).restore(prefix).assert_consumed()
    got = [ids_of(next(restored)) for _ in range(len(loader) + 1)]
    assert got == loader_epoch(loader, 2) + loader_epoch(loader, 3)[:1]


@pytest.mark.slow
def test_checkpoint_restores_in_another_process(files: dict[str, str], tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np, tensorflow as tf, npyfeed
        source = ({files["x"]!r}, {files["ids"]!r})
        loader = npyfeed.Loader(source, batch_size=10, shuffle="block", seed=8, block_rows=16)
        ds = loader.to_tf_dataset()
        it = iter(ds)
        ckpt = tf.train.Checkpoint(iterator=it)
        if sys.argv[1] == "save":
            for _ in range(3):
                next(it)
            ckpt.save({str(tmp_path / "ckpt")!r})
        else:
            ckpt.restore(tf.train.latest_checkpoint({str(tmp_path)!r})).assert_consumed()
        print(json.dumps([b[1].numpy().tolist() for b in it]))
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def run(mode: str) -> str:
        cmd = [sys.executable, "-c", script, mode]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1]

    saved, restored = json.loads(run("save")), json.loads(run("load"))
    loader = npyfeed.Loader((files["x"], files["ids"]), batch_size=10, shuffle="block", seed=8, block_rows=16)
    assert saved == restored == loader_epoch(loader, 0)[3:]


# -- chunked reads -------------------------------------------------------------------------------------------------
@pytest.fixture
def small_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loaders read 3 batches of 10 ``wide`` rows (with or without ``ids``) per call: chunks of 3 batches."""
    monkeypatch.setattr(npyfeed.loader.loader, "_READ_BYTES", 3 * 10 * (4096 + 8))


@pytest.mark.parametrize(("drop", "chunks"), [(False, [0, 1, 4, 7, 10, 11]), (True, [0, 1, 4, 7, 10])])
def test_chunks_are_a_single_first_batch_full_chunks_and_the_partial_batch(
    files: dict[str, str], small_reads: None, drop: bool, chunks: list[int]
) -> None:
    from npyfeed.adapters.tf_data import _chunk_starts

    loader = npyfeed.Loader((files["wide"], files["ids"]), batch_size=10, drop_remainder=drop)
    assert loader.batches_per_read == 3
    assert _chunk_starts(loader).tolist() == chunks
    ds = to_tf_dataset(loader)
    assert dataset_epoch(ds) == loader_epoch(loader, 0)
    assert [b[0].shape[0] for b in ds] == [10] * 10 + ([] if drop else [3])


def test_checkpoint_resume_at_every_position_with_chunked_reads(
    files: dict[str, str], tmp_path: Path, small_reads: None
) -> None:
    make = lambda: npyfeed.Loader((files["wide"], files["ids"]), batch_size=10, shuffle=True, seed=2)  # noqa: E731
    loader = make()
    epoch1, epoch2 = loader_epoch(loader, 1), loader_epoch(loader, 2)
    for consumed in range(len(loader) + 1):
        ds = to_tf_dataset(make())
        dataset_epoch(ds)  # epoch 0
        it = iter(ds)  # epoch 1
        head = [ids_of(next(it)) for _ in range(consumed)]
        prefix = tf.train.Checkpoint(iterator=it).save(str(tmp_path / f"ckpt{consumed}"))
        assert head == epoch1[:consumed]
        assert checkpoint_bytes(prefix) < 4096
        fresh = to_tf_dataset(make(), start_epoch=1 if consumed == 0 else 0)  # a run restarted at epoch 1 or 0
        restored = iter(fresh)
        tf.train.Checkpoint(iterator=restored).restore(prefix).assert_consumed()
        assert [ids_of(b) for b in restored] == epoch1[consumed:], consumed
        assert dataset_epoch(fresh) == epoch2, consumed


def test_signature_mismatch_without_transform_names_the_batches(files: dict[str, str], small_reads: None) -> None:
    loader = npyfeed.Loader(files["wide"], batch_size=10)
    ds = to_tf_dataset(loader, output_signature=tf.TensorSpec((None, 1024), tf.float64))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"batch 0 of epoch 0: field \(the batch\) has dtype"):
        next(iter(ds))
    ds = to_tf_dataset(loader, output_signature=tf.TensorSpec((None, 512), tf.float32))
    it = iter(ds)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"batch 0 of epoch 0: field \(the batch\) has shape"):
        next(it)
    ok = to_tf_dataset(loader, output_signature=tf.TensorSpec((None, None), tf.float32))
    assert [b.shape[0] for b in ok] == [10] * 10 + [3]


# -- batches that alias the Loader's buffers -----------------------------------------------------------------------
@pytest.fixture
def distinct(tmp_path: Path) -> str:
    """Random 1 KiB float32 rows (every batch differs from every other): batches of 10 rows are 10 KiB, a multiple
    of 64 bytes, so TensorFlow slices them out of their chunk as views."""
    path = str(tmp_path / "distinct.npy")
    np.save(path, np.random.default_rng(5).standard_normal((N, 256), dtype=np.float32))
    return path


def read_batches_per_call(monkeypatch: pytest.MonkeyPatch, shuffle: Any, batches: int) -> None:
    """Loaders of 10-row batches of ``distinct`` read ``batches`` batches per call (a global shuffle counts a 1 KiB
    row as the pages it may span, 1 KiB + 4 KiB - 1)."""
    monkeypatch.setattr(npyfeed.loader.loader, "_READ_BYTES", batches * 10 * (1024 + 4095 if shuffle is True else 1024))


@pytest.mark.parametrize("per_read", [1, 3])
@pytest.mark.parametrize("shuffle", [False, True, "block"])
def test_batches_held_across_epochs_never_change(
    distinct: str, monkeypatch: pytest.MonkeyPatch, shuffle: Any, per_read: int
) -> None:
    """Batches alias the Loader's recycled buffers (one read per batch), or come from chunks that did: held, they
    must keep their bytes while later reads and later epochs recycle the buffers of the batches let go."""
    read_batches_per_call(monkeypatch, shuffle, per_read)
    geometry = {"block_rows": 16} if shuffle == "block" else {}
    loader = npyfeed.Loader(distinct, batch_size=10, shuffle=shuffle, seed=9, **geometry)
    assert loader.batches_per_read == per_read
    ds = to_tf_dataset(loader)
    held: list[tuple[int, int, Any]] = []
    for epoch in range(4):
        for index, batch in enumerate(ds):
            if epoch % 2 == 0 or index % 4 == 0:  # odd epochs let most batches go: their buffers are recycled
                held.append((epoch, index, batch))
        del batch  # the loop variable must not keep the last dropped batch alive
    assert loader.read_path.buffers.reused > 0  # buffers were recycled while held batches (or chunks) were alive
    x = np.load(distinct)
    for epoch, index, batch in held:
        np.testing.assert_array_equal(batch.numpy(), x[loader.batch_rows(epoch, index)], f"{epoch}/{index}")
    assert len(held) == 2 * 11 + 2 * 3


def test_batches_and_chunks_reach_tensorflow_without_a_copy(distinct: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read's output is the Loader's 64-byte-aligned buffer, which numpy_function wraps without a copy: one
    batch as it is, and the batches of a chunk stacked as a view of their buffer (a copy costs as much as the read
    itself on small rows)."""
    from npyfeed.adapters.tf_reads import stacked as _stacked

    read_batches_per_call(monkeypatch, False, 3)
    batches = npyfeed.Loader(distinct, batch_size=10).read_batches(0, 1, 4)
    chunk = _stacked(batches)
    assert chunk.shape == (3, 10, 256)
    assert chunk.__array_interface__["data"][0] == batches[0].__array_interface__["data"][0]
    assert chunk.__array_interface__["data"][0] % 64 == 0
    np.testing.assert_array_equal(chunk, np.stack(batches))
    assert chunk.base is batches[0].base  # the buffer pool sees its buffer referenced

    read_batches_per_call(monkeypatch, False, 1)
    loader = npyfeed.Loader(distinct, batch_size=10)
    address = lambda a: np.int64(a.__array_interface__["data"][0])  # noqa: E731
    ds = to_tf_dataset(loader).map(lambda b: tf.numpy_function(address, [b], tf.int64))
    addresses = list(ds.as_numpy_iterator())
    owners = [(o.ctypes.data, o.nbytes) for pairs in loader.read_path.buffers._free.values() for o, _ in pairs]
    assert [any(start <= a < start + size for start, size in owners) for a in addresses] == [True] * 11


def test_global_shuffle_of_small_rows_reads_several_batches_per_call(
    distinct: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Loader's plan reads a global shuffle of 1 KiB rows one batch at a time (it counts the pages a random row
    may touch); the tf.data pipeline reads several per call (tf.data's per-element cost would exceed the gather's),
    and still gives exactly the loader's batches, epoch after epoch."""
    from npyfeed.adapters.tf_data import _batches_per_call

    read_batches_per_call(monkeypatch, True, 1)
    loader = npyfeed.Loader(distinct, batch_size=10, shuffle=True, seed=4)
    assert loader.batches_per_read == 1
    assert _batches_per_call(loader) == 16
    calls: list[tuple[int, int, int]] = []  # (epoch, first batch, batches): parallel calls end in any order
    read = loader.read_batches

    def counted(epoch: int, start: int, stop: int, **kwargs: Any) -> Any:
        calls.append((int(epoch), int(start), int(stop - start)))
        return read(epoch, start, stop, **kwargs)

    monkeypatch.setattr(loader, "read_batches", counted)
    ds = to_tf_dataset(loader)
    x = np.load(distinct)
    for epoch in range(2):
        batches = [b.numpy() for b in ds]
        assert len(batches) == len(loader)
        for index, batch in enumerate(batches):
            np.testing.assert_array_equal(batch, x[loader.batch_rows(epoch, index)], f"{epoch}/{index}")
    # per epoch: the first batch alone, the 9 other full ones together, the partial one
    assert sorted(calls) == [(e, start, n) for e in range(2) for start, n in [(0, 1), (1, 9), (10, 1)]]


def read_parallelism(ds: Any) -> int:
    """The ``num_parallel_calls`` of the pipeline's read map, from the dataset's graph (-1: AUTOTUNE)."""
    graph = tf.compat.v1.GraphDef()
    ignore = 1  # ExternalStatePolicy.IGNORE: the numpy_function reads are external state
    graph.ParseFromString(
        tf.raw_ops.DatasetToGraphV2(input_dataset=ds._variant_tensor, external_state_policy=ignore).numpy()
    )
    nodes = {node.name: node for node in graph.node}
    (read,) = [node for node in graph.node if node.op == "ParallelMapDatasetV2"]
    const = nodes[read.input[-1].split(":")[0]]  # inputs: the dataset, captured tensors, num_parallel_calls
    return int(tf.make_ndarray(const.attr["value"].tensor))


@pytest.mark.parametrize(("cores", "transform", "kwargs", "expected"), [
    (2, None, {}, 1),  # chunks on 2 cores: one read at a time, the other core is the training step's
    (1, None, {}, 1),
    (4, None, {}, -1),  # more cores: tf.data's autotuning
    (2, None, {"threads": 4}, -1),  # a private pool keeps autotuning
    (2, None, {"num_parallel_calls": 3}, 3),  # given: kept
    (2, lambda b: b, {}, -1),  # one batch per read (a transform): autotuning
])  # fmt: skip
def test_reads_at_once_by_default(
    files: dict[str, str], monkeypatch: pytest.MonkeyPatch, cores: int, transform: Any, kwargs: Any, expected: int
) -> None:
    import npyfeed.adapters.tf_data as tf_data

    monkeypatch.setattr(tf_data, "cpu_count", lambda: cores)
    loader = npyfeed.Loader((files["x"], files["ids"]), batch_size=10, shuffle=True, seed=1, transform=transform)
    ds = to_tf_dataset(loader, **kwargs)
    assert read_parallelism(ds) == expected
    assert dataset_epoch(ds) == loader_epoch(loader, 0)
