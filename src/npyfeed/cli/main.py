"""The ``npyfeed`` command line: the parser and its dispatch; each subcommand is a module of :mod:`npyfeed.cli`.

``npyfeed inspect FILE...`` validates ``.npy`` headers and prints what npyfeed sees in each file, without reading
any array data (:mod:`npyfeed.cli.inspect`); ``npyfeed bench FILE...`` measures an epoch
(:mod:`npyfeed.cli.bench`); ``npyfeed convert SOURCE... DEST`` rewrites data in the layout that reads fastest
(:mod:`npyfeed.cli.convert`); ``npyfeed plot-wait WAIT.jsonl -o wait.png`` draws the data wait per training step
(:mod:`npyfeed.cli.plot_wait`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from npyfeed import arguments as args_rule
from npyfeed.cli import bench as bench_command
from npyfeed.cli import convert as convert_command
from npyfeed.cli import inspect as inspect_command
from npyfeed.cli import plot_wait as plot_wait_command
from npyfeed.errors import ConfigError
from npyfeed.format import MAX_HEADER_SIZE

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        status: int = args.run(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `npyfeed inspect ... | head`: the reader left; stop quietly, as cat does
        _silence_stdout()
        return 1
    return status


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of the closed pipe raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout replaced by something without a file descriptor
        pass


def _parser() -> argparse.ArgumentParser:
    from npyfeed import __version__

    parser = argparse.ArgumentParser(prog="npyfeed", description="Feed .npy files larger than RAM into training.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    inspect = commands.add_parser(
        "inspect",
        help="validate .npy files and show their layout",
        description="Validate the header of each .npy file and show its layout, without reading the data. "
        "FILE may be a glob, a URL (s3://, gs://, https://; globs over bucket prefixes) or a member of an .npz "
        "archive (data.npz:images). Exit status 1 if any file is invalid or missing.",
    )
    inspect.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help=".npy files, globs (quoted: 'x_*.npy'), URLs (s3://b/x_*.npy) or .npz members (data.npz:images)",
    )
    inspect.add_argument("--json", action="store_true", help="print one JSON list with an object per file")
    inspect.add_argument(
        "--max-header-size",
        type=int,
        default=MAX_HEADER_SIZE,
        metavar="BYTES",
        help=f"accept headers up to this size (default {MAX_HEADER_SIZE}, as NumPy; raise only for trusted files)",
    )
    inspect.add_argument(
        "--storage-option",
        action="append",
        default=[],
        type=_storage_option,
        metavar="KEY=VALUE",
        help="object-store setting for URLs (repeatable), as for bench",
    )
    inspect.set_defaults(run=inspect_command.run)

    bench = commands.add_parser(
        "bench",
        help="measure read throughput on your files or objects",
        description="Run epochs of a Loader over FILE(s) (several files are read as aligned columns, like (x, y)) "
        "with a progress bar; print rows/s, MB/s, the raw sequential read speed of the same files measured in the "
        "same run, peak memory, and the settings it would recommend. FILE may be a URL (s3://, gs://, https://): "
        "the report then adds requests/s, bytes asked vs fetched, rows per request, request latency and requests "
        "in flight, against one large ranged GET per object as the raw sequential read.",
    )
    bench.add_argument("files", nargs="+", metavar="FILE", help=".npy files or URLs: one array, or aligned columns")
    bench.add_argument("--batch-size", type=int, default=256, metavar="N")
    bench.add_argument("--shuffle", choices=["none", "global", "block"], default="none")
    bench.add_argument("--threads", type=int, default=None, metavar="N", help="read threads (default: cores)")
    bench.add_argument("--prefetch", type=int, default=None, metavar="N", help="batches read ahead (default: auto)")
    bench.add_argument("--epochs", type=int, default=1, metavar="N")
    bench.add_argument("--seconds", type=float, default=30.0, help="stop timing after this long (default 30)")
    bench.add_argument("--cold", action="store_true", help="drop the files from the page cache first")
    bench.add_argument("--no-sweep", action="store_true", help="skip the short num_threads x prefetch trials")
    bench.add_argument(
        "--no-autotune", action="store_true", help="time the Loader with autotune=False (today's fixed rule)"
    )
    bench.add_argument(
        "--storage-option",
        action="append",
        default=[],
        type=_storage_option,
        metavar="KEY=VALUE",
        help="object-store setting for URLs (repeatable): endpoint, region, skip_signature, max_concurrency, "
        "request_bytes=8MiB, ... (default: the standard environment, e.g. AWS_ENDPOINT_URL). Sizes: 8MB is "
        "8,000,000 bytes, 8MiB 8,388,608",
    )
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    bench.set_defaults(run=bench_command.run)

    convert = commands.add_parser(
        "convert",
        help="rewrite .npy data in the layout that reads fastest (C order, .npy, shards, dtype)",
        description="Convert SOURCE to DEST in bounded memory, written atomically: a Fortran-order file to C order, "
        "a member of an .npz archive (data.npz:images, stored or deflated) to .npy, many shards (a glob or "
        "several SOURCEs; URLs too, with --storage-option) to one file, or anything to shards (--shard-size), "
        "optionally casting (--dtype).",
    )
    convert.add_argument("paths", nargs="+", metavar="SOURCE... DEST", help="source(s), then the output path")
    convert.add_argument("--dtype", default=None, help="cast to this dtype, e.g. float32 or '<f4'")
    convert.add_argument(
        "--casting",
        choices=["no", "equiv", "safe", "same_kind", "unsafe"],
        default="same_kind",
        help="NumPy casting rule for --dtype (default same_kind: float64->float32 rounds, float->int refused, "
        "narrowing ints checked value by value; unsafe: NumPy's unchecked astype)",
    )
    convert.add_argument(
        "--shard-size",
        type=_size,
        default=None,
        metavar="SIZE",
        help="write DEST_000.npy... of at most SIZE (e.g. 64MB = 64,000,000 bytes, 64MiB = 2**26) in DEST's "
        "directory, which must be new or empty",
    )
    convert.add_argument(
        "--memory", type=_size, default=64 << 20, metavar="SIZE", help="rows held in memory at once (default 64MiB)"
    )
    convert.add_argument("--no-progress", action="store_true", help="no progress bar")
    convert.add_argument("--max-header-size", type=int, default=MAX_HEADER_SIZE, metavar="BYTES")
    convert.add_argument(
        "--storage-option",
        action="append",
        default=[],
        type=_storage_option,
        metavar="KEY=VALUE",
        help="object-store setting for URL sources (repeatable), as for bench",
    )
    convert.set_defaults(run=convert_command.run)

    plot_wait_command.add_parser(commands)
    return parser


def _storage_option(text: str) -> tuple[str, Any]:
    """``"max_concurrency=64"`` -> ``("max_concurrency", 64)``: npyfeed's counts become ints and its seconds floats,
    sizes for ``*_bytes`` keys may have a unit (``request_bytes=8MiB``), anything else stays a string (obstore
    parses its own keys, and a store key such as ``access_key_id`` is a string even when it is all digits)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if key.endswith("_bytes"):
        try:
            return key, args_rule.size(key, value.strip(), minimum=0)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    if key == "max_concurrency" and value.strip().isdigit():
        return key, int(value)
    if key in ("timeout", "connect_timeout", "deadline"):
        try:
            return key, float(value)
        except ValueError:
            pass  # refused by the storage layer, naming the option
    return key, value


def _size(text: str) -> int:
    """A size in the grammar of :func:`npyfeed.arguments.size`: ``"64MB"`` is 64,000,000, ``"64MiB"`` 67,108,864."""
    try:
        return args_rule.size("size", text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# -- inspect ------------------------------------------------------------------------------------------------------
