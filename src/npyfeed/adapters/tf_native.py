"""``to_tf_dataset(native=True)``: a Python-free ``tf.data`` pipeline, built from TensorFlow ops only.

Nothing in the graph calls back into Python, so the dataset can be serialized and run where Python cannot:
tf.data service workers, TPU hosts, ``ParameterServerStrategy`` workers (see ``docs/tf-data-service.md``).

- **Order** (:mod:`npyfeed.adapters.tf_ops.order`). ``Dataset.range`` over the epoch's batches (or groups of them).
  Their positions come from the Loader's shard layout (worker ``i`` of ``n`` reads global batches
  ``i, i + n, ...``), their rows from the order computed with TF ``uint64`` ops: the same keyed Feistel network
  and cycle walking as :class:`npyfeed.order.orders.GlobalShuffle`, inside :class:`npyfeed.order.orders.BlockShuffle`'s
  windows, so every batch is byte-identical to ``loader.read_batch(e, k)``.
- **Reads** (:mod:`npyfeed.adapters.tf_ops.reads`). By ``FixedLengthRecordDataset``, which skips its ``header_bytes``
  by *reading* them: a read that starts at byte ``o`` of a file costs a read of ``o`` bytes first. So a
  sequential epoch is read as
  ``_SEGMENTS`` segments (``Dataset.range`` elements under ``interleave``), each scanning its files front to back
  in records of ~1 MiB (a file's first ``rows % record`` rows as one record, so the rest are whole records),
  ``decode_raw`` once per record, then re-cut into batches (``rebatch``); a worker of several keeps its batches
  with ``shard``. A block-shuffled epoch is read in passes of whole windows of blocks (about ``_PASS_BYTES``):
  a pass scans each file it touches once, in records of one block, up to the last block it wants, keeps those
  (one record per block, or per piece where a block spans two files), lays them out in one tensor, and each
  batch is a ``gather`` from it. An epoch costs about ``data size / _PASS_BYTES`` reads of the data set.
  Big-endian files are decoded as such. A file whose size changed fails its read or its reshape: an error,
  never a short batch.
- **Paths.** TensorFlow opens the files through its own file system layer: local paths work (tested);
  ``gs://`` is built into TensorFlow on Linux (with TensorFlow's own GCS credentials, not ``storage_options``);
  ``s3://``, ``hdfs://`` and others need ``import tensorflow_io`` on every process that runs the graph (workers
  included). A scheme TensorFlow has not registered in this process is a ``ConfigError`` when the dataset is
  built (tested for ``s3://``).

Not native: Python ``transform`` (put TF-op preprocessing in a ``.map`` after it), a global shuffle (one file
read per row; use ``shuffle="block"``, or ``native=False``), mixes, Fortran-ordered or string files.
There is no epoch counter (a ``tf.Variable`` would be external state): the dataset is ``epochs`` consecutive
epochs from ``start_epoch``; with Keras, ``model.fit(ds, epochs=E, steps_per_epoch=len(loader))``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from npyfeed.adapters.frameworks import require_tensorflow as _tf
from npyfeed.adapters.tf_ops.order import group_plan, rows_op
from npyfeed.adapters.tf_ops.reads import column_reader
from npyfeed.errors import ConfigError
from npyfeed.order.orders import BlockShuffle, Sequential, unwrap
from npyfeed.system import available_memory

if TYPE_CHECKING:
    import tensorflow as tf

    from npyfeed.adapters.feed import Feed

__all__ = ["native_dataset", "rows_op"]

_SEGMENTS = 2  # sequential epochs are read as this many segments (each skips to its start by reading: see scan)
_SEGMENT_CYCLE = 2  # segments read at once
_PASS_BYTES = 256 << 20  # a block-shuffled pass holds about this many bytes of blocks (all columns)
_PASS_CYCLE = 2  # passes read at once


def _group_batches(loader: Feed, order: BlockShuffle, cycle: int) -> int:
    """Consecutive batches a block-shuffled epoch reads in one pass: whole windows of blocks, as many as fit in
    ``_PASS_BYTES``, at least one. Less when memory is short: ``cycle`` passes are read while one is cut into
    batches, each held twice at its peak (its blocks, then the tensor they are laid out in)."""
    layout = loader.layout()
    window = max(1, order.window_rows // (layout.batch_size * layout.count))
    budget = min(_PASS_BYTES, available_memory() // (8 * (cycle + 1)))
    return window * max(1, budget // max(1, order.window_rows * loader.source.row_bytes))


def native_dataset(
    loader: Feed, *, start_epoch: int, offset: int, epochs: int | None, num_parallel_calls: int | None, spec: Any
) -> tf.data.Dataset:
    """The native pipeline (see the module docstring); ``spec`` is the element spec from the headers."""
    tf = _tf()
    if loader.transform is not None:
        raise ConfigError(
            "native=True cannot run a Python transform (the graph must not call back into Python); apply "
            "TensorFlow-op preprocessing with .map() on the dataset, or use native=False"
        )
    order = unwrap(loader.order)
    if not isinstance(order, (Sequential, BlockShuffle)):
        alternative = "shuffle='block'" if loader.shuffle == "global" else "native=False"
        raise ConfigError(
            f"native=True supports shuffle=False and shuffle='block', not this loader's {loader.shuffle!r} order "
            f"({type(order).__name__}): a native global shuffle would read the files one row at a time. Use "
            f"{alternative}, or native=False for an exact global shuffle"
        )
    if offset:
        raise ConfigError(
            f"native=True starts at an epoch boundary, but epoch {start_epoch} was resumed mid-way by set_state(); "
            "use native=False to finish it"
        )
    source = loader.source
    # tf.nest.flatten order of the source's structure (dict keys sorted), matching ``spec``.
    flat_keys = sorted(range(len(source.keys)), key=lambda j: source.keys[j]) if source.kind == "dict" else None
    readers = []
    for key, array in zip(source.keys, source.arrays, strict=True):
        where = f"{array.paths[0]} (column {key!r})" if source.kind != "array" else array.paths[0]
        readers.append(column_reader(array, where, None if isinstance(order, Sequential) else order.block_rows))
    batches = len(loader)
    if isinstance(order, Sequential):
        dataset = _sequential(loader, readers, batches, epochs, source, flat_keys)
        return _finish(dataset, source, spec)
    assert isinstance(order, BlockShuffle)
    cycle = num_parallel_calls or _PASS_CYCLE
    group = _group_batches(loader, order, cycle)
    groups = -(-batches // group)
    plan = group_plan(loader, order, group)

    def one_pass(i: Any) -> Any:
        epoch = start_epoch + i // groups
        first = i % groups * group
        splits, index, starts, ends = plan(epoch, first, tf.minimum(first + group, batches))
        return splits, tuple(load(index, starts, ends) for _, _, load in readers)

    def cut(splits: Any, loaded: Any) -> Any:
        def batch(j: Any) -> Any:
            lo, hi = splits[j], splits[j + 1]
            return _structure([tf.gather(buffer, at[lo:hi]) for buffer, at in loaded], source, flat_keys)

        return tf.data.Dataset.range(tf.size(splits, out_type=tf.int64) - 1).map(batch)

    # No epochs given: as good as endless (epoch numbers stay well inside int64). A pass is a tensor of its
    # blocks (not a nested dataset), so the passes held at once are the ``cycle`` being read and the one cut.
    total = tf.data.Dataset.range(groups * (epochs if epochs is not None else 1 << 40))
    dataset = total.map(one_pass, num_parallel_calls=cycle, deterministic=True, name="npyfeed_native_read")
    dataset = dataset.flat_map(cut)
    return _finish(dataset, source, spec)


def _sequential(loader: Feed, readers: list[Any], batches: int, epochs: int | None, source: Any, keys: Any) -> Any:
    """Sequential epochs: ``_SEGMENTS`` segments of batches, each scanned front to back and re-cut (``rebatch``).

    A segment is a ``Dataset.range`` element (under tf.data service's ``distributed_epoch``, whole segments go to
    workers). Worker ``i`` of ``n`` scans the full rounds and keeps global batches ``i, i + n, ...``
    (``shard``: it reads ``n`` times its rows), then reads its share of the tail by the group path.
    """
    tf = _tf()
    layout = loader.layout()
    count, index, bs, rounds = layout.count, layout.index, layout.batch_size, layout.rounds
    num_rows = len(loader.source)
    scanned = batches if count == 1 else rounds  # batches read by scans; a worker of several reads its tail apart
    per_segment = max(1, -(-scanned // _SEGMENTS))
    segments = -(-scanned // per_segment)
    tail = 1 if batches > scanned else 0
    per_epoch = segments + tail
    plan = group_plan(loader, Sequential(num_rows), 1) if tail else None

    def element(i: Any) -> Any:
        j = i % per_epoch
        is_segment = j < segments
        k0 = tf.where(is_segment, j * per_segment, 0)
        k1 = tf.where(is_segment, tf.minimum(k0 + per_segment, scanned), 0)
        first, stop = k0 * count * bs, tf.minimum(k1 * count * bs, num_rows)
        part = _zip([scan(first, stop).rebatch(bs) for _, scan, _ in readers], source, keys)
        if count > 1:
            part = part.shard(count, index)
        if plan is not None:
            last = tf.where(is_segment, rounds, rounds + 1)
            part = part.concatenate(_zip([read(*plan(0, rounds, last)) for read, _, _ in readers], source, keys))
        return part

    total = tf.data.Dataset.range(per_epoch * (epochs if epochs is not None else 1 << 40))
    return total.interleave(
        element,
        cycle_length=_SEGMENT_CYCLE,
        block_length=per_segment,
        num_parallel_calls=_SEGMENT_CYCLE,
        deterministic=True,
        name="npyfeed_native_scan",
    )


def _structure(columns: list[Any], source: Any, keys: Any) -> Any:
    """One batch's column tensors in the source's structure."""
    if source.kind == "array":
        return columns[0]
    if source.kind == "dict":
        return {source.keys[j]: columns[j] for j in keys or []}
    return tuple(columns)


def _zip(columns: list[Any], source: Any, keys: Any) -> Any:
    tf = _tf()
    if source.kind == "array":
        return columns[0]
    if source.kind == "dict":
        return tf.data.Dataset.zip({source.keys[j]: columns[j] for j in keys or []})
    return tf.data.Dataset.zip(tuple(columns))


def _finish(dataset: Any, source: Any, spec: Any) -> Any:
    tf = _tf()
    if dataset.element_spec == spec:
        pass  # already the header's spec: no map (one tf.data stage less per batch)
    elif source.kind == "tuple":
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
