"""The consumer's wait for a tf.data pipeline's elements, measured in the graph: no Python runs per element.

tf.data reads ahead on its own threads; what a training step loses is the time its ``IteratorGetNext`` blocks on
the pipeline's last ``prefetch``. :func:`with_wait` adds one stage after it: each element is zipped with a
timestamp taken when the consumer asks (``zip`` asks its inputs in order: the stamp first, then the prefetched
element), and a map, run inside the consumer's own ``GetNext`` call, takes a second timestamp once the element is
there and adds the wait to counters held in ``tf.Variable`` objects: a histogram over the account's buckets
(``loader.metrics.bucket_edges``), rows, bytes, the summed wait, the waits over 0.1 ms, the largest wait, the first
ask and the last delivery. ``loader.metrics`` pulls them on every ``snapshot()`` (a :class:`TfWait` is its
``WaitSource``), so ``DataWaitLogger``, JSON lines and the Prometheus endpoint see tf.data's batches like any
others.

**Cost.** A tf.data function call on TensorFlow's default executor hands its ops to the inter-op thread pool and
waits for them: two thread switches per call, ~100 us of CPU per call on a loaded 2-core machine, which is what
made this stage cost 8-28% of a data-bound Keras epoch (``Dataset.counter()`` is itself a ``scan``: a third call).
The stamp and the count are a few small ops, so both maps run on TensorFlow's single-threaded executor, inline in
the consumer's ``GetNext`` (``use_inter_op_parallelism=False``, the same private argument tf.data's own
``sample_from_datasets`` uses), and the asks are counted by ``Dataset.range``, which calls no function: about a
quarter of the CPU per element that ``Dataset.map`` stages cost in the same run (``python -m
benchmarks.observe_overhead --only-tf --public-maps``, benchmarks/RESULTS.md). Should that
argument go away in a later TensorFlow, :func:`inline_map` falls back to ``Dataset.map``: the same counts, at the
old cost (:func:`inline_maps` says which; a test pins it for the TensorFlow in use).

The stage must stay the last step the consumer runs itself: tf.data's ``inject_prefetch`` optimization, which
would add a prefetch after it (so that a background thread, not the consumer, waited), is switched off for the
dataset. A ``prefetch`` added downstream (or a distribution strategy's prefetch to devices) moves the measured wait
to that prefetch's thread the same way: measure there, or put nothing asynchronous after the dataset.
"""

from __future__ import annotations

import inspect
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from npyfeed.adapters.frameworks import require_tensorflow as _tf

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["TfWait", "inline_map", "inline_maps", "with_wait"]

_WAITED = 1e-4  # a wait over 0.1 ms counts as waited, as in loader.metrics
_TOTALS = 4  # after the histogram's buckets: rows, bytes, summed wait, waited elements
_NO_EXTREMES = [0.0, -np.inf, -np.inf]  # the largest wait, the last delivery, minus the first ask


class TfWait:
    """A dataset's deliveries counted in ``tf.Variable`` objects; :meth:`take` returns what was counted since its last
    call, in ``time.perf_counter()`` times (the ``WaitSource`` of ``loader.metrics``)."""

    def __init__(self, edges: Sequence[float], row_bytes: int) -> None:
        tf = _tf()
        self._edges = [float(e) for e in edges]
        self._buckets = len(self._edges) + 1
        self._row_bytes = float(row_bytes)
        size = self._buckets + _TOTALS
        # float64 counts: exact integers up to 2**53 elements or bytes; one scatter_add per element.
        self._counts = tf.Variable(tf.zeros([size], tf.float64), trainable=False, name="npyfeed_wait_counts")
        self._extremes = tf.Variable(_NO_EXTREMES, dtype=tf.float64, trainable=False, name="npyfeed_wait_extremes")
        self._taken = np.zeros(size)
        self._lock = threading.Lock()
        self._dataset: weakref.ref[Any] | None = None

    def watch(self, dataset: Any) -> None:
        """Count until ``dataset`` is gone (datasets and iterators built from it keep it): see :meth:`finished`."""
        self._dataset = weakref.ref(dataset)

    def finished(self) -> bool:
        """Whether the watched dataset is gone: nothing more can arrive, so ``loader.metrics`` lets this go."""
        return self._dataset is not None and self._dataset() is None

    def record(self, asked: Any, element: Any) -> Any:
        """The map after the zip: ``element``, once its wait (now minus ``asked``) is counted."""
        tf = _tf()
        got = tf.timestamp()
        wait = got - asked
        rows = tf.cast(tf.shape(tf.nest.flatten(element)[0])[0], tf.float64)
        where = tf.raw_ops.Bucketize(input=tf.reshape(wait, [1]), boundaries=self._edges)
        n = self._buckets
        # The extremes first, then the counts: take() reads the counts first, so the extremes of every element it
        # counts are already there when it reads them.
        top = self._extremes.scatter_max(tf.IndexedSlices(tf.stack([wait, got, -asked]), tf.range(3)))
        with tf.control_dependencies([top]):
            indices = tf.concat([where, tf.range(n, n + _TOTALS)], 0)
            waited = tf.cast(wait >= _WAITED, tf.float64)
            values = tf.stack([tf.constant(1.0, tf.float64), rows, rows * self._row_bytes, wait, waited])
            added = self._counts.scatter_add(tf.IndexedSlices(values, indices))
        with tf.control_dependencies([added]):
            return tf.nest.map_structure(tf.identity, element)

    def take(self) -> dict[str, Any] | None:
        """The counts since the last call as ``DataWait.add_counts`` keywords, or ``None`` if nothing arrived."""
        with self._lock:
            counts = self._counts.numpy()
            top = self._extremes.numpy()
            # An element counted after the read above but whose extremes land before this reset loses only its
            # extremes (its wait stays in the histogram and the sums).
            self._extremes.assign(_NO_EXTREMES)
            delta, self._taken = counts - self._taken, counts
        n = self._buckets
        histogram = {b: int(c) for b, c in enumerate(delta[:n]) if c}
        if not histogram:
            return None
        now, offset = time.perf_counter(), time.perf_counter() - time.time()  # tf.timestamp() is time.time()'s clock
        rows, nbytes, wait, waited = delta[n:]
        return {
            "histogram": histogram,
            "rows": int(rows),
            "nbytes": int(nbytes),
            "wait": float(wait),
            "waited": int(waited),
            "max_wait": float(top[0]),
            "first": float(-top[2] + offset) if np.isfinite(top[2]) else now,
            "last": float(top[1] + offset) if np.isfinite(top[1]) else now,
        }


def inline_maps() -> bool:
    """Whether :func:`inline_map` runs its function on the single-threaded executor (else it is ``Dataset.map``)."""
    try:
        from tensorflow.python.data.ops import map_op
    except ImportError:
        return False
    return "use_inter_op_parallelism" in inspect.signature(map_op._MapDataset).parameters


def inline_map(dataset: tf.data.Dataset, function: Any, name: str) -> tf.data.Dataset:
    """``dataset.map(function)``, its ops run on the calling thread with no hop to the inter-op pool (see the
    module docstring): for small functions that must run in the consumer's own ``GetNext``."""
    if not inline_maps():
        return dataset.map(function, name=name)
    from tensorflow.python.data.ops import map_op

    return map_op._MapDataset(dataset, function, use_inter_op_parallelism=False, preserve_cardinality=True, name=name)


def with_wait(dataset: tf.data.Dataset, wait: TfWait) -> tf.data.Dataset:
    """``dataset`` with each element's wait counted in ``wait`` (see the module docstring); same elements, spec
    and cardinality."""
    tf = _tf()
    stamp = tf.autograph.experimental.do_not_convert(lambda _: tf.timestamp())
    # range(), not counter() (a scan: one more function call per element); repeat(): an endless dataset stays so.
    asks = tf.data.Dataset.range(np.iinfo(np.int64).max).repeat()
    asked = inline_map(asks, stamp, name="npyfeed_asked")
    record = tf.autograph.experimental.do_not_convert(wait.record)
    counted = inline_map(tf.data.Dataset.zip((asked, dataset)), record, name="npyfeed_wait")
    options = tf.data.Options()
    options.experimental_optimization.inject_prefetch = False  # the consumer must run the stage itself
    return counted.with_options(options)
