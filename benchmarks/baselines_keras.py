"""Keras baseline: a ``keras.utils.PyDataset`` over a memmap, iterated the way ``model.fit`` iterates it."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np

# The adapter model.fit wraps a PyDataset in. It is private, but it is the only way to iterate "as Keras does"
# without a model: worker threads/processes via OrderedEnqueuer, then from_generator on the TF backend.
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

from benchmarks.data import BenchFiles, open_memmaps
from benchmarks.spec import Batch, Job, as_pair

__all__ = ["MemmapPyDataset", "pydataset_processes", "pydataset_threads"]


class MemmapPyDataset(keras.utils.PyDataset):
    """Batch ``i`` = the ``i``-th slice of a row permutation drawn once per dataset, gathered in file order."""

    def __init__(self, files: BenchFiles, batch_size: int, shuffle: bool, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.x, self.y = open_memmaps(files)
        self.batch_size = batch_size
        n = files.num_rows
        self.order = np.random.default_rng(seed).permutation(n) if shuffle else None

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index: int) -> Any:
        start = index * self.batch_size
        rows: Any = slice(start, start + self.batch_size)
        if self.order is not None:
            rows = np.sort(self.order[rows])
        return (self.x[rows],) if self.y is None else (self.x[rows], self.y[rows])


def _epoch(job: Job, use_multiprocessing: bool) -> Iterator[Batch]:
    ds = MemmapPyDataset(
        job.files, job.batch_size, job.shuffle, job.seed, workers=2, use_multiprocessing=use_multiprocessing
    )
    adapter = PyDatasetAdapter(ds, shuffle=False)  # the dataset shuffles rows itself, not just batch order
    # Same sequence as Keras' epoch iterator: build the dataset, begin the epoch, iterate, end the epoch.
    on_tf = keras.backend.backend() == "tensorflow"
    dataset = adapter.get_tf_dataset() if on_tf else None
    adapter.on_epoch_begin()
    iterable: Any = dataset.as_numpy_iterator() if dataset is not None else adapter.get_numpy_iterator()
    for element in iterable:
        yield as_pair(element)
    adapter.on_epoch_end()


def pydataset_threads(job: Job) -> Iterator[Batch]:
    """``PyDataset(workers=2, use_multiprocessing=False)``."""
    return _epoch(job, use_multiprocessing=False)


def pydataset_processes(job: Job) -> Iterator[Batch]:
    """``PyDataset(workers=2, use_multiprocessing=True)``."""
    return _epoch(job, use_multiprocessing=True)
