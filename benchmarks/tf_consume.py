"""One cell of ``benchmarks.tf_path`` in a fresh process: ``python -m benchmarks.tf_consume CELL.json OUT.json``.

A cell is one loader (``default``: ``to_tf_dataset()``; ``views``: ``to_tf_dataset(views=True)``, file order only;
``native``: ``to_tf_dataset(native=True)``; ``recipe``:
memmap + ``from_generator``; ``ceiling``: the file held as one tensor, batches sliced from it without a copy,
TensorFlow's own per-element cost; ``numpy``: ``for b in loader``) on one dataset and order. It builds the loader
once, then times ``runs`` epochs per way of consuming, taking turns (graph, eager, graph, eager, ...):

- **graph**: the way ``model.fit`` drains a dataset: a ``tf.function`` over the iterator (a ``tf.while_loop`` of
  ``get_next_as_optional``), 1, 2, 4, ... up to ``--segment`` batches per call, that touches one byte per 4 KiB
  of every batch (a strided sum) and returns each row's id (its first 8 bytes) and whether the labels equal the
  ids. Every 8th segment one batch is taken eagerly and kept for the content check.
- **eager**: a Python ``for`` over the dataset (the numpy path: over the loader), the same touch in NumPy.

Each epoch is one fresh iterator, timed from ``iter()`` to its end (or ``max_seconds`` after its start), and
checked by :class:`benchmarks.verify.EpochChecker`: ids never repeat, a full epoch has each once, the order
asked for, labels equal to the ids, sampled batches equal to ``np.load``'s rows. A graph epoch also records its
fixed costs: the CPU and wall time of ``iter()`` (tf.data instantiates the pipeline's functions for each iterator)
and the wall time to its first batch.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cpu import CpuMeter
from benchmarks.data import BenchFiles
from benchmarks.spec import Job, as_pair
from benchmarks.verify import EpochChecker

__all__ = ["main", "run_cell"]

TOUCH_BYTES = 4096
_SAMPLE_EVERY = 8  # segments


def _source(files: BenchFiles) -> Any:
    return files.x if files.y is None else (files.x, files.y)


def _loader(cell: dict[str, Any], shuffle: Any) -> Any:
    import npyfeed

    files = BenchFiles(**cell["files"])
    return npyfeed.Loader(_source(files), batch_size=cell["batch_size"], shuffle=shuffle, seed=cell["seed"])


def build(cell: dict[str, Any]) -> Any:
    """The dataset (or, for ``numpy``, the loader) of a cell; each ``iter()`` of it is one epoch."""
    runner, shuffled = cell["runner"], cell["shuffle"]
    if runner == "numpy":
        return _loader(cell, shuffled)
    if runner == "default":
        return _loader(cell, shuffled).to_tf_dataset()
    if runner == "views":  # file order only: tf_path does not run it shuffled
        return _loader(cell, False).to_tf_dataset(views=True)
    if runner == "native":
        return _loader(cell, "block" if shuffled else False).to_tf_dataset(native=True, epochs=1)
    if runner in ("recipe", "ceiling"):
        from benchmarks.baselines_tf import ceiling_dataset, recipe_dataset

        files = BenchFiles(**cell["files"])
        job = Job("recipe", files, cell["batch_size"], shuffled, cell["max_seconds"], "warm", cell["seed"])
        return recipe_dataset(job) if runner == "recipe" else ceiling_dataset(job)
    raise ValueError(f"unknown runner {runner!r}")


def _numpy_touch(x: np.ndarray) -> float:
    flat = x.reshape(-1)
    return float(flat[:: max(1, TOUCH_BYTES // flat.itemsize)].sum(dtype=np.float64))


def _graph_drain(files: BenchFiles) -> Callable[[Any, Any], Any]:
    """A ``tf.function`` over an iterator: ``drain(iterator, steps)`` reads up to ``steps`` batches and returns
    ``(ids, batch sizes, labels_ok, touched, batches, more)``."""
    import tensorflow as tf

    kind = files.row_kind
    itemsize = np.dtype(kind.dtype).itemsize
    stride = max(1, TOUCH_BYTES // itemsize)
    id_items = 8 // itemsize  # the row's first 8 bytes, as this many elements

    def one(element: Any) -> tuple[Any, Any, Any]:
        x, y = element if isinstance(element, tuple) else (element, None)
        n = tf.shape(x)[0]
        ids = tf.reshape(tf.bitcast(tf.reshape(x, [n, -1])[:, :id_items], tf.int64), [n])
        ok = tf.constant(True) if y is None else tf.reduce_all(tf.equal(tf.reshape(y, [-1]), ids))
        touched = tf.reduce_sum(tf.cast(tf.reshape(x, [-1])[::stride], tf.float64))
        return ids, ok, touched

    @tf.function
    def drain(iterator: Any, steps: Any) -> Any:
        def body(i: Any, more: Any, ids: Any, sizes: Any, ok: Any, touched: Any) -> Any:
            opt = iterator.get_next_as_optional()

            def take() -> Any:
                b_ids, b_ok, b_touch = one(opt.get_value())
                ok_ = tf.logical_and(ok, b_ok)
                return ids.write(i, b_ids), sizes.write(i, tf.size(b_ids)), ok_, touched + b_touch, i + 1

            def stop() -> Any:
                return ids, sizes, ok, touched, i

            ids, sizes, ok, touched, i = tf.cond(opt.has_value(), take, stop)
            return i, opt.has_value(), ids, sizes, ok, touched

        ids = tf.TensorArray(tf.int64, size=0, dynamic_size=True, infer_shape=False, element_shape=[None])
        sizes = tf.TensorArray(tf.int32, size=0, dynamic_size=True)
        start = (tf.constant(0), tf.constant(True), ids, sizes, tf.constant(True), tf.constant(0.0, tf.float64))
        cond = lambda i, more, *_: tf.logical_and(more, i < steps)  # noqa: E731
        i, more, ids, sizes, ok, touched = tf.while_loop(cond, body, start)
        return ids.concat(), sizes.stack(), ok, touched, i, more

    return drain


def _graph_epoch(
    dataset: Any, drain: Callable[[Any, Any], Any], checker: EpochChecker, cell: dict[str, Any], setup: dict[str, float]
) -> tuple[bool, float]:
    """One epoch drained by ``drain``; returns (cut short by the time cap, the touch sum). ``setup`` receives the
    epoch's fixed costs: ``iter_cpu_ms`` (the process's CPU in ``iter()``, where tf.data instantiates the
    pipeline's functions), ``iter_ms`` (its wall time) and ``first_ms`` (wall time from ``iter()`` to the first
    batch)."""
    import tensorflow as tf

    start, cpu, segment, touch = time.perf_counter(), time.process_time(), 0, 0.0
    iterator = iter(dataset)
    setup["iter_cpu_ms"] = (time.process_time() - cpu) * 1e3
    setup["iter_ms"] = (time.perf_counter() - start) * 1e3
    while True:
        if segment % _SAMPLE_EVERY == 0:  # one batch taken eagerly, fully checked and kept
            opt = iterator.get_next_as_optional()
            if not opt.has_value():
                return False, touch
            setup.setdefault("first_ms", (time.perf_counter() - start) * 1e3)
            x, y = as_pair(tf.nest.map_structure(lambda t: t.numpy(), opt.get_value()))
            checker.add(x, y)
            checker.keep(x, y)
        steps = tf.constant(min(cell["segment"], 1 << segment))  # 1, 2, 4, ...: a slow loader meets the cap
        ids, sizes, ok, touched, batches, more = drain(iterator, steps)
        if int(batches):
            for part in np.split(ids.numpy(), np.cumsum(sizes.numpy())[:-1]):
                checker.add_ids(part, bool(ok))
        touch += float(touched)
        segment += 1
        if not bool(more):
            return False, touch
        if time.perf_counter() - start >= cell["max_seconds"]:
            return True, touch


def _eager_epoch(dataset: Any, checker: EpochChecker, cell: dict[str, Any]) -> tuple[bool, float]:
    """One epoch by a Python ``for``; returns (cut short by the time cap, the touch sum)."""
    start, touch = time.perf_counter(), 0.0
    for element in dataset:
        if cell["runner"] != "numpy":
            element = _to_numpy(element)
        x, y = as_pair(element)
        touch += _numpy_touch(x)
        checker.add(x, y)
        if time.perf_counter() - start >= cell["max_seconds"]:
            return True, touch
    return False, touch


def _to_numpy(element: Any) -> Any:
    if isinstance(element, tuple):
        return tuple(t.numpy() for t in element)
    return element.numpy()


def _epochs(cell: dict[str, Any]) -> Iterator[dict[str, Any]]:
    files = BenchFiles(**cell["files"])
    dataset = build(cell)
    ways = ["eager"] if cell["runner"] == "numpy" else ["graph", "eager"]
    drain = None
    if "graph" in ways:
        drain = _graph_drain(files)
        _graph_epoch(dataset.take(2), drain, EpochChecker(files, False, cell["batch_size"]), cell, {})  # trace it
    for run in range(cell["runs"]):
        for way in ways:
            checker = EpochChecker(files, cell["shuffle"], cell["batch_size"])
            cpu = CpuMeter()
            cpu.start()
            t0 = time.perf_counter()
            setup: dict[str, float] = {}
            if way == "graph":
                assert drain is not None
                cut, _ = _graph_epoch(dataset, drain, checker, cell, setup)
            else:
                cut, _ = _eager_epoch(dataset, checker, cell)
            seconds = time.perf_counter() - t0
            own, others = cpu.stop()
            problem = checker.verdict(complete=not cut)
            yield {
                "way": way,
                "run": run,
                "seconds": seconds,
                "rows": checker.rows,
                "gb_s": checker.rows * files.row_kind.sample_bytes / 1e9 / seconds if seconds > 0 else 0.0,
                "complete": not cut,
                "problem": problem,
                "cores_own": own,
                "cores_others": others,
                **setup,
            }


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Measure one cell; ``{"epochs": [...]}`` or ``{"error": ...}``."""
    try:
        return {"epochs": list(_epochs(cell))}
    except Exception as e:
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}"[:400]}


def main(argv: list[str]) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cell = json.loads(Path(argv[1]).read_text())
    Path(argv[2]).write_text(json.dumps(run_cell(cell)))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip teardown: an abandoned iterator's threads can block it


if __name__ == "__main__":
    main(sys.argv)
