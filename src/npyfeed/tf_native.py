"""``to_tf_dataset(native=True)``: a Python-free ``tf.data`` pipeline, built from TensorFlow ops only.

Nothing in the graph calls back into Python, so the dataset can be serialized and run where Python cannot:
tf.data service workers, TPU hosts, ``ParameterServerStrategy`` workers (see ``docs/tf-data-service.md``).

- **Order.** ``Dataset.range(epochs * batches)``; element ``i`` is batch ``i % batches`` of epoch
  ``start_epoch + i // batches``. Its positions come from the Loader's shard layout (worker ``i`` of ``n`` reads
  global batches ``i, i + n, ...``), its rows from the order computed with TF ``uint64`` ops: the same keyed
  Feistel network and cycle walking as :class:`npyfeed.order.GlobalShuffle`, inside
  :class:`npyfeed.order.BlockShuffle`'s windows, so every batch is byte-identical to ``loader.read_batch(e, k)``.
- **Reads.** The batch's rows, sorted, are cut into runs of consecutive rows within one file; each run is a
  ``FixedLengthRecordDataset(path, record_bytes=row_bytes, header_bytes=data_offset + first * row_bytes,
  footer_bytes=...)`` (tensor-valued under ``interleave``), then ``decode_raw`` (big-endian files too) and
  ``reshape``. A file that shrank gives fewer records and fails the reshape: an error, never a short batch.
- **Paths.** TensorFlow opens the files through its own file system layer: local paths work (tested);
  ``gs://`` is built into TensorFlow on Linux; ``s3://``, ``hdfs://`` and others need ``import tensorflow_io``
  on every process that runs the graph (workers included).

Not native: Python ``transform`` (put TF-op preprocessing in a ``.map`` after it), a global shuffle (one file
read per row; use ``shuffle="block"``, or ``native=False``), mixes, Fortran-ordered or string files.
There is no epoch counter (a ``tf.Variable`` would be external state): the dataset is ``epochs`` consecutive
epochs from ``start_epoch``; with Keras, ``model.fit(ds, epochs=E, steps_per_epoch=len(loader))``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from npyfeed.errors import ConfigError
from npyfeed.order import BlockShuffle, ChunkCache, Sequential, mix64
from npyfeed.sources import ConcatArray, NpyArray

if TYPE_CHECKING:
    import tensorflow as tf

    from npyfeed.loader import Loader

__all__ = ["native_dataset", "rows_op"]

_ROUNDS = 6  # as npyfeed.order
_GOLDEN = 0x9E3779B97F4A7C15
_ROUND_STEP = 0x632BE59BD9B4E019
_MAX_RUN_BUFFER = 1 << 20  # FixedLengthRecordDataset read buffer per run: the run itself, at most 1 MiB


def _tf() -> Any:
    import tensorflow as tf

    return tf


# -- the order in TF ops (uint64 arithmetic wraps modulo 2**64, as NumPy's does) ----------------------------------
def _u64(value: int) -> Any:
    return _tf().constant(value & ((1 << 64) - 1), _tf().uint64)


def _mix64(x: Any) -> Any:
    tf = _tf()
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u64(30))) * _u64(0xBF58476D1CE4E5B9)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u64(27))) * _u64(0x94D049BB133111EB)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u64(31)))


def _bit_length(v: Any) -> Any:
    tf = _tf()
    shifts = tf.constant(np.arange(64, dtype=np.uint64))
    return tf.reduce_sum(tf.cast(tf.bitwise.right_shift(v[..., None], shifts) > 0, tf.uint64), axis=-1)


def _permute(positions: Any, num_rows: Any, seed: Any, epoch: Any) -> Any:
    """:meth:`GlobalShuffle.permute` in TF ops: ``num_rows`` and ``seed`` per position (uint64), ``epoch`` scalar."""
    tf = _tf()
    one = _u64(1)
    bits = tf.maximum(one, _bit_length(tf.where(num_rows > 0, num_rows - one, one)))
    h = (bits + one) // _u64(2)
    mask = tf.bitwise.left_shift(one, h) - one
    base = _mix64(tf.bitwise.bitwise_xor(_mix64(seed), _mix64(epoch + _u64(_GOLDEN))))
    keys = [_mix64(base + _u64(_ROUND_STEP * (r + 1))) for r in range(_ROUNDS)]

    def network(x: Any) -> Any:
        left, right = tf.bitwise.right_shift(x, h), tf.bitwise.bitwise_and(x, mask)
        for key in keys:
            f = tf.bitwise.bitwise_and(_mix64(tf.bitwise.bitwise_xor(right, key)), mask)
            left, right = right, tf.bitwise.bitwise_xor(f, left)
        return tf.bitwise.bitwise_or(tf.bitwise.left_shift(left, h), right)

    def walk(x: Any) -> Any:
        return tf.where(x >= num_rows, network(x), x)

    x = network(positions)
    (x,) = tf.while_loop(lambda x: tf.reduce_any(x >= num_rows), lambda x: (walk(x),), (x,))
    return x


def _block_rows(order: BlockShuffle, epoch: Any, positions: Any) -> Any:
    """:meth:`BlockShuffle.rows` in TF ops (``positions`` int64, ``epoch`` int64 scalar)."""
    tf = _tf()
    e = tf.cast(epoch, tf.uint64)
    p = tf.cast(positions, tf.uint64)
    n, wr, br, wb = (_u64(v) for v in (order.num_rows, order.window_rows, order.block_rows, order.window_blocks))
    full_blocks = order.num_rows // order.block_rows
    window = p // wr
    first = window * wr
    size = tf.minimum(wr, n - first)
    window_seed = _mix64(tf.bitwise.bitwise_xor(_u64(order.seed), _mix64(window + _u64(1))))
    inner = _permute(p - first, size, window_seed, e)
    slot = window * wb + inner // br
    full = slot < _u64(full_blocks)
    if full_blocks:
        seed = _u64(mix64(order.seed ^ 0xB10C))
        shuffled = _permute(
            tf.where(full, slot, tf.zeros_like(slot)),
            tf.fill(tf.shape(slot), _u64(full_blocks)),
            tf.fill(tf.shape(slot), seed),
            e,
        )
        block = tf.where(full, shuffled, tf.fill(tf.shape(slot), _u64(full_blocks)))
    else:
        block = tf.fill(tf.shape(slot), _u64(full_blocks))
    return tf.cast(block * br + inner % br, tf.int64)


def rows_op(loader: Loader) -> Any:
    """``rows(epoch, index)``: the sorted rows of batch ``index`` of ``epoch`` in TF ops (``loader.batch_rows``)."""
    tf = _tf()
    order = loader.order.order if isinstance(loader.order, ChunkCache) else loader.order
    layout = loader.layout(-1)
    first_tail, tail_rows = layout._tail
    count, index, bs, start, rounds = layout.count, layout.index, layout.batch_size, layout.start, layout.rounds
    size, extra = divmod(tail_rows, count)
    tail_lo = first_tail + index * size + min(index, extra)
    tail_hi = tail_lo + size + (1 if index < extra else 0)

    def rows(epoch: Any, k: Any) -> Any:
        lo = tf.where(k < rounds, start + (k * count + index) * bs, tf.constant(tail_lo, tf.int64))
        hi = tf.where(k < rounds, lo + bs, tf.constant(tail_hi, tf.int64))
        positions = tf.range(lo, hi, dtype=tf.int64)
        if isinstance(order, Sequential):
            return positions
        assert isinstance(order, BlockShuffle)
        return tf.sort(_block_rows(order, epoch, positions))

    return rows


# -- reads --------------------------------------------------------------------------------------------------------
def _files(array: Any, where: str) -> list[NpyArray]:
    files: list[NpyArray] = []
    for part in list(array.parts) if isinstance(array, ConcatArray) else [array]:
        if not isinstance(part, NpyArray):
            raise ConfigError(f"{where}: native=True reads .npy files or shards of them, not {type(part).__name__}")
        files.append(part)
        if part.fortran_order and part.ndim > 1:
            raise ConfigError(
                f"{part.path}: native=True needs C-ordered rows (this file is Fortran-ordered): convert it with "
                "`npyfeed convert`, or use native=False"
            )
    return files


def _column_reader(array: Any, where: str) -> Any:
    """``read(rows) -> tensor [len(rows), *row_shape]`` for one column, from TF file ops."""
    tf = _tf()
    files = _files(array, where)
    dtype = array.dtype
    if dtype.kind in "SUOVMm" or dtype.names is not None:
        raise ConfigError(f"{where}: dtype {dtype} cannot be decoded natively (decode_raw); use native=False")
    row_bytes = int(files[0].row_bytes)
    if row_bytes == 0:
        raise ConfigError(f"{where}: rows of 0 bytes cannot be read natively; use native=False")
    out_dtype = tf.as_dtype(dtype.newbyteorder("="))
    little = dtype.byteorder != ">" and not (dtype.byteorder == "=" and np.little_endian is False)
    row_shape = list(array.shape[1:])
    paths = tf.constant([f.path for f in files])
    starts = tf.constant(np.cumsum([0] + [len(f) for f in files])[:-1], tf.int64)
    offsets = tf.constant([f.header.data_offset for f in files], tf.int64)
    ends = tf.constant([f.header.file_bytes for f in files], tf.int64)

    def read_run(file: Any, first: Any, length: Any) -> Any:
        header = offsets[file] + first * row_bytes
        footer = ends[file] - header - length * row_bytes
        return tf.data.FixedLengthRecordDataset(
            paths[file],
            record_bytes=row_bytes,
            header_bytes=header,
            footer_bytes=footer,
            buffer_size=tf.minimum(length * row_bytes, _MAX_RUN_BUFFER),
        )

    def read(rows: Any) -> Any:
        file = tf.searchsorted(starts, rows, side="right") - 1
        local = rows - tf.gather(starts, file)
        n = tf.size(rows, out_type=tf.int64)
        breaks = tf.logical_or(local[1:] - local[:-1] != 1, file[1:] != file[:-1])
        heads = tf.concat([tf.constant([0], tf.int64), tf.where(breaks)[:, 0] + 1], 0)
        lengths = tf.concat([heads[1:], [n]], 0) - heads
        runs = tf.data.Dataset.from_tensor_slices((tf.gather(file, heads), tf.gather(local, heads), lengths))
        records = runs.flat_map(read_run).batch(tf.maximum(n, 1))
        return records.map(lambda r: tf.reshape(tf.io.decode_raw(r, out_dtype, little_endian=little), [n, *row_shape]))

    return read


def native_dataset(
    loader: Loader, *, start_epoch: int, epochs: int | None, num_parallel_calls: int | None, spec: Any
) -> tf.data.Dataset:
    """The native pipeline (see the module docstring); ``spec`` is the element spec from the headers."""
    tf = _tf()
    if loader.transform is not None:
        raise ConfigError(
            "native=True cannot run a Python transform (the graph must not call back into Python); apply "
            "TensorFlow-op preprocessing with .map() on the dataset, or use native=False"
        )
    order = loader.order.order if isinstance(loader.order, ChunkCache) else loader.order
    if not isinstance(order, (Sequential, BlockShuffle)):
        alternative = "shuffle='block'" if loader.shuffle == "global" else "native=False"
        raise ConfigError(
            f"native=True supports shuffle=False and shuffle='block', not this loader's {loader.shuffle!r} order "
            f"({type(order).__name__}): a native global shuffle would read the files one row at a time. Use "
            f"{alternative}, or native=False for an exact global shuffle"
        )
    if loader.num_batches(start_epoch) != len(loader):
        raise ConfigError(
            f"native=True starts at an epoch boundary, but epoch {start_epoch} was resumed mid-way by set_state(); "
            "use native=False to finish it"
        )
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"epochs must be a positive int or None, got {epochs!r}")
    source = loader.source
    readers = []
    for key, array in zip(source.keys, source.arrays, strict=True):
        where = f"{array.paths[0]} (column {key!r})" if source.kind != "array" else array.paths[0]
        readers.append(_column_reader(array, where))
    rows_of = rows_op(loader)
    batches = len(loader)
    # tf.nest.flatten order of the source's structure (dict keys sorted), matching ``spec``.
    flat_keys = sorted(range(len(source.keys)), key=lambda j: source.keys[j]) if source.kind == "dict" else None

    def one_batch(i: Any) -> Any:
        epoch = start_epoch + i // batches
        rows = rows_of(epoch, i % batches)
        columns = [reader(rows) for reader in readers]
        if source.kind == "array":
            return columns[0]
        if source.kind == "dict":
            return tf.data.Dataset.zip({source.keys[j]: columns[j] for j in flat_keys or []})
        return tf.data.Dataset.zip(tuple(columns))

    # No epochs given: as good as endless (epoch numbers stay well inside int64).
    total = tf.data.Dataset.range(batches * (epochs if epochs is not None else 1 << 40))
    dataset = total.interleave(
        one_batch,
        cycle_length=num_parallel_calls or 4,
        block_length=1,
        num_parallel_calls=num_parallel_calls or tf.data.AUTOTUNE,
        deterministic=True,
        name="npyfeed_native_read",
    )
    if source.kind == "tuple":
        dataset = dataset.map(lambda *columns: _with_spec(columns, spec))
    else:
        dataset = dataset.map(lambda batch: _with_spec(batch, spec))
    # No assert_cardinality: under tf.data service's distributed_epoch each worker sees only its splits of the
    # range, and the assertion would fail there. The cardinality is unknown: pass steps_per_epoch=len(loader).
    return dataset.prefetch(tf.data.AUTOTUNE)


def _with_spec(batch: Any, spec: Any) -> Any:
    tf = _tf()
    flat = tf.nest.flatten(batch)
    for tensor, s in zip(flat, tf.nest.flatten(spec), strict=True):
        tensor.set_shape(s.shape)
    return tf.nest.pack_sequence_as(spec, flat)
