"""The bytes at the start of a file :class:`npyfeed.write.writer.NpyWriter` writes: NumPy's own ``.npy`` header at
close, and until then a placeholder of the same length that is never a ``.npy`` header (magic ``\\x93NPYFEED``),
which :func:`describe_partial` reads back for ``npyfeed inspect``.

The header's length depends on the dtype and row shape only: its text reserves room for a row count of 21 digits
(``numpy.lib.format.GROWTH_AXIS_MAX_DIGITS``), as NumPy does to grow files in place.
"""

from __future__ import annotations

import os
import re
import struct
from typing import Any

import numpy as np

from npyfeed.errors import ConfigError

__all__ = ["PARTIAL_MAGIC", "describe_partial", "npy_header", "partial_placeholder"]

PARTIAL_MAGIC = b"\x93NPYFEED"  # same length as "\x93NUMPY" + version: never a valid .npy prefix
_ALIGN = 64  # numpy.lib.format.ARRAY_ALIGN: data starts on a 64-byte boundary
_GROWTH_DIGITS = 21  # numpy.lib.format.GROWTH_AXIS_MAX_DIGITS: room for any int64 row count
_LENGTH = {(1, 0): ("<H", "latin1"), (2, 0): ("<I", "latin1"), (3, 0): ("<I", "utf8")}


def npy_header(dtype: np.dtype[Any], shape: tuple[int, ...]) -> bytes:
    """The header ``np.save`` writes for a C-order array of ``dtype`` and ``shape`` (magic to final newline).

    Its length depends on the dtype and row shape only, never on the row count (see the module docstring).
    """
    descr = np.lib.format.dtype_to_descr(dtype)
    fields = {"descr": descr, "fortran_order": False, "shape": shape}
    text = "{" + "".join(f"'{k}': {v!r}, " for k, v in sorted(fields.items())) + "}"
    if shape:
        text += " " * (_GROWTH_DIGITS - len(repr(shape[0])))
    for version, (fmt, encoding) in _LENGTH.items():
        try:
            raw = text.encode(encoding)
        except UnicodeEncodeError:
            continue  # a non-latin1 field name: only version 3.0 (utf8) can hold it
        length = len(raw) + 1
        pad = _ALIGN - (len(PARTIAL_MAGIC) + struct.calcsize(fmt) + length) % _ALIGN
        if length + pad < 1 << (8 * struct.calcsize(fmt)):
            prefix = b"\x93NUMPY" + bytes(version) + struct.pack(fmt, length + pad)
            return prefix + raw + b" " * pad + b"\n"
    raise ConfigError(f"dtype {dtype} needs a header longer than any .npy format version allows")


def partial_placeholder(size: int, target: str, dtype: np.dtype[Any], row_shape: tuple[int, ...]) -> bytes:
    """``size`` bytes that say what the temporary is, and can never be taken for a ``.npy`` header.

    The dtype and row shape always fit (the real header spells them too, and more); the target path is cut to
    the room left.
    """
    head = PARTIAL_MAGIC + struct.pack("<I", size)
    layout = f"descr={np.lib.format.dtype_to_descr(dtype)!r} row_shape={row_shape!r}".encode()
    room = size - len(head) - len(layout) - 1
    where = f" target={target!r}".encode("utf8", "backslashreplace")
    body = layout + (where if len(where) <= room else b" target=..." + where[len(where) - room + 11 :])
    return head + body + b" " * (size - len(head) - len(body) - 1) + b"\n"


def describe_partial(path: str | os.PathLike[str]) -> str | None:
    """What an unfinished :class:`NpyWriter` temporary is, or ``None`` if ``path`` is not one."""
    try:
        with open(path, "rb") as f:
            prefix = f.read(len(PARTIAL_MAGIC) + 4)
            if len(prefix) < len(PARTIAL_MAGIC) + 4 or prefix[: len(PARTIAL_MAGIC)] != PARTIAL_MAGIC:
                return None
            (size,) = struct.unpack("<I", prefix[len(PARTIAL_MAGIC) :])
            body = f.read(min(size, 1 << 20) - len(prefix)).decode("utf8", "replace").strip()
            file_bytes = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    rows = ""
    match = re.match(r"descr=(.*) row_shape=(\([0-9, ]*\))", body)
    if match:
        try:
            import ast

            dtype = np.lib.format.descr_to_dtype(ast.literal_eval(match.group(1)))
            row_bytes = dtype.itemsize * int(np.prod(ast.literal_eval(match.group(2)), dtype=np.int64))
            if row_bytes:
                rows = f", about {(file_bytes - size) // row_bytes} rows written"
        except (ValueError, SyntaxError, TypeError):
            pass
    return (
        f"an unfinished npyfeed.NpyWriter temporary file ({body}; {file_bytes} bytes{rows}): not a valid .npy; "
        "the writer was killed or is still writing, so its target was never put in place"
    )
