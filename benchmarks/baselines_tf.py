"""tf.data baselines: the recipes users write today for ``.npy`` files that do not fit in memory.

Each is written the way it is usually recommended, but correct: memmaps use the file's real data offset.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from benchmarks.data import open_memmaps
from benchmarks.spec import Batch, Job, as_pair

__all__ = ["ceiling_dataset", "fixed_length", "index_shuffle", "recipe", "recipe_dataset"]


def _x_spec(job: Job) -> tf.TensorSpec:
    kind = job.files.row_kind
    return tf.TensorSpec((None, *kind.row_shape), tf.as_dtype(kind.dtype))


def _signature(job: Job) -> Any:
    x_spec = _x_spec(job)
    if job.files.y is None:
        return x_spec
    return x_spec, tf.TensorSpec((None,), tf.int64)


def numpy_batches(ds: tf.data.Dataset) -> Iterator[Batch]:
    """Iterate a dataset eagerly, as a training loop would, handing numpy arrays to the checker."""
    for element in ds.as_numpy_iterator():
        yield as_pair(element)


def recipe(job: Job) -> Iterator[Batch]:
    """``np.memmap`` + a Python generator of batches + ``from_generator(...).prefetch(AUTOTUNE)``.

    Shuffling fancy-indexes the memmap with slices of a fresh permutation, as the usual recipe does.
    """
    return numpy_batches(recipe_dataset(job))


def recipe_dataset(job: Job) -> tf.data.Dataset:
    """The dataset of :func:`recipe` (each iterator is one epoch; a shuffled one draws a new permutation)."""
    x, y = open_memmaps(job.files)
    rng = np.random.default_rng(job.seed)
    n, b = job.files.num_rows, job.batch_size

    def generate() -> Iterator[Any]:
        order = rng.permutation(n) if job.shuffle else None
        for start in range(0, n, b):
            rows: Any = slice(start, start + b) if order is None else order[start : start + b]
            yield x[rows] if y is None else (x[rows], y[rows])

    return tf.data.Dataset.from_generator(generate, output_signature=_signature(job)).prefetch(tf.data.AUTOTUNE)


def ceiling_dataset(job: Job) -> tf.data.Dataset:
    """TensorFlow's own ceiling for a batch stream: the whole file held as one tensor, each batch a slice of it.

    No file I/O, no Python and no copy per batch (a slice along the first axis at a 64-byte boundary shares its
    input's buffer), so its rate is what tf.data and the consumer cost per element. Shuffled, whole batches come
    in a fresh random order each epoch (a shuffle of batch numbers; rows stay in order within a batch).
    """
    x_mem, y_mem = open_memmaps(job.files)
    x = tf.convert_to_tensor(np.ascontiguousarray(x_mem))
    y = None if y_mem is None else tf.convert_to_tensor(np.ascontiguousarray(y_mem))
    n, b = job.files.num_rows, job.batch_size
    num_batches = -(-n // b)
    order = tf.data.Dataset.range(num_batches)
    if job.shuffle:
        order = order.shuffle(num_batches, seed=job.seed, reshuffle_each_iteration=True)

    def batch(j: tf.Tensor) -> Any:
        start = j * b
        stop = tf.minimum(start + b, n)
        return x[start:stop] if y is None else (x[start:stop], y[start:stop])

    return order.map(batch).prefetch(tf.data.AUTOTUNE)


def fixed_length(job: Job) -> Iterator[Batch]:
    """``FixedLengthRecordDataset(header_bytes=data offset)``, batched, then ``decode_raw`` (sequential only)."""
    files, kind = job.files, job.files.row_kind
    dtype = tf.as_dtype(kind.dtype)

    def records(path: str, record_bytes: int, header_bytes: int) -> tf.data.Dataset:
        ds = tf.data.FixedLengthRecordDataset(path, record_bytes=record_bytes, header_bytes=header_bytes)
        return ds.batch(job.batch_size)

    def decode_x(raw: tf.Tensor) -> tf.Tensor:
        return tf.reshape(tf.io.decode_raw(raw, dtype), (-1, *kind.row_shape))

    def decode_xy(raw_x: tf.Tensor, raw_y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return decode_x(raw_x), tf.reshape(tf.io.decode_raw(raw_y, tf.int64), (-1,))

    xs = records(files.x, kind.row_bytes, files.x_offset)
    if files.y is None or files.y_offset is None:
        ds = xs.map(decode_x, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ys = records(files.y, 8, files.y_offset)
        ds = tf.data.Dataset.zip((xs, ys)).map(decode_xy, num_parallel_calls=tf.data.AUTOTUNE)
    return numpy_batches(ds.prefetch(tf.data.AUTOTUNE))


def index_shuffle(job: Job) -> Iterator[Batch]:
    """``range(N).shuffle(N).batch(B).map(numpy_function(sorted gather from a memmap), AUTOTUNE).prefetch``."""
    x, y = open_memmaps(job.files)
    kind = job.files.row_kind

    def gather(idx: np.ndarray) -> Any:
        idx = np.sort(idx)  # a batch is a set: read it in file order
        return x[idx] if y is None else (x[idx], y[idx])

    tout: Any = tf.as_dtype(kind.dtype) if y is None else [tf.as_dtype(kind.dtype), tf.int64]
    ds = tf.data.Dataset.range(job.files.num_rows)
    if job.shuffle:
        ds = ds.shuffle(job.files.num_rows, seed=job.seed)
    ds = ds.batch(job.batch_size).map(
        lambda idx: tf.numpy_function(gather, [idx], tout), num_parallel_calls=tf.data.AUTOTUNE
    )
    return numpy_batches(ds.prefetch(tf.data.AUTOTUNE))
