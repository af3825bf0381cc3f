"""``to_torch``: an IterableDataset for ``DataLoader(batch_size=None)``, epochs equal to the Loader's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import npyfeed  # noqa: E402
from npyfeed.adapters.torch_dataset import to_torch  # noqa: E402
from npyfeed.errors import ConfigError  # noqa: E402

N = 53  # 6 batches of 10, the last one partial


def loader_epoch(loader: npyfeed.Loader, epoch: int) -> list[list[int]]:
    return [loader.read_batch(epoch, i)[1].tolist() for i in range(len(loader))]


def data_epoch(data: Any) -> list[list[int]]:
    return [batch[1].tolist() for batch in data]


def make(files: dict[str, str], **kwargs: Any) -> npyfeed.Loader:
    return npyfeed.Loader((files["big"], files["ids"]), batch_size=10, shuffle=True, seed=3, **kwargs)


def test_each_iteration_is_the_next_epoch(files: dict[str, str]) -> None:
    loader = make(files)
    data = torch.utils.data.DataLoader(to_torch(loader), batch_size=None)
    assert len(data) == len(loader)
    assert [data_epoch(data) for _ in range(3)] == [loader_epoch(loader, e) for e in range(3)]
    assert loader.epoch == 3  # one cursor: the dataset moves the loader's
    assert loader.get_state()["epoch"] == 3


def test_batches_are_tensors_matching_the_file(files: dict[str, str]) -> None:
    loader = make(files)
    x_all = np.load(files["big"])
    for x, ids in torch.utils.data.DataLoader(to_torch(loader), batch_size=None):
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
        assert ids.dtype == torch.int64
        np.testing.assert_array_equal(x.numpy(), x_all[ids.numpy()])


def test_structures_and_leaves_torch_cannot_hold(files: dict[str, str]) -> None:
    loader = npyfeed.Loader({"ids": files["ids"], "name": files["names"]}, batch_size=10)
    batch = next(iter(torch.utils.data.DataLoader(to_torch(loader), batch_size=None)))
    assert set(batch) == {"ids", "name"}
    assert isinstance(batch["ids"], torch.Tensor)
    assert isinstance(batch["name"], np.ndarray) and batch["name"][0] == b"r0"  # strings stay NumPy
    numpy_batch = next(iter(to_torch(loader, as_tensors=False)))
    assert isinstance(numpy_batch["ids"], np.ndarray)


def test_read_only_transform_output_is_copied_without_warning(files: dict[str, str]) -> None:
    def read_only(batch: np.ndarray) -> np.ndarray:
        batch.flags.writeable = False
        return batch

    loader = npyfeed.Loader(files["ids"], batch_size=10, transform=read_only)
    assert torch.cat(list(to_torch(loader))).tolist() == list(range(N))  # filterwarnings=error catches a warning


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [False, True])
def test_workers_share_each_epoch_in_order(files: dict[str, str], persistent: bool) -> None:
    loader = make(files)
    data = torch.utils.data.DataLoader(
        to_torch(loader), batch_size=None, num_workers=2, persistent_workers=persistent, multiprocessing_context="fork"
    )
    assert [data_epoch(data) for _ in range(3)] == [loader_epoch(loader, e) for e in range(3)]


@pytest.mark.slow
def test_set_epoch_reaches_the_workers(files: dict[str, str]) -> None:
    loader = make(files)
    dataset = to_torch(loader)
    data = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="fork")
    dataset.set_epoch(5)
    assert data_epoch(data) == loader_epoch(loader, 5)
    assert data_epoch(data) == loader_epoch(loader, 6)
    dataset.set_epoch(2)
    assert dataset.epoch == 2
    assert data_epoch(torch.utils.data.DataLoader(dataset, batch_size=None)) == loader_epoch(loader, 2)


def test_start_epoch_and_bad_arguments(files: dict[str, str]) -> None:
    loader = make(files, epoch=3)
    assert data_epoch(to_torch(loader)) == loader_epoch(loader, 3)
    assert data_epoch(to_torch(loader, start_epoch=8)) == loader_epoch(loader, 8)
    with pytest.raises(ConfigError):
        to_torch(loader, start_epoch=-1)
    with pytest.raises(ConfigError):
        to_torch(loader).set_epoch(-1)
