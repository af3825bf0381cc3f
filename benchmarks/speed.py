"""Issue 21's speed targets in one command: every number a ratio against references measured in the same run.

    .venv/bin/python -m benchmarks.speed                          # 1 GiB files, 3 interleaved runs (~30-40 min)
    .venv/bin/python -m benchmarks.speed --parts numpy            # the numpy path alone (~1 min)
    .venv/bin/python -m benchmarks.speed --size-gb 0.25 --runs 2  # a shared machine: shorter, still ratios
    .venv/bin/python -m benchmarks.speed --src before=/tmp/before/src   # + the same feeds from another src/ tree

Three parts, each in fresh processes on the same files:

1. Keras (``benchmarks.keras_epoch --model linear``): one Dense layer on 1 KiB rows (data-bound), shuffled and
   sequential, fed by in-memory arrays, ``to_tf_dataset()`` and the ``from_generator`` recipe, the feeds
   interleaved run by run; ratios of median last epochs to in-memory (target <= 1.05x) and to the recipe
   (<= 1.0x).
2. tf.data drained in a ``tf.function`` and eagerly (``benchmarks.tf_path``): ``to_tf_dataset()`` (and
   ``views=True`` in file order) against the recipe, npyfeed's numpy path and TensorFlow's per-element ceiling,
   12 KiB and 1 KiB rows, both orders.
3. The numpy path in file order (``benchmarks.numpy_path``): ``for batch in loader`` against one copy of the same
   rows from a mapping of the same file, 1 KiB and 12 KiB rows (target >= 0.9x; ~1 min).

With ``--src NAME=DIR`` every npyfeed feed also runs from that tree (``npyfeed@NAME``, ``default@NAME``), so a
change is measured before/after in the same run. Load averages are printed with each part: on a shared machine,
compare only ratios within a run.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from benchmarks import keras_epoch, numpy_path, tf_path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--size-gb", type=float, default=1.0, help="size of each row file in GiB")
    p.add_argument("--runs", type=int, default=3, help="runs per feed (Keras) and epochs per cell (tf.data)")
    p.add_argument("--epochs", type=int, default=3, help="Keras epochs per run (the last one is timed)")
    p.add_argument("--max-seconds", type=float, default=10.0, help="tf.data: time cap per epoch")
    p.add_argument("--src", action="append", default=[], help="NAME=DIR: also run npyfeed from this src/ tree")
    p.add_argument("--parts", default="keras,tf,numpy", help="of keras, tf, numpy")
    p.add_argument("--output", type=Path, help="also write the tables (markdown) here")
    args = p.parse_args(argv)
    names = [s.split("=", 1)[0] for s in args.src]
    src = [a for s in args.src for a in ("--src", s)]
    tables = []
    if "keras" in args.parts:
        feeds = ["memory", "npyfeed", *(f"npyfeed@{n}" for n in names), "recipe"]
        out = Path(os.devnull) if args.output is None else args.output.with_suffix(".keras.md")
        print(f"## Keras data-bound model (load average at start {os.getloadavg()[0]:.1f})", flush=True)
        keras_epoch.main(
            ["--model", "linear", "--size-gb", str(args.size_gb), "--epochs", str(args.epochs),
             "--runs", str(args.runs), "--orders", "shuffled,sequential", "--feeds", ",".join(feeds),
             "--data-dir", "data/bench/keras", "--output", str(out), *src]
        )  # fmt: skip
        if args.output is not None:
            tables.append("## Keras data-bound model\n\n" + out.read_text())
    if "tf" in args.parts:
        runners = ["default", *(f"default@{n}" for n in names), "views", "recipe", "numpy", "ceiling"]
        out = Path(os.devnull) if args.output is None else args.output.with_suffix(".tf.md")
        print(f"## tf.data (load average at start {os.getloadavg()[0]:.1f})", flush=True)
        tf_path.main(
            ["--size-gb", str(args.size_gb), "--runs", str(args.runs), "--max-seconds", str(args.max_seconds),
             "--runners", ",".join(runners), "--output", str(out), *src]
        )  # fmt: skip
        if args.output is not None:
            tables.append("## tf.data\n\n" + out.read_text())
    if "numpy" in args.parts:
        print(f"## numpy path, sequential (load average at start {os.getloadavg()[0]:.1f})", flush=True)
        table = numpy_path.main(["--size-gb", str(args.size_gb), *src])
        tables.append("## numpy path, sequential\n\n" + table)
    if args.output is not None:
        args.output.write_text("\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
