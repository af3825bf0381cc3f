"""``to_tf_dataset(native=True)``: TF ops only, byte-identical to ``loader.read_batch``; tf.data service."""

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
from servers import MotoS3, environment  # noqa: E402

N = 303


def flat(batch: Any) -> list[np.ndarray]:
    """Leaves in tf.nest order, as native-endian NumPy arrays (what TF holds)."""
    out = []
    for leaf in tf.nest.flatten(batch):
        a = np.asarray(leaf)
        out.append(a.astype(a.dtype.newbyteorder("=")) if a.dtype.byteorder not in "=|" else a)
    return out


def assert_identical(loader: npyfeed.Loader, ds: Any, epochs: list[int]) -> int:
    """Every batch of ``ds`` is ``loader.read_batch(e, k)`` for epochs ``epochs`` in order, byte for byte."""
    expected = [(e, k) for e in epochs for k in range(len(loader))]
    got = list(ds)
    assert len(got) == len(expected)
    for (e, k), batch in zip(expected, got, strict=True):
        for a, b in zip(flat(batch), flat(loader.read_batch(e, k)), strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape, (e, k)
            assert a.tobytes() == b.tobytes(), (e, k)
    return len(got)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("native")
    rng = np.random.default_rng(0)
    paths: dict[str, Any] = {}
    for dtype in ("<f4", ">f4", ">i8", "<u2", "|u1", "|b1", "<f2", "<c8", ">f8", "|i1"):
        values = rng.integers(0, 100, (N, 3, 2)).astype(dtype)
        paths[dtype] = str(d / f"x{dtype.replace('<', 'l').replace('>', 'b').replace('|', 'n')}.npy")
        np.save(paths[dtype], values)
    np.save(d / "ids.npy", np.arange(N, dtype=np.int64))
    paths["ids"] = str(d / "ids.npy")
    for i, (lo, hi) in enumerate(((0, 100), (100, 101), (101, N))):  # shards of one array, one with a single row
        np.save(d / f"part{i}.npy", np.arange(lo, hi, dtype=">i4"))
    paths["parts"] = [str(d / f"part{i}.npy") for i in range(3)]
    return paths


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("shuffle", [False, "block"])
@pytest.mark.parametrize(("batch_size", "drop"), [(32, False), (5, False), (100, True), (N, False), (2000, False)])
def test_native_batches_are_the_numpy_paths(
    data: dict[str, Any], seed: int, shuffle: Any, batch_size: int, drop: bool
) -> None:
    loader = npyfeed.Loader(
        (data["<f4"], data["ids"]),
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_remainder=drop,
        **({"block_rows": 13, "window_blocks": 4} if shuffle == "block" else {}),
    )
    ds = loader.to_tf_dataset(native=True, epochs=2, start_epoch=3)
    assert ds.element_spec == loader.to_tf_dataset().element_spec
    assert_identical(loader, ds, [3, 4])


@pytest.mark.parametrize("dtype", ["<f4", ">f4", ">i8", "<u2", "|u1", "|b1", "<f2", "<c8", ">f8", "|i1"])
def test_native_dtypes_and_byte_orders(data: dict[str, Any], dtype: str) -> None:
    loader = npyfeed.Loader({"x": data[dtype], "id": data["ids"]}, batch_size=64, shuffle="block", seed=3)
    ds = loader.to_tf_dataset(native=True)
    assert ds.element_spec["x"].dtype == tf.as_dtype(np.dtype(dtype).newbyteorder("="))
    assert_identical(loader, ds, [0])


@pytest.mark.slow
@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("shuffle", [False, "block"])
def test_native_shards_match_the_loaders_layout(data: dict[str, Any], count: int, shuffle: Any) -> None:
    rows = []
    geometry = {"block_rows": 10} if shuffle == "block" else {}
    for index in range(count):
        loader = npyfeed.Loader(
            (data["parts"], data["ids"]), batch_size=16, shuffle=shuffle, seed=1, shard=(index, count), **geometry
        )
        assert_identical(loader, loader.to_tf_dataset(native=True, start_epoch=1), [1])
        rows += [int(i) for _, ids in loader.to_tf_dataset(native=True, start_epoch=1) for i in ids.numpy()]
    assert len(rows) == len(set(rows))  # shards are disjoint
    assert len(rows) >= N - count


def test_native_dataset_has_no_python_in_its_graph(data: dict[str, Any]) -> None:
    loader = npyfeed.Loader((data["<f4"], data["ids"]), batch_size=50, shuffle="block", seed=2)
    ds = loader.to_tf_dataset(native=True, epochs=None)
    serialized = ds._as_serialized_graph().numpy()  # what tf.data service ships to its workers
    assert b"PyFunc" not in serialized and b"EagerPyFunc" not in serialized
    taken = list(ds.take(len(loader) + 1))
    assert [int(x) for x in taken[-1][1].numpy()] == loader.read_batch(1, 0)[1].tolist()


def test_native_refusals(data: dict[str, Any], tmp_path: Path) -> None:
    base = (data["<f4"], data["ids"])
    with pytest.raises(ConfigError, match="Python transform"):
        npyfeed.Loader(base, batch_size=8, transform=lambda b: b).to_tf_dataset(native=True)
    with pytest.raises(ConfigError, match="shuffle='block'"):
        npyfeed.Loader(base, batch_size=8, shuffle=True).to_tf_dataset(native=True)
    fortran = tmp_path / "f.npy"
    np.save(fortran, np.asfortranarray(np.zeros((10, 3), np.float32)))
    with pytest.raises(ConfigError, match="Fortran"):
        npyfeed.Loader(str(fortran), batch_size=4).to_tf_dataset(native=True)
    with pytest.raises(ConfigError, match="epochs"):
        npyfeed.Loader(base, batch_size=8).to_tf_dataset(native=True, epochs=0)
    with pytest.raises(ConfigError, match="native=True"):
        npyfeed.Loader(base, batch_size=8).to_tf_dataset(epochs=3)


@pytest.mark.parametrize("shuffle", [False, "block"])
@pytest.mark.parametrize("change", ["shrunk", "grown"])
def test_native_resized_file_is_an_error_not_a_short_batch(tmp_path: Path, shuffle: Any, change: str) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.arange(100, dtype=np.int64))
    geometry = {"block_rows": 8, "window_blocks": 2} if shuffle == "block" else {}
    loader = npyfeed.Loader(str(path), batch_size=30, shuffle=shuffle, **geometry)
    ds = loader.to_tf_dataset(native=True)
    if change == "shrunk":
        os.truncate(path, path.stat().st_size - 8 * 15)
    else:
        with open(path, "ab") as f:
            f.write(np.arange(100, 140, dtype=np.int64).tobytes())
    with pytest.raises(tf.errors.OpError):
        list(ds)


@pytest.mark.parametrize(("shuffle", "pass_bytes"), [(False, 1), ("block", 1), ("block", 432)])
@pytest.mark.parametrize("count", [1, 2])
def test_native_small_reads_across_files(
    data: dict[str, Any], monkeypatch: pytest.MonkeyPatch, shuffle: Any, count: int, pass_bytes: int
) -> None:
    """Small scan records (3 rows), 3 segments; block passes of one window (``pass_bytes`` 1) or two (432 bytes:
    two windows of 18 rows of 12 bytes), over shards: every record, segment, pass and file boundary, and the
    tail."""
    import npyfeed.adapters.tf_native as native
    import npyfeed.adapters.tf_ops.reads as reads

    monkeypatch.setattr(reads, "_SCAN_BYTES", 12)
    monkeypatch.setattr(native, "_SEGMENTS", 3)
    monkeypatch.setattr(native, "_PASS_BYTES", pass_bytes)
    for index in range(count):
        loader = npyfeed.Loader(
            (data["parts"], data["ids"]),
            batch_size=7,
            shuffle=shuffle,
            seed=5,
            shard=(index, count),
            **({"block_rows": 6, "window_blocks": 3} if shuffle == "block" else {}),
        )
        assert_identical(loader, loader.to_tf_dataset(native=True, epochs=2), [0, 1])


def test_native_s3_needs_tensorflow_io(moto_server: MotoS3, tmp_path: Path) -> None:
    """An s3:// file: a ConfigError naming the URL and tensorflow-io when TF has no s3 file system, else it builds."""
    pytest.importorskip("obstore")
    body = tmp_path / "x.npy"
    np.save(body, np.arange(40, dtype=np.int64))
    with environment(moto_server.env):
        s3 = moto_server
        s3.client().create_bucket(Bucket="npyfeed-native")
        s3.client().put_object(Bucket="npyfeed-native", Key="x.npy", Body=body.read_bytes())
        loader = npyfeed.Loader("s3://npyfeed-native/x.npy", batch_size=8)
        assert loader.read_batch(0, 0).tolist() == list(range(8))  # npyfeed itself reads it
        if "s3" in tf.io.gfile.get_registered_schemes():  # tensorflow_io imported: TF's own S3 reads it
            loader.to_tf_dataset(native=True)
        else:
            with pytest.raises(ConfigError, match=r"s3://npyfeed-native/x\.npy.*tensorflow_io.*native=False"):
                loader.to_tf_dataset(native=True)
