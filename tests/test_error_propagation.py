"""A failing transform or read reaches the consumer at the batch that failed, after every good batch before it.

Batches are small (64 per read task), so the failing batch sits in the middle of a task: the good batches of that
task must still come first. The error is the original one, its type kept (``except OSError`` catches a failed
read), with a note naming the batch, its epoch and the file; the loader (and the Keras PyDataset) can be used again
afterwards. A ``StopIteration`` alone is wrapped (``WorkerError``): raised as it is, it would end the epoch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from npyfeed import Loader, WorkerError

N, BATCH, BAD = 1000, 10, 5  # batch 5 holds rows 50..59


class FailOnce:
    """A transform that raises once, on the batch holding row ``BAD * BATCH``."""

    def __init__(self) -> None:
        self.failed = False

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if not self.failed and batch[0] == BAD * BATCH:
            self.failed = True
            raise ZeroDivisionError("boom")
        return batch


class FailingRows:
    """A row source over ``ids_path`` whose reads touching rows 50..59 fail once (an I/O error, say)."""

    def __init__(self, ids_path: str) -> None:
        import npyfeed

        self.inner = npyfeed.open(ids_path)
        self.failed = False

    shape = property(lambda self: self.inner.shape)
    dtype = property(lambda self: self.inner.dtype)
    paths = property(lambda self: self.inner.paths)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, key: Any) -> Any:
        return self.inner[key]

    def read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        if not self.failed and ((rows >= BAD * BATCH) & (rows < (BAD + 1) * BATCH)).any():
            if rows.size == BATCH:
                self.failed = True  # fails once read alone: the retry of the whole epoch succeeds
            raise OSError(5, "Input/output error")
        self.inner.read_rows(rows, out)

    def will_need(self, ranges: Any) -> None:
        self.inner.will_need(ranges)

    def advise(self, pattern: Any) -> None:
        self.inner.advise(pattern)


def expect(error: BaseException, kind: type[BaseException], stage: str) -> None:
    assert type(error) is kind, repr(error)
    notes = getattr(error, "__notes__", [])
    assert len(notes) == 1 and notes[0].startswith(f"npyfeed: reading batch {BAD} of epoch 0 ("), notes
    assert "ids.npy" in notes[0] and notes[0].endswith(f"failed in the {stage}"), notes
    assert getattr(error, "batch", None) == BAD and getattr(error, "epoch", None) == 0


def test_numpy_iterator_gets_good_batches_then_the_transform_error(ids_path: str) -> None:
    loader = Loader(ids_path, BATCH, transform=FailOnce())
    assert loader.batches_per_read > BAD + 1
    got = []
    with pytest.raises(ZeroDivisionError, match="boom") as info:
        for batch in loader:
            got.append(batch)
    assert [b[0] for b in got] == [i * BATCH for i in range(BAD)]
    expect(info.value, ZeroDivisionError, "transform")
    # Usable again: the state points at the failed batch, and a resumed loader reads the rest exactly.
    state = loader.get_state()
    assert (state["epoch"], state["position"]) == (0, BAD * BATCH)
    again = Loader(ids_path, BATCH, transform=FailOnce())
    again.transform.failed = True  # type: ignore[union-attr]
    again.set_state(state)
    rest = np.concatenate(list(again))
    np.testing.assert_array_equal(rest, np.arange(BAD * BATCH, N))
    np.testing.assert_array_equal(np.concatenate(list(loader)), np.arange(N))  # the next epoch, whole


def test_numpy_iterator_gets_good_batches_then_the_read_error(ids_path: str) -> None:
    loader = Loader(FailingRows(ids_path), BATCH)
    got = []
    with pytest.raises(OSError, match="Input/output error") as info:
        for batch in loader:
            got.append(batch)
    assert [b[0] for b in got] == [i * BATCH for i in range(BAD)]
    expect(info.value, OSError, "read")
    np.testing.assert_array_equal(np.concatenate(list(loader)), np.arange(N))


def test_read_batches_names_the_failed_batch(ids_path: str) -> None:
    loader = Loader(ids_path, BATCH, transform=FailOnce())
    with pytest.raises(ZeroDivisionError) as info:
        loader.read_batches(0, 0, 20)
    expect(info.value, ZeroDivisionError, "transform")


def test_keras_pydataset_fails_at_the_failed_index_and_serves_it_again(ids_path: str) -> None:
    pytest.importorskip("keras")
    ds = Loader(ids_path, BATCH, transform=FailOnce()).to_keras()
    ds.on_epoch_begin()
    for i in range(BAD):
        assert ds[i][0] == i * BATCH
    with pytest.raises(ZeroDivisionError) as info:
        ds[BAD]
    expect(info.value, ZeroDivisionError, "transform")
    for i in range(BAD, len(ds)):  # the same index again: the batch, not a bare StopIteration
        assert ds[i][0] == i * BATCH
    ds.on_epoch_end()
    assert ds.epoch == 1
    ds.close()


def test_torch_dataloader_gets_good_batches_then_the_error(ids_path: str) -> None:
    torch = pytest.importorskip("torch")
    data = torch.utils.data.DataLoader(Loader(ids_path, BATCH, transform=FailOnce()).to_torch(), batch_size=None)
    got = []
    with pytest.raises(ZeroDivisionError) as info:
        for batch in data:
            got.append(int(batch[0]))
    assert got == [i * BATCH for i in range(BAD)]
    expect(info.value, ZeroDivisionError, "transform")
    assert sum(len(b) for b in data) == N  # the next epoch, whole


def test_a_stop_iteration_is_an_error_not_the_end_of_the_epoch(ids_path: str) -> None:
    def stop(batch: np.ndarray) -> np.ndarray:
        if batch[0] == BAD * BATCH:
            raise StopIteration
        return batch

    got = []
    with pytest.raises(WorkerError, match=f"reading batch {BAD} of epoch 0 .*failed: StopIteration") as info:
        for batch in Loader(ids_path, BATCH, transform=stop):
            got.append(batch)
    assert len(got) == BAD and isinstance(info.value.__cause__, StopIteration)
