"""The native pipeline's reads: rows of ``.npy`` files by stock TensorFlow file ops, decoded as the header says.

``FixedLengthRecordDataset`` is the stock op that reads byte ranges, and it skips its header by *reading* it: a
read that starts at byte ``o`` of a file first reads ``o`` bytes. So every read here is a scan from the front of
a file (sequential segments, block-shuffled passes), or a piece near the front. Big-endian files are decoded as
such; a file whose size changed fails its read or its reshape: an error, never a short batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from npyfeed.adapters.frameworks import require_tensorflow as _tf
from npyfeed.errors import ConfigError
from npyfeed.sources import ConcatArray, NpyArray

__all__ = ["column_reader"]

_MAX_READ_BUFFER = 1 << 20  # FixedLengthRecordDataset read buffer per piece: the piece itself, at most 1 MiB
_SCAN_BYTES = 1 << 20  # records of a sequential scan: about 1 MiB


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


def column_reader(array: Any, where: str, block_rows: int | None) -> tuple[Any, Any, Any]:
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
        touched, of = tf.unique(file)  # the files this pass reads, and each piece's place among them
        n = tf.size(touched)

        def per_file(values: Any, mask: Any, reduce: Any) -> Any:
            return reduce(tf.where(mask, values, tf.zeros_like(values)), of, n)  # >= 0: every file has a piece

        first = tf.logical_and(~whole, tf.equal(lo, 0))
        last = tf.logical_and(~whole, lo > 0)
        first_len = per_file(length, first, tf.math.unsorted_segment_sum)
        last_len = per_file(length, last, tf.math.unsorted_segment_sum)
        last_lo = per_file(lo, last, tf.math.unsorted_segment_max)
        scanned = per_file(record + 1, whole, tf.math.unsorted_segment_max)
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
