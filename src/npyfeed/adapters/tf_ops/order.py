"""The native pipeline's epoch order in TensorFlow ops: which rows each batch holds, byte-identical to the loader.

The same keyed Feistel network and cycle walking as :class:`npyfeed.order.orders.GlobalShuffle`, inside
:class:`npyfeed.order.orders.BlockShuffle`'s windows, in TF ``uint64`` arithmetic (which wraps modulo 2**64, as NumPy's
does), and the Loader's shard layout (worker ``i`` of ``n`` reads global batches ``i, i + n, ...``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from npyfeed.adapters.frameworks import require_tensorflow as _tf
from npyfeed.order.orders import BlockShuffle, Sequential, mix64, unwrap

if TYPE_CHECKING:
    from npyfeed.adapters.feed import Feed

__all__ = ["group_plan", "rows_op", "worker_batches"]

_ROUNDS = 6  # as npyfeed.order.orders
_GOLDEN = 0x9E3779B97F4A7C15
_ROUND_STEP = 0x632BE59BD9B4E019


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


def worker_batches(loader: Feed) -> tuple[int, int, int, int, int, int, int]:
    """This worker's share of an epoch: ``(count, index, batch_size, start, rounds, tail_lo, tail_hi)``, where
    batch ``k < rounds`` starts at row position ``start + (k * count + index) * batch_size`` and the tail batch
    holds positions ``[tail_lo, tail_hi)`` (the rows after the last full round, shared out as the Loader does)."""
    layout = loader.layout()
    tail_lo, tail_hi = layout.positions(layout.rounds)  # the tail batch (empty when there is none)
    return layout.count, layout.index, layout.batch_size, layout.start, layout.rounds, tail_lo, tail_hi


def rows_op(loader: Feed) -> Any:
    """``rows(epoch, index)``: the sorted rows of batch ``index`` of ``epoch`` in TF ops (``loader.batch_rows``)."""
    tf = _tf()
    order = unwrap(loader.order)
    count, index, bs, start, rounds, tail_lo, tail_hi = worker_batches(loader)

    def rows(epoch: Any, k: Any) -> Any:
        lo = tf.where(k < rounds, start + (k * count + index) * bs, tf.constant(tail_lo, tf.int64))
        hi = tf.where(k < rounds, lo + bs, tf.constant(tail_hi, tf.int64))
        positions = tf.range(lo, hi, dtype=tf.int64)
        if isinstance(order, Sequential):
            return positions
        assert isinstance(order, BlockShuffle)
        return tf.sort(_block_rows(order, epoch, positions))

    return rows


def group_plan(loader: Feed, order: Any, group: int) -> Any:
    """``plan(epoch, first, stop) -> (row_splits, index, starts, ends)`` for the worker's batches ``[first, stop)``.

    ``starts``/``ends`` are the sorted, disjoint row ranges to read (runs of the batches' rows when sequential,
    the whole blocks they touch when block-shuffled); ``index`` is each batch row's position in the rows of those
    ranges, laid end to end; batch ``j`` is ``index[row_splits[j]:row_splits[j + 1]]``.
    """
    tf = _tf()
    count, index, bs, start, rounds, tail_lo, tail_hi = worker_batches(loader)
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
