"""The ``npyfeed`` command line: one function per subcommand, registered in :func:`_parser`.

``npyfeed inspect FILE...`` validates ``.npy`` headers and prints what npyfeed sees in each file, without reading
any array data. An invalid or missing file is reported in one line on stderr and makes the exit status 1; the
other files are still inspected; a Fortran-order or non-native file gets advice on what ``convert`` would improve.

``npyfeed convert SOURCE... DEST`` rewrites data in the layout that reads fastest (see :mod:`npyfeed.write.convert`).
"""

from __future__ import annotations

import argparse
import errno
import glob
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from npyfeed import arguments as args_rule
from npyfeed.errors import ConfigError, NpyfeedError
from npyfeed.format import MAX_HEADER_SIZE, NpyHeader, read_header, split_npz_spec
from npyfeed.sources.base import row_nbytes
from npyfeed.storage.urls import has_glob, is_url, parse_url, redact
from npyfeed.write.writer import describe_partial

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
    inspect.set_defaults(run=_inspect)

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
    bench.add_argument("--no-sweep", action="store_true", help="skip the short thread-count trials")
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
    bench.set_defaults(run=_bench)

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
    convert.set_defaults(run=_convert)
    return parser


def _storage_option(text: str) -> tuple[str, Any]:
    """``"max_concurrency=64"`` -> ``("max_concurrency", 64)``: whole numbers become ints, sizes for ``*_bytes``
    keys may have a unit (``request_bytes=8MiB``), anything else stays a string (obstore parses its own keys)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if key.endswith("_bytes"):
        try:
            return key, args_rule.size(key, value.strip(), minimum=0)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return key, int(value) if value.strip().lstrip("-").isdigit() else value


def _size(text: str) -> int:
    """A size in the grammar of :func:`npyfeed.arguments.size`: ``"64MB"`` is 64,000,000, ``"64MiB"`` 67,108,864."""
    try:
        return args_rule.size("size", text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# -- inspect ------------------------------------------------------------------------------------------------------
def _inspect(args: argparse.Namespace) -> int:
    status = 0
    reports: list[dict[str, Any]] = []
    options = dict(args.storage_option)
    for path in _expand(args.files, options):
        try:
            header = _read_header(path, args.max_header_size, options)
        except NpyfeedError as e:  # its message starts with the path
            partial = None if is_url(path) else describe_partial(path)
            error = str(e) if partial is None else f"{path}: {partial}"
        except OSError as e:
            error = f"{path}: cannot open: {e.strerror or e}"
        except ValueError as e:  # a URL npyfeed cannot read (its message names it)
            error = str(e)
        else:
            reports.append(_describe(header))
            if not args.json:
                if len(reports) > 1:
                    print()
                print(_format_text(reports[-1]))
            continue
        status = 1
        error = redact(error)
        print(f"npyfeed inspect: {error}", file=sys.stderr)
        reports.append({"path": redact(path), "valid": False, "error": error})
    if args.json:
        print(json.dumps(reports, indent=2))
    return status


def _expand(names: Sequence[str], storage_options: dict[str, Any]) -> Iterator[str]:
    """Each name, a glob replaced by what it matches (sorted), as ``npyfeed.open`` expands it; a glob that
    matches nothing is passed on, to be reported as missing."""
    for name in names:
        if is_url(name) and not name.startswith("file://"):
            if not has_glob(parse_url(name).key):
                yield name
                continue
            from npyfeed.storage.object_store import glob_objects

            try:
                matches = [url for url, _ in glob_objects(name, storage_options or None)]
            except (OSError, ValueError):  # reported by _read_header, which meets the same error
                matches = []
        else:
            matches = sorted(glob.glob(name)) if has_glob(name) and not os.path.exists(name) else []
        yield from matches or [name]


def _read_header(name: str, max_header_size: int, storage_options: dict[str, Any]) -> NpyHeader:
    """The header of a local file, of an ``.npz`` member, or of an object at a URL (one small ranged GET)."""
    if split_npz_spec(name) is not None and not os.path.exists(name):
        from npyfeed.write.convert import npz_member_header

        return npz_member_header(name, max_header_size=max_header_size)
    if not is_url(name):
        if has_glob(name) and not os.path.exists(name):
            raise FileNotFoundError(errno.ENOENT, "no file matches the pattern", name)
        return read_header(name, max_header_size=max_header_size)
    from npyfeed.format import load_header
    from npyfeed.storage import open_storage

    storage = open_storage(name, storage_options=storage_options or None)
    try:
        return load_header(storage, max_header_size=max_header_size)
    finally:
        storage.close()


def _describe(h: NpyHeader) -> dict[str, Any]:
    """What a valid header says, as JSON-able values."""
    rows = h.shape[0] if h.shape else None
    return {
        "path": h.path,
        "version": f"{h.version[0]}.{h.version[1]}",
        # e.g. "float64 '>f8'" (a readable name, then the header's descr), or the descr of a structured dtype
        "dtype": _dtype_text(h.dtype),
        "descr": np.lib.format.dtype_to_descr(h.dtype),
        "byte_order": _byte_order(h.dtype),
        "shape": list(h.shape),
        "rows": rows,
        "row_bytes": row_nbytes(h) if h.shape else None,
        "order": "Fortran" if h.fortran_order else "C",
        "header_bytes": h.data_offset,
        "data_bytes": h.data_bytes,
        "file_bytes": h.file_bytes,
        "trailing_bytes": h.trailing_bytes,
        "advice": _advice(h),
        "valid": True,
    }


def _advice(h: NpyHeader) -> list[str]:
    """What ``npyfeed convert`` would improve for reading by rows."""
    advice = []
    if h.fortran_order and len(h.shape) > 1:
        advice.append(
            "Fortran order is slow to read by rows: each row is scattered over the whole file, one element per "
            f"column; `npyfeed convert {h.path} OUT.npy` rewrites it in C order (one contiguous read per row)"
        )
    if _byte_order(h.dtype) == ("big-endian" if sys.byteorder == "little" else "little-endian"):
        native = h.dtype.newbyteorder("=")
        advice.append(
            "non-native byte order: every batch is byte-swapped before a framework can use it; "
            f"`npyfeed convert {h.path} OUT.npy --dtype '{native.str if native.fields is None else native}'` "
            "stores it natively"
        )
    return advice


def _format_text(report: dict[str, Any]) -> str:
    shape = tuple(report["shape"])
    rows = "none (a 0-d array: valid .npy, but npyfeed.open needs rows)" if report["rows"] is None else report["rows"]
    lines = [
        report["path"],
        ("format version", report["version"]),
        ("dtype", f"{report['dtype']} ({report['byte_order']})"),
        ("shape", shape),
        ("rows", rows),
        ("row bytes", "-" if report["row_bytes"] is None else report["row_bytes"]),
        ("order", report["order"]),
        ("header bytes", f"{report['header_bytes']} (data offset)"),
        ("data bytes", report["data_bytes"]),
        ("file size", f"{report['file_bytes']} bytes"),
    ]
    if report["trailing_bytes"]:
        lines.append(("trailing bytes", f"{report['trailing_bytes']} (after the array data, ignored)"))
    lines.extend(("advice", line) for line in report["advice"])
    lines.append(("valid", "yes"))
    return "\n".join(line if isinstance(line, str) else f"  {line[0]:<15} {line[1]}" for line in lines)


def _dtype_text(dtype: np.dtype[Any]) -> str:
    descr = repr(np.lib.format.dtype_to_descr(dtype))
    name = str(dtype.newbyteorder("="))  # "float64" for '>f8', but "<U3" for '>U3' and a list for a structure
    return descr if dtype.fields is not None or name[0] in "<>|=" else f"{name} {descr}"


def _byte_order(dtype: np.dtype[Any]) -> str:
    """``little-endian``, ``big-endian``, ``mixed byte order``, or ``no byte order`` (bytes, bools, ``S``...)."""
    orders = {_ORDER_NAMES.get(leaf.byteorder, _NATIVE) for leaf in _leaves(dtype) if leaf.byteorder != "|"}
    if not orders:
        return "no byte order"
    return orders.pop() if len(orders) == 1 else "mixed byte order"


_NATIVE = f"{sys.byteorder}-endian"
_ORDER_NAMES = {"<": "little-endian", ">": "big-endian"}


def _leaves(dtype: np.dtype[Any]) -> list[np.dtype[Any]]:
    if dtype.subdtype is not None:
        return _leaves(dtype.subdtype[0])
    if dtype.fields:
        return [leaf for field in dtype.fields.values() for leaf in _leaves(field[0])]
    return [dtype]


# -- bench --------------------------------------------------------------------------------------------------------
def _bench(args: argparse.Namespace) -> int:
    from npyfeed.bench.advice import recommend
    from npyfeed.bench.run import run_bench

    source = args.files[0] if len(args.files) == 1 else tuple(args.files)
    try:
        result = run_bench(
            source,
            batch_size=args.batch_size,
            shuffle=args.shuffle,
            num_threads=args.threads,
            prefetch=args.prefetch,
            cold=args.cold,
            epochs=args.epochs,
            max_seconds=args.seconds,
            progress=not args.json and sys.stderr.isatty(),
            sweep=not args.no_sweep,
            storage_options=dict(args.storage_option) or None,
        )
    except NpyfeedError as e:
        print(f"npyfeed bench: {redact(e)}", file=sys.stderr)
        return 1
    except OSError as e:
        print(redact(f"npyfeed bench: {e.filename or ''}: {e.strerror or e}"), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({**result.as_dict(), "recommended": recommend(result)}, indent=2))
        return 0
    mb = 1e6
    print(f"files           {redact(', '.join(args.files))}")
    print(
        f"settings        batch_size={result.batch_size} shuffle={result.shuffle} threads={result.num_threads} "
        f"prefetch={'auto' if result.prefetch is None else result.prefetch} {'cold' if result.cold else 'warm'}"
    )
    print(f"rows            {result.rows:,} in {result.seconds:.2f} s")
    print(f"throughput      {result.rows_per_s:,.0f} rows/s, {result.bytes_per_s / mb:,.0f} MB/s")
    req = result.requests
    raw_how = "" if req is None else f", {req.raw_requests} ranged GET(s) from the start of each object"
    print(
        f"raw sequential  {result.raw_bytes_per_s / mb:,.0f} MB/s{raw_how} "
        f"(npyfeed at {result.bytes_per_s / max(result.raw_bytes_per_s, 1):.0%} of it)"
    )
    if req is not None:
        print(
            f"requests        {req.requests:,} ({req.requests_per_s:,.0f}/s), {req.rows_per_request:,.1f} rows per "
            f"request, {req.retries:,} retries"
        )
        print(
            f"bytes           {req.bytes_asked / mb:,.1f} MB asked, {req.bytes_fetched / mb:,.1f} MB fetched "
            f"({req.bytes_fetched / max(req.bytes_asked, 1):.2f}x)"
        )
        print(f"latency         p50 {req.latency_p50_ms:,.1f} ms, p99 {req.latency_p99_ms:,.1f} ms")
        print(
            f"in flight       {req.mean_in_flight:.1f} mean, {req.max_in_flight} max "
            f"(max_concurrency {req.max_concurrency})"
        )
    print(
        f"peak memory     {(result.memory_peak - result.memory_baseline) / mb:,.1f} MB anonymous above the "
        f"{result.memory_baseline / mb:,.0f} MB baseline"
    )
    for trial in result.trials:
        print(f"  trial         threads={trial['num_threads']}: {trial['rows_per_s']:,.0f} rows/s")
    print(f"recommended     {'; '.join(recommend(result))}")
    return 0


# -- convert ------------------------------------------------------------------------------------------------------
def _convert(args: argparse.Namespace) -> int:
    from npyfeed.write.convert import convert

    if len(args.paths) < 2:
        print("npyfeed convert: give a SOURCE and a DEST", file=sys.stderr)
        return 2
    *sources, dest = args.paths
    try:
        result = convert(
            sources[0] if len(sources) == 1 else sources,
            dest,
            dtype=args.dtype,
            casting=args.casting,
            shard_bytes=args.shard_size,
            memory_bytes=args.memory,
            progress=not args.no_progress and sys.stderr.isatty(),
            max_header_size=args.max_header_size,
            storage_options=dict(args.storage_option) or None,
        )
    except NpyfeedError as e:
        print(redact(f"npyfeed convert: {e}"), file=sys.stderr)
        return 1
    except OSError as e:
        print(redact(f"npyfeed convert: {e.filename or ''}: {e.strerror or e}"), file=sys.stderr)
        return 1
    files = result.outputs[0] if len(result.outputs) == 1 else f"{len(result.outputs)} shards {result.outputs[0]}..."
    rate = result.bytes_read / max(result.seconds, 1e-9) / 1e6
    print(
        f"wrote {files}: {result.rows:,} rows of {result.dtype} ({result.kind}), {result.bytes_written:,} data "
        f"bytes in {result.seconds:.2f} s ({rate:,.0f} MB/s read)"
    )
    return 0
