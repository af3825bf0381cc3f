"""Does npyfeed keep a GPU busy? Training-step throughput fed from a .npy file vs. data already on the GPU.

Runs on a machine with CUDA and PyTorch (no TensorFlow needed)::

    PYTHONPATH=src python -m benchmarks.gpu_feed --size-gb 4 --steps 400

It writes 64x64x3 uint8 images with int64 labels, then times the same small CNN training step fed three ways:

- ``on-GPU batch (limit)``: one batch already on the GPU, reused: the step's own speed, no input pipeline;
- ``npyfeed Loader -> pinned -> cuda``: a shuffled ``npyfeed.Loader`` (numpy batches from read threads), copied
  into a pinned buffer and sent with ``non_blocking=True``;
- ``torch DataLoader (workers)``: a map-style Dataset on ``np.load(mmap_mode="r")``, ``shuffle=True``,
  ``num_workers`` processes, ``pin_memory=True``: the usual PyTorch recipe.

Each feed is checked: labels arrive aligned with their images (every image's first pixel encodes its label).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

SHAPE = (64, 64, 3)


def write_data(directory: Path, size_gb: float) -> tuple[Path, Path]:
    x_path, y_path = directory / "gpu_x.npy", directory / "gpu_y.npy"
    rows = int(size_gb * 2**30) // int(np.prod(SHAPE))
    if x_path.exists() and np.load(x_path, mmap_mode="r").shape[0] == rows:
        return x_path, y_path
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, rows, dtype=np.int64)
    x = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.uint8, shape=(rows, *SHAPE))
    for start in range(0, rows, 8192):
        stop = min(start + 8192, rows)
        chunk = rng.integers(0, 255, (stop - start, *SHAPE), dtype=np.uint8)
        chunk[:, 0, 0, 0] = labels[start:stop]  # lets every feed prove images and labels stay aligned
        x[start:stop] = chunk
    x.flush()
    del x
    np.save(y_path, labels)
    return x_path, y_path


WIDTH = [1]  # channel multiplier (--width): 1 is dispatch-bound on a big GPU, 4 is compute-bound


def make_model(torch: Any) -> Any:
    nn = torch.nn
    w = WIDTH[0]
    return nn.Sequential(
        nn.Conv2d(3, 64 * w, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(64 * w, 128 * w, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(128 * w, 256 * w, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256 * w, 10),
    ).cuda()


def train(torch: Any, batches: Any, steps: int, label: str) -> float:
    """Images per second over ``steps`` training steps (after 20 warm-up steps)."""
    model = make_model(torch).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    seen = 0
    start = None
    for step, (x, y) in enumerate(batches):
        if step == 20:
            torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        x = x.permute(0, 3, 1, 2).float().div_(255)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += y.shape[0]
        if step + 1 >= steps + 20:
            break
    torch.cuda.synchronize()
    rate = seen / (time.perf_counter() - (start or time.perf_counter()))
    print(f"{label:<40} {rate:>12,.0f} images/s", flush=True)
    return rate


def npyfeed_batches(torch: Any, x_path: Path, y_path: Path, batch: int, threads: int | None = None) -> Any:
    import npyfeed

    loader = npyfeed.Loader(
        (str(x_path), str(y_path)), batch, shuffle=True, seed=0, drop_remainder=True, num_threads=threads
    )
    pinned_x = [torch.empty((batch, *SHAPE), dtype=torch.uint8).pin_memory() for _ in range(2)]
    pinned_y = [torch.empty((batch,), dtype=torch.int64).pin_memory() for _ in range(2)]
    copied = [torch.cuda.Event() for _ in range(2)]
    while True:
        for i, (x, y) in enumerate(loader):
            assert np.array_equal(x[:, 0, 0, 0], y.astype(np.uint8)), "images and labels out of step"
            slot = i % 2
            copied[slot].synchronize()  # the copy that last used this pinned buffer has finished
            pinned_x[slot].numpy()[...] = x
            pinned_y[slot].numpy()[...] = y
            gx, gy = pinned_x[slot].cuda(non_blocking=True), pinned_y[slot].cuda(non_blocking=True)
            copied[slot].record()
            yield gx, gy


def dataloader_batches(torch: Any, x_path: Path, y_path: Path, batch: int, workers: int) -> Any:
    class Rows(torch.utils.data.Dataset):  # type: ignore[name-defined]
        def __init__(self) -> None:
            self.x = np.load(x_path, mmap_mode="r")
            self.y = np.load(y_path, mmap_mode="r")

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> tuple[Any, Any]:
            return torch.from_numpy(np.array(self.x[i])), int(self.y[i])

    data = torch.utils.data.DataLoader(
        Rows(),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=True,
        drop_last=True,
        persistent_workers=True,
    )
    while True:
        for x, y in data:
            assert torch.equal(x[:, 0, 0, 0].long(), y), "images and labels out of step"
            yield x.cuda(non_blocking=True), y.cuda(non_blocking=True)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "npyfeed-gpu")
    parser.add_argument("--size-gb", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[0], help="npyfeed read threads to try (0: default)")
    parser.add_argument("--width", type=int, default=1, help="channel multiplier of the CNN (GPU work per image)")
    args = parser.parse_args()
    WIDTH[0] = args.width

    print(f"device: {torch.cuda.get_device_name()}, cores: {os.cpu_count()}, torch {torch.__version__}")
    x_path, y_path = write_data(args.data_dir, args.size_gb)
    print(f"data: {x_path.stat().st_size / 2**30:.2f} GiB of 64x64x3 uint8 images, batch {args.batch_size}")
    torch.backends.cudnn.benchmark = True
    x0 = torch.randint(0, 255, (args.batch_size, *SHAPE), dtype=torch.uint8, device="cuda")
    y0 = torch.randint(0, 10, (args.batch_size,), device="cuda")

    def fixed() -> Any:
        while True:
            yield x0, y0

    limit = train(torch, fixed(), args.steps, "on-GPU batch (limit)")
    fed = 0.0
    for threads in args.threads:
        label = f"npyfeed Loader ({threads or 'default'} threads) -> cuda"
        batches = npyfeed_batches(torch, x_path, y_path, args.batch_size, threads or None)
        fed = max(fed, train(torch, batches, args.steps, label))
    base = train(
        torch,
        dataloader_batches(torch, x_path, y_path, args.batch_size, args.workers),
        args.steps,
        f"torch DataLoader ({args.workers} workers)",
    )
    print(
        f"npyfeed keeps the GPU at {fed / limit:.0%} of its no-input-pipeline speed; "
        f"the DataLoader recipe at {base / limit:.0%}; npyfeed / DataLoader = {fed / base:.1f}x"
    )


if __name__ == "__main__":
    main()
