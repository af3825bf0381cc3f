"""Quickstart: train a small Keras CNN on a ~2 GB image dataset stored as .npy, fed by npyfeed.

Writes ``images.npy`` (N x 64 x 64 x 3 uint8) and ``labels.npy`` (N int64) once, then trains with a shuffled,
reshuffled-every-epoch loader, a uint8 -> float32 preprocessing transform on the read threads, a validation split
that copies nothing, and a progress bar that knows its step count from the first epoch.

    python examples/quickstart.py --size-gb 2 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import npyfeed

IMAGE_SHAPE = (64, 64, 3)
NUM_CLASSES = 10


def write_dataset(directory: Path, size_gb: float, seed: int = 0) -> tuple[Path, Path]:
    """Synthetic but learnable images: each class adds its own colour gradient to uniform noise."""
    images_path, labels_path = directory / "images.npy", directory / "labels.npy"
    rows = max(NUM_CLASSES * 10, int(size_gb * 1e9) // int(np.prod(IMAGE_SHAPE)))
    if images_path.exists() and labels_path.exists():
        existing = npyfeed.open(str(images_path))
        if existing.shape == (rows, *IMAGE_SHAPE):
            print(f"reusing {images_path} ({existing.nbytes / 1e9:.2f} GB)")
            return images_path, labels_path
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size=rows, dtype=np.int64)
    ramp = np.linspace(0.0, 1.0, IMAGE_SHAPE[0], dtype=np.float32)
    patterns = np.empty((NUM_CLASSES, *IMAGE_SHAPE), np.float32)
    for c in range(NUM_CLASSES):
        angle = np.pi * c / NUM_CLASSES
        field = np.cos(angle) * ramp[:, None] + np.sin(angle) * ramp[None, :]
        patterns[c] = (field[..., None] * np.array([1.0, 0.5 + 0.05 * c, 1.0 - 0.1 * c]) * 140).astype(np.float32)
    images = np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=(rows, *IMAGE_SHAPE))
    started, chunk = time.perf_counter(), 4096
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        noise = rng.integers(0, 115, size=(stop - start, *IMAGE_SHAPE), dtype=np.uint8)
        images[start:stop] = noise + patterns[labels[start:stop]].astype(np.uint8)
    images.flush()
    del images
    np.save(labels_path, labels)
    size = images_path.stat().st_size
    print(f"wrote {rows} images ({size / 1e9:.2f} GB) in {time.perf_counter() - started:.1f} s to {directory}")
    return images_path, labels_path


def to_float(batch: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessing on npyfeed's read threads: uint8 pixels -> float32 in [0, 1]."""
    images, labels = batch
    return images.astype(np.float32) * np.float32(1 / 255), labels


def build_model():  # type: ignore[no-untyped-def]
    import keras

    return keras.Sequential(
        [
            keras.Input(IMAGE_SHAPE),
            keras.layers.AveragePooling2D(2),
            keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data/quickstart"))
    parser.add_argument("--size-gb", type=float, default=2.0, help="size of the image file to write (default 2)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--validation", type=float, default=0.1, help="fraction of rows kept for validation")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    images, labels = write_dataset(args.data_dir, args.size_gb)

    # One line replaces memmap + generator + from_generator: aligned (x, y), shuffled per epoch, preprocessed.
    train, val = npyfeed.split((str(images), str(labels)), 1 - args.validation)
    train_loader = npyfeed.Loader(train, args.batch_size, shuffle=True, seed=0, transform=to_float)
    val_loader = npyfeed.Loader(val, args.batch_size, transform=to_float)
    print(f"train: {len(train)} rows in {len(train_loader)} batches; validation: {len(val)} rows")

    model = build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(
        train_loader.to_tf_dataset(),
        validation_data=val_loader.to_tf_dataset(),
        epochs=args.epochs,
        shuffle=False,  # the loader already reshuffles rows every epoch
    )
    accuracy = history.history["val_accuracy"][-1]
    print(f"final validation accuracy: {accuracy:.3f} (chance is {1 / NUM_CLASSES:.3f})")


if __name__ == "__main__":
    main()
