"""Epoch time of a Keras model fed by ``loader.to_tf_dataset()`` vs. the same model fed from memory and by the recipe.

    .venv/bin/python -m benchmarks.keras_epoch [--size-gb 2] [--epochs 2]
    .venv/bin/python -m benchmarks.keras_epoch --model linear [--size-gb 1]   # data-bound: the feed is the cost
    .venv/bin/python -m benchmarks.keras_epoch --model linear --runs 3 --orders shuffled,sequential \
        --feeds memory,npyfeed,npyfeed@before,recipe --src before=/tmp/before/src      # before/after, same run

``--model cnn`` (default) writes (or reuses) the quickstart's image dataset (12 KiB rows) and trains the
quickstart CNN. ``--model linear`` writes (or reuses) 1 KiB rows (256 float32) with int64 labels and trains one
``Dense`` layer on them: a model far cheaper than its input, so the epoch time is the feed's (the case of a GPU
or a small model). Each feed (``--feeds``) trains for ``--epochs`` epochs in a fresh process: from in-memory
arrays (``model.fit(x, y, shuffle=...)`` with the file loaded into RAM first: the reference, only possible while
the data fits in memory), from ``npyfeed.Loader(...).to_tf_dataset()``, from ``to_tf_dataset(native=True)``
(block-shuffled when shuffled: no Python in the feed), and from the usual ``np.memmap`` + ``from_generator``
recipe (header offset fixed, sorted gathers). ``FEED@NAME`` runs FEED with ``--src NAME=DIR`` (another ``src/``
tree) first on the path; ``npyfeed:KEY=INT:...`` passes keyword arguments to ``to_tf_dataset`` (experiments).

The last epoch's wall time is reported (the first includes tracing). ``--runs`` repeats every feed, interleaved
(run 1 of every feed, then run 2, ...), so a machine shared with others disturbs all feeds alike; the summary
gives each feed's median last epoch and its ratio to the in-memory and recipe feeds of the same run, with the
load average, and the CPU time the whole process used per batch of the last epoch (Keras' step, tf.data and the
feed's reads; ``CPU / in-memory``): on a shared machine the epoch time follows the load, the CPU per batch far less.
Targets (issue 21): npyfeed <= 1.05x in-memory and <= 1.0x the recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, os, resource, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf
import keras
sys.path.insert(0, os.path.join(os.getcwd(), "examples"))
from quickstart import build_model
import npyfeed

mode, images, labels, epochs, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
kind, shuffled, kwargs = sys.argv[6], sys.argv[7] == "shuffled", json.loads(sys.argv[8])
x_mm = np.load(images, mmap_mode="r")
n = len(x_mm)

if mode == "memory":  # Keras' own path for in-memory arrays: model.fit(x, y, batch_size, shuffle=True)
    ds = None
    x, y = np.load(images), np.load(labels)
elif mode == "npyfeed":
    loader = npyfeed.Loader((images, labels), batch, shuffle=shuffled, seed=0)
    ds = loader.to_tf_dataset(**kwargs)
elif mode == "native":  # no Python in the feed: a block shuffle in TensorFlow ops
    loader = npyfeed.Loader((images, labels), batch, shuffle="block" if shuffled else False, seed=0)
    ds = loader.to_tf_dataset(native=True, epochs=None, **kwargs)
else:  # the classic recipe, with the header offset fixed so rows are right
    y_mm = np.load(labels, mmap_mode="r")
    def gen():
        perm = np.random.default_rng().permutation(n) if shuffled else np.arange(n)
        for i in range(0, n, batch):
            idx = np.sort(perm[i:i + batch])
            yield x_mm[idx], y_mm[idx]
    sig = (tf.TensorSpec((None, *x_mm.shape[1:]), tf.as_dtype(x_mm.dtype)), tf.TensorSpec((None,), tf.int64))
    ds = tf.data.Dataset.from_generator(gen, output_signature=sig).repeat().prefetch(-1)

def cpu_s():  # the whole process: Keras' step, tf.data's threads and the feed's reads
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.cpu = time.perf_counter(), cpu_s()
    def on_epoch_end(self, epoch, logs=None):
        times.append(time.perf_counter() - self.start)
        cpus.append(cpu_s() - self.cpu)

times, cpus = [], []
if kind == "cnn":  # the same model everywhere: uint8 pixels in, scaled by the model's first layer
    inputs = keras.Input(x_mm.shape[1:], dtype="uint8")
    model = keras.Model(inputs, build_model()(keras.layers.Rescaling(1 / 255)(inputs)))
else:  # data-bound: one linear layer on 1 KiB rows
    inputs = keras.Input(x_mm.shape[1:], dtype="float32")
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(inputs))
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
steps = -(-n // batch)
if ds is None:
    history = model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[Timer()], shuffle=shuffled)
else:
    history = model.fit(ds, epochs=epochs, steps_per_epoch=None if mode == "npyfeed" else steps, verbose=0,
                        callbacks=[Timer()], shuffle=False)
print(json.dumps({"mode": mode, "load": os.getloadavg()[0], "epoch_seconds": times, "epoch_cpu_seconds": cpus,
                  "rows": n, "batch_size": batch,
                  "accuracy": float(history.history["accuracy"][-1])}))
"""


LINEAR_CLASSES = 10
LINEAR_FEATURES = 256  # 1 KiB float32 rows


def write_linear_dataset(directory: Path, size_gb: float, seed: int = 0) -> tuple[Path, Path]:
    """1 KiB float32 rows whose class shifts their mean along its own direction (learnable by a linear layer)."""
    x_path, y_path = directory / "x_linear.npy", directory / "y_linear.npy"
    rows = max(LINEAR_CLASSES * 10, int(size_gb * 2**30) // (4 * LINEAR_FEATURES))
    if x_path.exists() and y_path.exists():
        x = np.load(x_path, mmap_mode="r")
        if x.shape == (rows, LINEAR_FEATURES) and np.load(y_path, mmap_mode="r").shape == (rows,):
            print(f"reusing {x_path} ({x.nbytes / 1e9:.2f} GB)")
            return x_path, y_path
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, LINEAR_CLASSES, size=rows, dtype=np.int64)
    centers = rng.standard_normal((LINEAR_CLASSES, LINEAR_FEATURES), dtype=np.float32)
    x = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.float32, shape=(rows, LINEAR_FEATURES))
    for start in range(0, rows, 1 << 16):
        stop = min(start + (1 << 16), rows)
        x[start:stop] = rng.standard_normal((stop - start, LINEAR_FEATURES), dtype=np.float32) * 2
        x[start:stop] += centers[labels[start:stop]]
    x.flush()
    del x
    np.save(y_path, labels)
    return x_path, y_path


LABELS = {
    "memory": "in-memory arrays (model.fit(x, y))",
    "npyfeed": "npyfeed to_tf_dataset()",
    "native": "npyfeed native=True",
    "recipe": "memmap + from_generator",
}


def _feed(spec: str, sources: dict[str, str]) -> tuple[str, dict[str, int], str | None]:
    """``FEED[:KEY=INT...][@NAME]`` -> (mode, to_tf_dataset keyword arguments, src tree or None)."""
    spec, _, name = spec.partition("@")
    mode, *pairs = spec.split(":")
    if mode not in LABELS:
        raise SystemExit(f"unknown feed {mode!r}: use one of {', '.join(LABELS)}")
    if name and name not in sources:
        raise SystemExit(f"feed {spec}@{name} needs --src {name}=DIR")
    kwargs = {k: int(v) for k, v in (p.split("=", 1) for p in pairs)}
    return mode, kwargs, sources.get(name) if name else None


def _run_feed(spec: str, order: str, args: argparse.Namespace, images: Path, labels: Path) -> dict | str:
    """One feed's epochs in a fresh process: its report, or why it failed."""
    sources = dict(s.split("=", 1) for s in args.src)
    mode, kwargs, src = _feed(spec, sources)
    path = [src or "src", os.environ.get("PYTHONPATH", "")]
    argv = [str(a) for a in (mode, images, labels, args.epochs, args.batch_size, args.model, order)]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *argv, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
    )
    if out.returncode != 0:
        return f"failed ({out.returncode}): {out.stderr.strip().splitlines()[-1:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def _batches(report: dict) -> int:
    return -(-int(report["rows"]) // int(report["batch_size"]))


def summary(results: dict[tuple[str, str], list[dict]], feeds: list[str], orders: list[str]) -> str:
    """Markdown: each feed's median last epoch per order, and its ratios to in-memory and the recipe."""
    lines = [
        "| order | feed | last epoch s, median (runs) | / in-memory | / recipe | CPU ms/batch | CPU / in-memory "
        "| load avg |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for order in orders:
        med, cpu = {}, {}
        for feed in feeds:
            runs = results.get((order, feed), [])
            times = [r["epoch_seconds"][-1] for r in runs]
            if times:
                med[feed] = statistics.median(times)
                cpu[feed] = statistics.median(r["epoch_cpu_seconds"][-1] / _batches(r) * 1e3 for r in runs)
        for feed in feeds:
            runs = results.get((order, feed), [])
            if feed not in med:
                lines.append(f"| {order} | {feed} | failed | | | | | |")
                continue
            times = ", ".join(f"{r['epoch_seconds'][-1]:.2f}" for r in runs)
            ratio = {ref: f"{med[feed] / med[ref]:.2f}x" if ref in med else "" for ref in ("memory", "recipe")}
            load = ", ".join(f"{r['load']:.1f}" for r in runs)
            cpu_ratio = f"{cpu[feed] / cpu['memory']:.2f}x" if "memory" in cpu else ""
            lines.append(
                f"| {order} | {feed} | {med[feed]:.2f} ({times}) | {ratio['memory']} | {ratio['recipe']} "
                f"| {cpu[feed]:.2f} | {cpu_ratio} | {load} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data/quickstart"))
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--model",
        choices=("cnn", "linear"),
        default="cnn",
        help="cnn: the quickstart CNN on 12 KiB images; linear: one Dense layer on 1 KiB rows (data-bound)",
    )
    parser.add_argument(
        "--feeds",
        default="memory,npyfeed,native,recipe",
        help="of memory, npyfeed (to_tf_dataset()), native (to_tf_dataset(native=True), block shuffle), recipe; "
        "FEED@NAME uses --src NAME=DIR; npyfeed:KEY=INT passes to_tf_dataset arguments",
    )
    parser.add_argument("--orders", default="shuffled", help="shuffled, sequential, or both (comma-separated)")
    parser.add_argument("--runs", type=int, default=1, help="runs of every feed, interleaved")
    parser.add_argument("--src", action="append", default=[], help="NAME=DIR: a src/ tree for FEED@NAME")
    parser.add_argument("--output", type=Path, help="also write the summary (markdown) here")
    args = parser.parse_args(argv)

    if args.model == "cnn":
        sys.path.insert(0, str(Path("examples").resolve()))
        from quickstart import write_dataset

        images, labels = write_dataset(args.data_dir, args.size_gb)
    else:
        images, labels = write_linear_dataset(args.data_dir, args.size_gb)
    feeds, orders = args.feeds.split(","), args.orders.split(",")
    results: dict[tuple[str, str], list[dict]] = {}
    print(f"{'run':>3} {'order':<10} {'feed':<34} {'last epoch s':>12} {'rows/s':>10} {'load':>5}")
    for run in range(1, args.runs + 1):
        for order in orders:
            for feed in feeds:
                started = time.perf_counter()
                report = _run_feed(feed, order, args, images, labels)
                if isinstance(report, str):
                    print(f"{run:>3} {order:<10} {feed:<34} {report}")
                    continue
                results.setdefault((order, feed), []).append(report)
                last = report["epoch_seconds"][-1]
                cpu_ms = report["epoch_cpu_seconds"][-1] / _batches(report) * 1e3
                print(
                    f"{run:>3} {order:<10} {feed:<34} {last:>12.2f} {report['rows'] / last:>10,.0f} "
                    f"{report['load']:>5.1f}   (CPU {cpu_ms:.2f} ms/batch; all epochs "
                    f"{', '.join(f'{s:.2f}' for s in report['epoch_seconds'])}"
                    f" s; process {time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
    table = summary(results, feeds, orders)
    print()
    print(table)
    if args.output:
        args.output.write_text(table + "\n")


if __name__ == "__main__":
    main()
