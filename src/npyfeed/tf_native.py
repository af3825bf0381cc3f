"""``to_tf_dataset(native=True)``: a Python-free ``tf.data`` pipeline, built from TensorFlow ops only.

Nothing in the graph calls back into Python, so the dataset can be serialized and run where Python cannot:
tf.data service workers, TPU hosts, ``ParameterServerStrategy`` workers (see ``docs/tf-data-service.md``).

- **Order.** ``Dataset.range(epochs * batches)``; element ``i`` is batch ``i % batches`` of epoch
  ``start_epoch + i // batches``. Its positions come from the Loader's shard layout (worker ``i`` of ``n`` reads
  global batches ``i, i + n, ...``), its rows from the order computed with TF ``uint64`` ops: the same keyed
  Feistel network and cycle walking as :class:`npyfeed.order.GlobalShuffle`, inside
  :class:`npyfeed.order.BlockShuffle`'s windows, so every batch is byte-identical to ``loader.read_batch(e, k)``.
- **Reads.** By ``FixedLengthRecordDataset``, which skips its ``header_bytes`` by *reading* them: a read that
  starts at byte ``o`` of a file costs a read of ``o`` bytes first. So a sequential epoch is read as
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

import numpy as np

from npyfeed.errors import ConfigError
from npyfeed.order import BlockShuffle, ChunkCache, Sequential, mix64
from npyfeed.sources import ConcatArray, NpyArray
from npyfeed.system import available_memory

if TYPE_CHECKING:
    import tensorflow as tf

    from npyfeed.loader import Loader

__all__ = ["native_dataset", "rows_op"]

_ROUNDS = 6  # as npyfeed.order
_GOLDEN = 0x9E3779B97F4A7C15
_ROUND_STEP = 0x632BE59BD9B4E019
_MAX_READ_BUFFER = 1 << 20  # FixedLengthRecordDataset read buffer per piece: the piece itself, at most 1 MiB
_SCAN_BYTES = 1 << 20  # records of a sequential scan: about 1 MiB
_SEGMENTS = 2  # sequential epochs are read as this many segments (each skips to its start by reading: see scan)
_SEGMENT_CYCLE = 2  # segments read at once
_PASS_BYTES = 256 << 20  # a block-shuffled pass holds about this many bytes of blocks (all columns)
_PASS_CYCLE = 2  # passes read at once


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


def _worker_batches(loader: Loader) -> tuple[int, int, int, int, int, int, int]:
    """This worker's share of an epoch: ``(count, index, batch_size, start, rounds, tail_lo, tail_hi)``, where
    batch ``k < rounds`` starts at row position ``start + (k * count + index) * batch_size`` and the tail batch
    holds positions ``[tail_lo, tail_hi)`` (the rows after the last full round, shared out as the Loader does)."""
    layout = loader.layout(-1)
    first_tail, tail_rows = layout._tail
    count, index = layout.count, layout.index
    size, extra = divmod(tail_rows, count)
    tail_lo = first_tail + index * size + min(index, extra)
    tail_hi = tail_lo + size + (1 if index < extra else 0)
    return count, index, layout.batch_size, layout.start, layout.rounds, tail_lo, tail_hi


def rows_op(loader: Loader) -> Any:
    """``rows(epoch, index)``: the sorted rows of batch ``index`` of ``epoch`` in TF ops (``loader.batch_rows``)."""
    tf = _tf()
    order = loader.order.order if isinstance(loader.order, ChunkCache) else loader.order
    count, index, bs, start, rounds, tail_lo, tail_hi = _worker_batches(loader)

    def rows(epoch: Any, k: Any) -> Any:
        lo = tf.where(k < rounds, start + (k * count + index) * bs, tf.constant(tail_lo, tf.int64))
        hi = tf.where(k < rounds, lo + bs, tf.constant(tail_hi, tf.int64))
        positions = tf.range(lo, hi, dtype=tf.int64)
        if isinstance(order, Sequential):
            return positions
        assert isinstance(order, BlockShuffle)
        return tf.sort(_block_rows(order, epoch, positions))

    return rows


# -- groups of batches: which rows, which byte ranges ----------------------------------------------------------
def _group_batches(loader: Loader, order: BlockShuffle, cycle: int) -> int:
    """Consecutive batches a block-shuffled epoch reads in one pass: whole windows of blocks, as many as fit in
    ``_PASS_BYTES``, at least one. Less when memory is short: ``cycle`` passes are read while one is cut into
    batches, each held twice at its peak (its blocks, then the tensor they are laid out in)."""
    layout = loader.layout(-1)
    window = max(1, order.window_rows // (layout.batch_size * layout.count))
    row_bytes = sum(a.dtype.itemsize * int(np.prod(a.shape[1:])) for a in loader.source.arrays)
    budget = min(_PASS_BYTES, available_memory() // (8 * (cycle + 1)))
    return window * max(1, budget // max(1, order.window_rows * row_bytes))


def _group_plan(loader: Loader, order: Any, group: int) -> Any:
    """``plan(epoch, first, stop) -> (row_splits, index, starts, ends)`` for the worker's batches ``[first, stop)``.

    ``starts``/``ends`` are the sorted, disjoint row ranges to read (runs of the batches' rows when sequential,
    the whole blocks they touch when block-shuffled); ``index`` is each batch row's position in the rows of those
    ranges, laid end to end; batch ``j`` is ``index[row_splits[j]:row_splits[j + 1]]``.
    """
    tf = _tf()
    count, index, bs, start, rounds, tail_lo, tail_hi = _worker_batches(loader)
    num_rows = len(loader.source)

    def plan(epoch: Any, first: Any, stop: Any) -> Any:
        k = tf.range(first, stop, dtype=tf.int64)
        lo = tf.where(k < rounds, start + (k * count + index) * bs, tf.constant(tail_lo, tf.int64))
        hi = tf.where(k < rounds, lo + bs, tf.constant(tail_hi, tf.int64))
        positions = tf.RaggedTensor.from_row_lengths(tf.ragged.range(lo, hi).flat_values, hi - lo, validate=False)
        splits = positions.row_splits
        if isinstance(order, Sequential):
            rows = positions.flat_values  # increasing: batch k's rows all come before batch k + 1's
            n = tf.size(rows, out_type=tf.int64)
            heads = tf.concat([[0], tf.where(rows[1:] - rows[:-1] != 1)[:, 0] + 1], 0)[:n]  # none when no rows
            starts = tf.gather(rows, heads)
            ends = tf.gather(rows, tf.concat([heads[1:], [n]], 0)[: tf.size(heads)] - 1) + 1
        else:
            assert isinstance(order, BlockShuffle)
            shuffled = _block_rows(order, epoch, positions.flat_values)
            # Sorted within each batch: batch-major keys (the batch's number times num_rows, plus the row).
            batch_of = positions.value_rowids()
            keys = tf.sort(batch_of * num_rows + shuffled)
            rows = keys - batch_of * num_rows
            blocks, _ = tf.unique(tf.sort(rows // order.block_rows))
            starts = blocks * order.block_rows
            ends = tf.minimum(starts + order.block_rows, num_rows)
        at = tf.searchsorted(starts, rows, side="right") - 1
        offsets = tf.cumsum(ends - starts, exclusive=True)
        return splits, tf.gather(offsets, at) + rows - tf.gather(starts, at), starts, ends

    return plan


# -- reads --------------------------------------------------------------------------------------------------------
def _contains(sorted_values: Any, value: Any) -> Any:
    """Whether scalar ``value`` (>= 0) is in the sorted 1-D ``sorted_values``."""
    tf = _tf()
    at = tf.searchsorted(sorted_values, value[None])[0]
    padded = tf.concat([sorted_values, tf.constant([-1], sorted_values.dtype)], 0)  # ``at`` may be the size
    return tf.equal(tf.gather(padded, at), value)


def _check_scheme(path: str) -> None:
    """A URL whose scheme TensorFlow's file system layer cannot open here is refused now, not mid-epoch."""
    scheme, sep, _ = path.partition("://")
    if not sep:
        return
    registered = sorted(s for s in _tf().io.gfile.get_registered_schemes() if s)
    if scheme not in registered:
        raise ConfigError(
            f"{path}: native=True reads through TensorFlow's file system layer, which has no {scheme}:// here "
            f"(registered: {', '.join(s + '://' for s in registered)}). For s3://, hdfs:// and others, "
            "`import tensorflow_io` first (pip install tensorflow-io), in every process that runs the graph "
            f"(tf.data service workers included); or use native=False, which reads {scheme}:// through npyfeed"
        )


def _files(array: Any, where: str) -> list[NpyArray]:
    files: list[NpyArray] = []
    for part in list(array.parts) if isinstance(array, ConcatArray) else [array]:
        if not isinstance(part, NpyArray):
            raise ConfigError(f"{where}: native=True reads .npy files or shards of them, not {type(part).__name__}")
        _check_scheme(part.path)
        files.append(part)
        if part.fortran_order and part.ndim > 1:
            raise ConfigError(
                f"{part.path}: native=True needs C-ordered rows (this file is Fortran-ordered): convert it with "
                "`npyfeed convert`, or use native=False"
            )
    return files


def _column_reader(array: Any, where: str, block_rows: int | None) -> tuple[Any, Any, Any]:
    """``read(splits, index, starts, ends) -> dataset`` of one column's batches, and ``scan(stop)`` (see there).

    The row ranges are cut where files end. Sequential (``block_rows`` None): each piece is one record of a
    ``FixedLengthRecordDataset``, and each batch is a slice of the pieces laid end to end. Block-shuffled: the
    pieces are whole blocks, read by one front-to-back scan of each file (see ``blocks``), and each batch is a
    gather from them.
    """
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
    counts = np.array([len(f) for f in files], dtype=np.int64)
    file_starts = tf.constant(np.cumsum(counts) - counts, tf.int64)
    file_stops = tf.constant(np.cumsum(counts), tf.int64)
    offsets = tf.constant([f.header.data_offset for f in files], tf.int64)
    ends = tf.constant([f.header.file_bytes for f in files], tf.int64)

    def read_piece(file: Any, first: Any, length: Any) -> Any:
        header = offsets[file] + first * row_bytes
        footer = ends[file] - header - length * row_bytes
        return tf.data.FixedLengthRecordDataset(
            paths[file],
            record_bytes=length * row_bytes,
            header_bytes=header,
            footer_bytes=footer,
            buffer_size=tf.minimum(length * row_bytes, _MAX_READ_BUFFER),
        )

    def pieces(starts: Any, stops: Any) -> Any:
        f_lo = tf.searchsorted(file_starts, starts, side="right") - 1
        f_hi = tf.searchsorted(file_starts, stops - 1, side="right") - 1
        spans = tf.ragged.range(f_lo, f_hi + 1)
        file, of = spans.flat_values, spans.value_rowids()
        lo = tf.maximum(tf.gather(starts, of), tf.gather(file_starts, file))
        hi = tf.minimum(tf.gather(stops, of), tf.gather(file_stops, file))
        keep = hi > lo  # files of 0 rows between two others
        file, lo, hi = (tf.boolean_mask(t, keep) for t in (file, lo, hi))
        return file, lo - tf.gather(file_starts, file), hi - lo

    def decode(record: Any) -> Any:
        return tf.io.decode_raw(record, out_dtype, little_endian=little)

    file_ids = tf.range(len(files), dtype=tf.int64)
    if block_rows is not None:  # rows of each file before its first block boundary; records a file can hold
        heads = tf.constant(np.minimum(-(np.cumsum(counts) - counts) % block_rows, counts), tf.int64)
        most = int(counts.max(initial=0)) // block_rows + 2
    record = max(1, _SCAN_BYTES // row_bytes)

    def read_part(file: Any, header: Any, size: Any, n: Any) -> Any:
        footer = ends[file] - header - size * n
        return tf.data.FixedLengthRecordDataset(
            paths[file], record_bytes=size, header_bytes=header, footer_bytes=footer, buffer_size=size
        )

    def scan(first: Any, stop: Any) -> Any:
        """Rows ``[first, stop)`` in order: a dataset of ``[k, *row_shape]`` tensors, each file read front to back.

        ``FixedLengthRecordDataset`` skips its header by reading it, so a read from row ``r`` costs a read of
        rows ``[0, r)`` of its file: each file's rows are one record of ``rows % record`` rows, then records of
        ``record`` rows from the same ``FixedLengthRecordDataset``.
        """
        lo = tf.clip_by_value(first - file_starts, 0, file_stops - file_starts)
        hi = tf.clip_by_value(stop - file_starts, 0, file_stops - file_starts)
        head, full = (hi - lo) % record, (hi - lo) // record
        header = offsets + lo * row_bytes
        table = [  # per file: its head record, then its full records (file order: interleaved by the stack)
            tf.reshape(tf.stack([a, b], axis=1), [-1])
            for a, b in (
                (file_ids, file_ids),
                (header, header + head * row_bytes),
                (head * row_bytes, tf.fill(tf.shape(head), tf.constant(record * row_bytes, tf.int64))),
                (tf.ones_like(head), full),
            )
        ]
        keep = tf.logical_and(table[2] > 0, table[3] > 0)
        parts = tuple(tf.boolean_mask(t, keep) for t in table)
        shape = [-1, *row_shape]
        return (
            tf.data.Dataset.from_tensor_slices(parts)
            .flat_map(read_part)
            .map(lambda r: tf.reshape(decode(r), shape), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        )

    def blocks(starts: Any, stops: Any) -> tuple[Any, Any]:
        """The pieces of ``[starts, stops)`` (whole blocks, cut where files end) in order, and their rows.

        ``FixedLengthRecordDataset`` skips its header by reading it, so a file's whole blocks are read by one
        scan from its first block boundary to the end of the last block wanted, in records of one block, keeping
        the wanted ones: a pass costs at most one read of each file it touches, however many blocks it wants. The
        piece before a file's first block boundary (a block begun in the previous file) is a record of its own at
        the front; the piece after its last boundary (a block that ends in the next file, or the partial last
        block) is a record of its own too, and costs a read of the file up to it.
        """
        assert block_rows is not None
        file, lo, length = pieces(starts, stops)
        file = tf.cast(file, tf.int64)
        head = tf.gather(heads, file)
        whole = tf.logical_and(lo >= head, tf.equal(length, block_rows))
        record = tf.where(whole, (lo - head) // block_rows, 0)
        wanted = tf.boolean_mask(file * most + record, whole)  # sorted: pieces are in (file, row) order
        touched, _ = tf.unique(file)
        in_file = tf.equal(file[None, :], touched[:, None])  # [touched, pieces]

        def per_file(mask: Any) -> Any:
            return tf.reduce_sum(tf.where(mask, length, 0), axis=1), tf.reduce_max(tf.where(mask, lo, 0), axis=1)

        first_len, _ = per_file(tf.logical_and(in_file, tf.logical_and(~whole, tf.equal(lo, 0))))
        last_len, last_lo = per_file(tf.logical_and(in_file, tf.logical_and(~whole, lo > 0)))
        scanned = tf.reduce_max(tf.where(tf.logical_and(in_file, whole), record + 1, 0), axis=1)
        base = tf.gather(offsets, touched)
        first_of = tf.gather(heads, touched)
        table = [  # per touched file: the piece before its first boundary, the scan, the piece after its last
            tf.reshape(tf.stack(columns, axis=1), [-1])
            for columns in (
                (touched, touched, touched),
                (base, base + first_of * row_bytes, base + last_lo * row_bytes),
                (first_len, tf.fill(tf.shape(touched), tf.constant(block_rows, tf.int64)), last_len),
                (tf.ones_like(touched), scanned, tf.ones_like(touched)),
                (tf.zeros_like(touched), tf.ones_like(touched), tf.zeros_like(touched)),
            )
        ]
        keep = tf.logical_and(table[2] > 0, table[3] > 0)
        parts = tuple(tf.boolean_mask(t, keep) for t in table)

        def read_part(f: Any, header: Any, rows: Any, n: Any, is_scan: Any) -> Any:
            size = rows * row_bytes
            records = tf.data.FixedLengthRecordDataset(
                paths[f],
                record_bytes=size,
                header_bytes=header,
                footer_bytes=ends[f] - header - size * n,
                buffer_size=tf.minimum(size, _MAX_READ_BUFFER),
            )

            def kept(i: Any, _: Any) -> Any:
                # Not a scan, or past its end (a file that grew: the reshape fails), or a wanted block.
                return tf.logical_or(tf.logical_or(tf.equal(is_scan, 0), i >= n), _contains(wanted, f * most + i))

            # Records not wanted are read (the scan passes over them) but neither kept nor decoded.
            return records.enumerate().filter(kept)

        records = tf.data.Dataset.from_tensor_slices(parts).flat_map(read_part).map(lambda _, r: r)
        return records, length

    def read(splits: Any, index: Any, starts: Any, stops: Any) -> Any:
        """Sequential row ranges as a dataset of batches: the pieces laid end to end (one copy), then sliced."""
        # A file that changed size gives a missing or an extra record: the reshape to the rows wanted fails.
        total = tf.reduce_sum(stops - starts)
        file, first, length = pieces(starts, stops)
        records = tf.data.Dataset.from_tensor_slices((file, first, length)).flat_map(read_piece).map(decode)
        rows = records.ragged_batch(tf.size(file, out_type=tf.int64) + 1).map(
            lambda r: tf.reshape(r.flat_values, [total, *row_shape])
        )
        batches = tf.size(splits, out_type=tf.int64) - 1

        def batch(buffer: Any, j: Any) -> Any:
            lo, hi = splits[j], splits[j + 1]
            return buffer[index[lo] : index[lo] + hi - lo]

        return rows.flat_map(lambda buffer: tf.data.Dataset.range(batches).map(lambda j: batch(buffer, j)))

    def load(index: Any, starts: Any, stops: Any) -> tuple[Any, Any]:
        """Whole blocks as one tensor, each piece padded to a block (a dense batch: ``ragged_batch`` copies several
        times slower), and where each of ``index`` (a row of the blocks laid end to end) lies in it."""
        records, length = blocks(starts, stops)
        count = tf.size(length, out_type=tf.int64)
        rows = records.map(lambda r: tf.reshape(decode(r), [-1, *row_shape])).padded_batch(
            count + 1, padded_shapes=[block_rows, *row_shape]
        )
        # One element of ``count`` pieces: a file that changed size gives a missing or an extra record, and fails.
        buffer = tf.reshape(rows.get_single_element(), [count * block_rows, *row_shape])
        first_of = tf.cumsum(length, exclusive=True)  # each piece's first row, laid end to end
        piece = tf.searchsorted(first_of, index, side="right") - 1
        return buffer, tf.cast(piece, tf.int64) * block_rows + index - tf.gather(first_of, piece)

    return read, scan, load


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
    # tf.nest.flatten order of the source's structure (dict keys sorted), matching ``spec``.
    flat_keys = sorted(range(len(source.keys)), key=lambda j: source.keys[j]) if source.kind == "dict" else None
    readers = []
    for key, array in zip(source.keys, source.arrays, strict=True):
        where = f"{array.paths[0]} (column {key!r})" if source.kind != "array" else array.paths[0]
        readers.append(_column_reader(array, where, None if isinstance(order, Sequential) else order.block_rows))
    batches = len(loader)
    if isinstance(order, Sequential):
        dataset = _sequential(loader, readers, batches, epochs, source, flat_keys)
        return _finish(dataset, source, spec)
    assert isinstance(order, BlockShuffle)
    cycle = num_parallel_calls or _PASS_CYCLE
    group = _group_batches(loader, order, cycle)
    groups = -(-batches // group)
    plan = _group_plan(loader, order, group)

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


def _sequential(loader: Loader, readers: list[Any], batches: int, epochs: int | None, source: Any, keys: Any) -> Any:
    """Sequential epochs: ``_SEGMENTS`` segments of batches, each scanned front to back and re-cut (``rebatch``).

    A segment is a ``Dataset.range`` element (under tf.data service's ``distributed_epoch``, whole segments go to
    workers). Worker ``i`` of ``n`` scans the full rounds and keeps global batches ``i, i + n, ...``
    (``shard``: it reads ``n`` times its rows), then reads its share of the tail by the group path.
    """
    tf = _tf()
    layout = loader.layout(-1)
    count, index, bs, rounds = layout.count, layout.index, layout.batch_size, layout.rounds
    num_rows = len(loader.source)
    scanned = batches if count == 1 else rounds  # batches read by scans; a worker of several reads its tail apart
    per_segment = max(1, -(-scanned // _SEGMENTS))
    segments = -(-scanned // per_segment)
    tail = 1 if batches > scanned else 0
    per_epoch = segments + tail
    plan = _group_plan(loader, Sequential(num_rows), 1) if tail else None

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
