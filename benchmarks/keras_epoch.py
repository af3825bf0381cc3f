"""Epoch time of a Keras model fed by ``loader.to_tf_dataset()`` vs. the same model fed from memory.

    .venv/bin/python -m benchmarks.keras_epoch [--size-gb 2] [--epochs 2]
    .venv/bin/python -m benchmarks.keras_epoch --model linear [--size-gb 1]   # data-bound: the feed is the cost

``--model cnn`` (default) writes (or reuses) the quickstart's image dataset (12 KiB rows) and trains the
quickstart CNN. ``--model linear`` writes (or reuses) 1 KiB rows (256 float32) with int64 labels and trains one
``Dense`` layer on them: a model far cheaper than its input, so the epoch time is the feed's (the case of a GPU
or a small model). Each trains for ``--epochs`` epochs four ways (``--feeds``), each in a fresh process: from in-memory
arrays (``model.fit(x, y, shuffle=True)`` with the file loaded into RAM first: the reference, only possible while
the data fits in memory), from ``npyfeed.Loader(...).to_tf_dataset()`` shuffled, from
``to_tf_dataset(native=True)`` block-shuffled (no Python in the feed), and from the usual
``np.memmap`` + ``from_generator`` recipe (header offset fixed). The last epoch's wall time is reported (the
first includes tracing). Target (issue 10): npyfeed within 1.1x of the in-memory epoch on the linear model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf
import keras
sys.path.insert(0, os.path.join(os.getcwd(), "examples"))
from quickstart import build_model
import npyfeed

mode, images, labels, epochs, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
kind = sys.argv[6]
x_mm = np.load(images, mmap_mode="r")
n = len(x_mm)

if mode == "memory":  # Keras' own path for in-memory arrays: model.fit(x, y, batch_size, shuffle=True)
    ds = None
    x, y = np.load(images), np.load(labels)
elif mode == "npyfeed":
    loader = npyfeed.Loader((images, labels), batch, shuffle=True, seed=0)
    ds = loader.to_tf_dataset()
elif mode == "native":  # no Python in the feed: a block shuffle in TensorFlow ops
    loader = npyfeed.Loader((images, labels), batch, shuffle="block", seed=0)
    ds = loader.to_tf_dataset(native=True, epochs=None)
else:  # the classic recipe, with the header offset fixed so rows are right
    y_mm = np.load(labels, mmap_mode="r")
    def gen():
        perm = np.random.default_rng().permutation(n)
        for i in range(0, n, batch):
            idx = np.sort(perm[i:i + batch])
            yield x_mm[idx], y_mm[idx]
    sig = (tf.TensorSpec((None, *x_mm.shape[1:]), tf.as_dtype(x_mm.dtype)), tf.TensorSpec((None,), tf.int64))
    ds = tf.data.Dataset.from_generator(gen, output_signature=sig).repeat().prefetch(-1)

class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        times.append(time.perf_counter() - self.start)

times = []
if kind == "cnn":  # the same model everywhere: uint8 pixels in, scaled by the model's first layer
    inputs = keras.Input(x_mm.shape[1:], dtype="uint8")
    model = keras.Model(inputs, build_model()(keras.layers.Rescaling(1 / 255)(inputs)))
else:  # data-bound: one linear layer on 1 KiB rows
    inputs = keras.Input(x_mm.shape[1:], dtype="float32")
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(inputs))
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
steps = -(-n // batch)
if ds is None:
    history = model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[Timer()], shuffle=True)
else:
    history = model.fit(ds, epochs=epochs, steps_per_epoch=None if mode == "npyfeed" else steps, verbose=0,
                        callbacks=[Timer()], shuffle=False)
print(json.dumps({"mode": mode, "epoch_seconds": times, "rows": n,
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


def main() -> None:
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
        help="of memory, npyfeed (to_tf_dataset(), global shuffle), native (to_tf_dataset(native=True), block "
        "shuffle), recipe",
    )
    args = parser.parse_args()

    if args.model == "cnn":
        sys.path.insert(0, str(Path("examples").resolve()))
        from quickstart import write_dataset

        images, labels = write_dataset(args.data_dir, args.size_gb)
    else:
        images, labels = write_linear_dataset(args.data_dir, args.size_gb)
    print(f"{'feed':<34} {'last epoch s':>12} {'rows/s':>10} {'vs memory':>10}")
    results = {}
    for mode in args.feeds.split(","):
        started = time.perf_counter()
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                mode,
                str(images),
                str(labels),
                str(args.epochs),
                str(args.batch_size),
                args.model,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(["src", os.environ.get("PYTHONPATH", "")])},
        )
        if out.returncode != 0:
            print(f"{mode:<34} failed ({out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
            continue
        report = json.loads(out.stdout.strip().splitlines()[-1])
        results[mode] = report
        last = report["epoch_seconds"][-1]
        base = results.get("memory", report)["epoch_seconds"][-1]
        label = {
            "memory": "in-memory arrays (model.fit(x, y))",
            "npyfeed": "npyfeed to_tf_dataset()",
            "native": "npyfeed native=True, block",
            "recipe": "memmap + from_generator",
        }[mode]
        print(
            f"{label:<34} {last:>12.1f} {report['rows'] / last:>10,.0f} {base / last:>9.2f}x"
            f"   (all epochs {', '.join(f'{s:.1f}' for s in report['epoch_seconds'])} s; "
            f"process {time.perf_counter() - started:.0f} s)"
        )


if __name__ == "__main__":
    main()
