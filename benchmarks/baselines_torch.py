"""PyTorch baseline: a map-style ``Dataset`` over a memmap in a ``DataLoader`` with 2 worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks.data import BenchFiles, open_memmaps
from benchmarks.spec import Batch, Job

__all__ = ["MemmapRows", "dataloader"]


class MemmapRows(Dataset[Any]):
    """Row ``i`` as a NumPy copy (plus its label), the way per-sample datasets are usually written."""

    def __init__(self, files: BenchFiles) -> None:
        self.x, self.y = open_memmaps(files)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> Any:
        row = np.array(self.x[index])
        return row if self.y is None else (row, int(self.y[index]))


def dataloader(job: Job) -> Iterator[Batch]:
    """``DataLoader(batch_size=B, shuffle=..., num_workers=2)`` with the default collate."""
    loader = DataLoader(
        MemmapRows(job.files),
        batch_size=job.batch_size,
        shuffle=job.shuffle,
        num_workers=2,
        generator=torch.Generator().manual_seed(job.seed),
    )
    for batch in loader:
        if isinstance(batch, torch.Tensor):
            yield batch.numpy(), None
        else:
            yield batch[0].numpy(), batch[1].numpy()
