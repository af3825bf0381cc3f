"""``to_tf_dataset(views=True)``: zero-copy views of files that never change, byte-equal to the copies, refused
where batches could not be views; and the default never hands TensorFlow a view of a file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

import npyfeed  # noqa: E402
from npyfeed.adapters import tf_data  # noqa: E402
from npyfeed.errors import ConfigError  # noqa: E402

N = 103  # rows of the shared files: batches of 10, the last one partial


@pytest.fixture
def large(tmp_path: Path) -> tuple[str, str]:
    """1 MiB rows (float32, row i filled with i) and their int64 ids: a batch of 4 is one tf.data element."""
    rows = 10
    x, ids = str(tmp_path / "large.npy"), str(tmp_path / "large_ids.npy")
    np.save(x, np.repeat(np.arange(rows, dtype=np.float32)[:, None], 1 << 18, axis=1))
    np.save(ids, np.arange(rows, dtype=np.int64))
    return x, ids


def _epoch(ds: object) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(a.numpy(), b.numpy()) for a, b in ds]  # type: ignore[attr-defined]


def _check_equal(loader: npyfeed.Loader, got: list[tuple[np.ndarray, np.ndarray]]) -> None:
    assert len(got) == len(loader)
    for i, (x, ids) in enumerate(got):
        want_x, want_ids = loader.read_batch(0, i)
        np.testing.assert_array_equal(x, want_x)
        np.testing.assert_array_equal(ids, want_ids)


@pytest.mark.parametrize("kind", ["chunks", "one batch per element"])
def test_views_equal_the_copies(files: dict[str, str], large: tuple[str, str], kind: str) -> None:
    source, batch_size = ((files["x"], files["ids"]), 10) if kind == "chunks" else (large, 4)
    loader = npyfeed.Loader(source, batch_size=batch_size)
    assert (tf_data._batches_per_call(loader) > 1) == (kind == "chunks")  # both read paths are covered
    viewed = loader.to_tf_dataset(views=True)
    assert viewed.element_spec == loader.to_tf_dataset().element_spec
    got = _epoch(viewed)
    _check_equal(loader, got)
    _check_equal(loader, _epoch(viewed))  # the next iterator is epoch 1: in file order, the same batches


def test_views_share_the_mapping_and_the_default_never_does(files: dict[str, str], large: tuple[str, str]) -> None:
    for source, batch_size, method in (((files["x"], files["ids"]), 10, "chunk"), (large, 4, "batch")):
        loader = npyfeed.Loader(source, batch_size=batch_size)
        mapping = loader.source.arrays[0].view()
        for views in (True, False):
            reader = loader.to_tf_dataset(views=views)._npyfeed_reader
            out = getattr(reader, method)(np.int64(0), np.int64(1))
            assert np.shares_memory(out[0], mapping) is views, (method, views)


def test_a_shards_batches_are_copied_and_exact(files: dict[str, str]) -> None:
    loader = npyfeed.Loader((files["x"], files["ids"]), batch_size=10, shard=npyfeed.Shard(1, 2))
    _check_equal(loader, _epoch(loader.to_tf_dataset(views=True)))


def test_views_refused_where_batches_are_not_the_files(files: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shuffle=False"):
        npyfeed.Loader(files["x"], batch_size=10, shuffle=True).to_tf_dataset(views=True)
    with pytest.raises(ConfigError, match="transform"):
        npyfeed.Loader(files["x"], batch_size=10, transform=lambda b: b).to_tf_dataset(views=True)
    with pytest.raises(ConfigError, match="views"):
        npyfeed.Loader(files["x"], batch_size=10).to_tf_dataset(views=True, native=True)
    fortran = str(tmp_path / "fortran.npy")
    np.save(fortran, np.asfortranarray(np.ones((20, 3), np.float32)))
    with pytest.raises(ConfigError, match="Fortran"):
        npyfeed.Loader(fortran, batch_size=10).to_tf_dataset(views=True)
    with pytest.raises(ConfigError, match="views"):
        npyfeed.Loader(files["x"], batch_size=10).to_tf_dataset(views=1)  # type: ignore[arg-type]
