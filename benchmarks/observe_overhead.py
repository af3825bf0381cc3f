"""What measuring the data wait costs (loader.metrics): the hooks' time per batch against an epoch's time.

Two measures of the Loader's own hooks, on the same warm file: (1) the hooks the read path runs per read task the
consumer takes (two clock reads and one ``record_chunk``) timed alone over many calls, times the epoch's read
tasks, as a fraction of the epoch's time; (2) whole epochs with the hooks in place and with them replaced by
no-ops, alternated, medians compared (noisy on a shared machine: (1) is the number to trust).

With ``--tf``, the stage that counts the wait inside a ``to_tf_dataset()`` pipeline (npyfeed.adapters.tf_wait),
on the same Loader, alternated in one process: ``data_wait=False`` (the reference), ``data_wait=True`` (its maps
inline, on TensorFlow's single-threaded executor) and, with ``--public-maps``, ``data_wait=True`` built with
``Dataset.map`` (the fallback when that private argument is missing: a thread hop per call). (3) The pipeline drained
in C++ (``Dataset.reduce``: no consumer cost, so the stage's share is the largest it can be), CPU per element
(``time.process_time``, all threads) and wall per epoch; (4) a data-bound Keras epoch (one ``Dense`` layer on 1 KiB
rows, ``model.fit``), wall and CPU per epoch. Each variant's overhead is printed as ratios to the reference epoch
of the same round (medians over the rounds, and their range), and as extra CPU per element times the steps over
the reference Keras epoch's wall: its share of a data-bound epoch.

    .venv/bin/python -m benchmarks.observe_overhead                   # the Loader's hooks (1) and (2)
    .venv/bin/python -m benchmarks.observe_overhead --tf --only-tf    # the tf.data stage (3) and (4), ~1.5 min
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import npyfeed
from npyfeed.loader.metrics import DataWait


def hook_seconds(calls: int = 200_000) -> float:
    """Seconds per read task of the hooks the read path runs (one record per read task taken)."""
    m = DataWait()
    began = time.perf_counter()
    for _ in range(calls):
        asked = time.perf_counter()
        got = time.perf_counter()
        m.record_chunk(got - asked, 1, 32, 32 * 1024, asked=asked, queue=1e-5, depth=4, read=1e-4, transform=0.0)
    return (time.perf_counter() - began) / calls


class _Off(DataWait):
    def record_chunk(self, *a: Any, **k: Any) -> None:
        pass


def epoch_seconds(path: str, batch_size: int, off: bool) -> float:
    loader = npyfeed.Loader(path, batch_size=batch_size, shuffle=True, seed=0)
    if off:
        loader.read_path.metrics = _Off()
    began = time.perf_counter()
    for _ in loader:
        pass
    loader.close()
    return time.perf_counter() - began


def _tf_epoch(dataset: Any, run: Any) -> tuple[float, float]:
    """(wall s, CPU s of the whole process) of one pass of ``run(dataset)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run(dataset)
    return time.perf_counter() - wall, time.process_time() - cpu


def tf_stage(size_mib: int, repeats: int, public_maps: bool, batch_size: int = 256) -> None:
    """(3) and (4): the tf.data wait stage's variants against data_wait=False, alternated; prints ratios."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    from npyfeed.adapters import tf_wait

    with tempfile.TemporaryDirectory() as d:
        rows = size_mib * 1024
        x_path, y_path = str(Path(d) / "x.npy"), str(Path(d) / "y.npy")
        rng = np.random.default_rng(0)
        np.save(x_path, rng.standard_normal((rows, 256), dtype=np.float32))
        np.save(y_path, rng.standard_normal((rows, 1), dtype=np.float32))
        loader = npyfeed.Loader((x_path, y_path), batch_size=batch_size)
        steps = len(loader)
        datasets = {"off": loader.to_tf_dataset(), "on": loader.to_tf_dataset(data_wait=True)}
        if public_maps:
            inline = tf_wait.inline_maps
            tf_wait.inline_maps = lambda: False  # type: ignore[assignment]  # build the fallback's stage
            datasets["on, Dataset.map"] = loader.to_tf_dataset(data_wait=True)
            tf_wait.inline_maps = inline  # type: ignore[assignment]

        def drain(ds: Any) -> None:
            ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1).numpy()

        model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")

        def fit(ds: Any) -> None:
            model.fit(ds, epochs=1, verbose=0)

        names = list(datasets)
        drained_us: dict[str, float] = {}
        for measure, run in (("drained (Dataset.reduce)", drain), ("Keras fit, one Dense layer", fit)):
            for name in names:  # warm-up: tracing, page cache
                _tf_epoch(datasets[name], run)
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
            loads = []
            for r in range(repeats):
                for name in names if r % 2 == 0 else names[::-1]:
                    times[name].append(_tf_epoch(datasets[name], run))
                loads.append(os.getloadavg()[0])
            ref_wall = statistics.median(w for w, _ in times["off"])
            ref_cpu = statistics.median(c for _, c in times["off"])
            print(
                f"tf.data {measure}: {steps} elements of {batch_size} x 1 KiB; data_wait=False: epoch "
                f"{ref_wall:.3f} s, CPU {ref_cpu / steps * 1e6:.0f} us per element; "
                f"load average {min(loads):.1f}-{max(loads):.1f}"
            )
            for name in names[1:]:
                wall = [w / ref[0] for (w, _), ref in zip(times[name], times["off"], strict=True)]
                cpu = [c / ref[1] for (_, c), ref in zip(times[name], times["off"], strict=True)]
                extra_us = statistics.median(
                    (c - ref[1]) / steps * 1e6 for (_, c), ref in zip(times[name], times["off"], strict=True)
                )
                line = (
                    f"  {name}: epoch / same round's data_wait=False: wall {statistics.median(wall):.3f}x "
                    f"({min(wall):.3f}-{max(wall):.3f}x), CPU {statistics.median(cpu):.3f}x "
                    f"({min(cpu):.3f}-{max(cpu):.3f}x); CPU per element {extra_us:+.1f} us"
                )
                if measure.startswith("drained"):
                    drained_us[name] = extra_us
                else:
                    share = drained_us[name] * steps / 1e6 / ref_wall * 100
                    line += f"; drained extra CPU x {steps} steps = {share:.2f}% of the Keras epoch"
                print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tf", action="store_true", help="also measure the tf.data stage (data_wait=True/False)")
    parser.add_argument("--only-tf", action="store_true", help="only the tf.data stage")
    parser.add_argument(
        "--public-maps", action="store_true", help="also the tf.data stage built with Dataset.map (the fallback)"
    )
    a = parser.parse_args()
    if a.tf or a.only_tf:
        tf_stage(a.size_mib, a.repeats, a.public_maps)
    if a.only_tf:
        return
    per_batch = hook_seconds()
    print(f"hooks: {per_batch * 1e6:.2f} us per read task (load average {os.getloadavg()[0]:.1f})")
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "x.npy")
        rows = a.size_mib * 1024
        np.save(path, np.ones((rows, 256), np.float32))
        for batch_size in (32, 256, 4096):
            batches = -(-rows // batch_size)
            reads = -(-batches // npyfeed.Loader(path, batch_size=batch_size).batches_per_read)
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(a.repeats):
                for off in (False, True):
                    times[off].append(epoch_seconds(path, batch_size, off))
            on, off_ = statistics.median(times[False]), statistics.median(times[True])
            print(
                f"batch {batch_size}: {batches} batches, epoch {on:.3f} s with hooks, {off_:.3f} s without "
                f"({(on / off_ - 1) * 100:+.1f}%, noise); hooks alone ({reads} reads) "
                f"{per_batch * reads / on * 100:.3f}% of the epoch"
            )


if __name__ == "__main__":
    main()
