"""The framework-free reference: gather each batch from an ``np.memmap`` on one thread, no prefetch.

It is what a custom JAX/PyTorch loop does by hand, and the data path every memmap recipe shares; with no
framework in the way it shows what the page cache (or the device, cold) gives a single reader.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from benchmarks.data import open_memmaps
from benchmarks.spec import Batch, Job

__all__ = ["memmap_gather"]


def memmap_gather(job: Job) -> Iterator[Batch]:
    """Batches of a row permutation, each gathered in sorted (file) order; sequential batches are copied."""
    x, y = open_memmaps(job.files)
    n, b = job.files.num_rows, job.batch_size
    order = np.random.default_rng(job.seed).permutation(n) if job.shuffle else None
    for start in range(0, n, b):
        if order is None:  # a memmap slice is a view: copy it, or nothing would be read
            yield np.array(x[start : start + b]), None if y is None else np.array(y[start : start + b])
            continue
        rows = np.sort(order[start : start + b])
        yield x[rows], None if y is None else y[rows]
