"""``npyfeed inspect FILE...``: what a ``.npy`` header says (shape, dtype, byte order, row bytes) and advice,
for local files, globs, ``.npz`` members and objects in a store, as text or JSON.

An invalid or missing file is reported in one line on stderr and makes the exit status 1; the other files are
still inspected; a Fortran-order or non-native file gets advice on what ``convert`` would improve.
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

from npyfeed.errors import NpyfeedError
from npyfeed.format import NpyHeader, read_header, split_npz_spec
from npyfeed.sources.base import row_nbytes
from npyfeed.storage.urls import has_glob, is_url, parse_url, redact
from npyfeed.write.writer import describe_partial

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
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
            try:
                key = parse_url(name).key
            except ValueError:  # a URL npyfeed cannot read: reported by _read_header, which meets the same error
                key = ""
            if not has_glob(key):
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
