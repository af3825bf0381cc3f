"""Parse and validate ``.npy`` headers (format versions 1.0, 2.0 and 3.0) without running code.

The header is a Python dict literal, e.g. ``{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 32), }``.
It is parsed with :func:`ast.literal_eval` only after its length is capped, every field is checked one by one,
object dtypes (which need pickle) are refused, and the data size (computed with Python ints, so it cannot
overflow) is compared with the file size before a single data byte is read.
"""

from __future__ import annotations

import ast
import io
import math
import os
import re
import struct
import tokenize
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from npyfeed import arguments as args
from npyfeed.errors import NpyFormatError

__all__ = ["MAGIC", "MAX_HEADER_SIZE", "NpyHeader", "header_size", "load_header", "parse_header", "read_header"]

MAGIC = b"\x93NUMPY"
# NumPy refuses headers longer than this unless told otherwise (numpy.lib.format._MAX_HEADER_SIZE): a header is
# a few hundred bytes, and capping it bounds the work `literal_eval` can be made to do by a hostile file.
MAX_HEADER_SIZE = 10_000

_LENGTH_FIELD = {(1, 0): "<H", (2, 0): "<I", (3, 0): "<I"}
_ENCODING = {(1, 0): "latin1", (2, 0): "latin1", (3, 0): "utf8"}
_MAX_INDEX = np.iinfo(np.intp).max
# NumPy's NPY_MAXDIMS: an ndarray has at most 64 dimensions (32 before NumPy 2.0).
_MAX_DIMS = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32
# A number token followed by `L` ends in a (hex) digit: only then can the tokenizer-based filter change anything.
_MAYBE_PY2_LONG = re.compile(r"[0-9A-Fa-f]L")
_KEYS = frozenset({"descr", "fortran_order", "shape"})


@dataclass(frozen=True)
class NpyHeader:
    """What a validated ``.npy`` header says, plus where the data lies in the file."""

    path: str
    version: tuple[int, int]
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran_order: bool
    data_offset: int
    """Bytes before the first data byte: magic, version, length field and header text."""
    data_bytes: int
    file_bytes: int

    @property
    def trailing_bytes(self) -> int:
        """Bytes after the array data (NumPy never writes any; other writers may pad)."""
        return self.file_bytes - self.data_offset - self.data_bytes


def _fail(path: str, field: str, found: object, expected: str) -> NpyFormatError:
    return NpyFormatError(f"{path}: invalid .npy {field}: found {_show(found)}, expected {expected}")


def _show(value: object) -> str:
    """``repr(value)``, shortened; a header can hold ints too long for ``repr`` (hex literals escape the limit)."""
    try:
        return _shorten(repr(value))
    except ValueError:  # an int of more than sys.get_int_max_str_digits() decimal digits
        return f"<{type(value).__name__} with an int too long to print in decimal>"


def read_header(path: str | os.PathLike[str], *, max_header_size: int = MAX_HEADER_SIZE) -> NpyHeader:
    """Read and validate the header of the ``.npy`` file at ``path``.

    Raises ``OSError`` if the path cannot be opened and :class:`NpyFormatError` for anything else wrong:
    not a regular file, bad magic or version, oversized or non-literal header, pickled (object) dtypes,
    malformed shapes, or a file shorter than its header says.
    """
    from npyfeed.storage import LocalFile  # storage builds on errors only; imported here to keep layers one-way

    _check_cap(max_header_size)
    with LocalFile(path) as storage:
        return load_header(storage, max_header_size=max_header_size)


class _Readable(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int: ...

    def read_into(self, offset: int, out: np.ndarray) -> None: ...


# A first read this long holds the whole header of nearly every file (NumPy pads headers to 64 bytes; 128 is
# typical), so an object store answers it with one ranged request.
_FIRST_READ = 4096


def load_header(storage: _Readable, *, max_header_size: int = MAX_HEADER_SIZE) -> NpyHeader:
    """Read the first bytes of ``storage`` (any :class:`npyfeed.storage.Storage`) and validate its header."""
    max_header_size = _check_cap(max_header_size)
    want = min(storage.size, _FIRST_READ)
    while True:
        prefix = np.empty(want, np.uint8)
        storage.read_into(0, prefix)
        try:
            return _parse(storage.name, prefix.tobytes(), storage.size, max_header_size)
        except _ShortPrefix as e:
            want = e.needed


def parse_header(prefix: bytes, size: int, name: str, *, max_header_size: int = MAX_HEADER_SIZE) -> NpyHeader:
    """Validate the header in ``prefix``, the first bytes of an object of ``size`` bytes called ``name``.

    ``prefix`` must hold the whole header (magic, version, length field and header text), or the whole object
    if it is shorter; 4 KiB is enough for nearly every file, and ``header_size(prefix)`` tells the exact length
    from the first 12 bytes. Raises :class:`NpyFormatError` naming ``name`` for anything invalid, exactly as
    :func:`read_header` does for a local file.
    """
    max_header_size = _check_cap(max_header_size)
    size = args.integer(f"{name}: size (the object's bytes)", size)
    try:
        return _parse(name, bytes(prefix), size, max_header_size)
    except _ShortPrefix as e:
        raise ValueError(f"{name}: the header needs the first {e.needed} bytes, got {len(prefix)}") from None


def header_size(prefix: bytes, name: str = "<bytes>", *, max_header_size: int = MAX_HEADER_SIZE) -> int:
    """Bytes before the data (magic, version, length field, header text), read from the first 12 bytes."""
    data = bytes(prefix)
    try:
        version = _check_magic(name, _take(name, data, 1 << 62, 0, 8, "magic string and version"))
        length_format = _LENGTH_FIELD[version]
        length_size = struct.calcsize(length_format)
        (header_len,) = struct.unpack(length_format, _take(name, data, 1 << 62, 8, length_size, "header length"))
    except _ShortPrefix as e:
        raise ValueError(f"{name}: the header length needs the first {e.needed} bytes, got {len(data)}") from None
    _check_length(name, header_len, max_header_size)
    return 8 + length_size + int(header_len)


class _ShortPrefix(Exception):
    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


def _check_cap(max_header_size: object) -> int:
    return args.integer("max_header_size", max_header_size)


def _take(name: str, prefix: bytes, file_bytes: int, offset: int, size: int, what: str) -> bytes:
    """``size`` bytes at ``offset`` of the object, from its first bytes ``prefix``."""
    data = prefix[offset : offset + size]
    if len(data) != size:
        if len(prefix) < file_bytes:
            raise _ShortPrefix(min(file_bytes, offset + size))
        raise NpyFormatError(
            f"{name}: invalid .npy: file ends inside the {what} "
            f"(needed {size} bytes at offset {offset}, the file has {offset + len(data)} bytes)"
        )
    return data


def split_npz_spec(spec: str) -> tuple[str, str] | None:
    """``("data.npz", "images")`` for ``"data.npz:images"``; ``None`` when ``spec`` names no ``.npz`` member."""
    archive, sep, member = spec.rpartition(":")
    if not sep or not member or not archive.lower().endswith(".npz"):
        return None
    return archive, member


_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local file header, or an empty zip's end record


def _check_magic(name: str, magic: bytes) -> tuple[int, int]:
    if magic[:4] in _ZIP_MAGICS:
        raise NpyFormatError(
            f"{name}: invalid .npy magic string: found a zip archive (an .npz?): name one of its arrays as "
            f"{name}:MEMBER, e.g. "
            f"`npyfeed inspect {name}:MEMBER`; to read it with a Loader, `npyfeed convert {name}:MEMBER MEMBER.npy`"
        )
    if magic[:6] != MAGIC:
        raise _fail(name, "magic string", magic[:6], repr(MAGIC))
    version = (magic[6], magic[7])
    if version not in _LENGTH_FIELD:
        raise _fail(name, "format version", f"{version[0]}.{version[1]}", "1.0, 2.0 or 3.0")
    return version


def _check_length(name: str, header_len: int, max_header_size: int) -> None:
    if header_len > max_header_size:
        raise _fail(
            name,
            "header length",
            header_len,
            f"at most {max_header_size} bytes (pass a larger max_header_size if the file is trusted)",
        )


def _parse(name: str, prefix: bytes, file_bytes: int, max_header_size: int) -> NpyHeader:
    version = _check_magic(name, _take(name, prefix, file_bytes, 0, 8, "magic string and version"))
    length_format = _LENGTH_FIELD[version]
    length_size = struct.calcsize(length_format)
    (header_len,) = struct.unpack(length_format, _take(name, prefix, file_bytes, 8, length_size, "header length"))
    _check_length(name, header_len, max_header_size)
    data_offset = 8 + length_size + header_len
    if data_offset > file_bytes:
        raise _fail(name, "header length", header_len, f"a header that fits in the file's {file_bytes} bytes")
    raw = _take(name, prefix, file_bytes, 8 + length_size, header_len, "header")
    try:
        text = raw.decode(_ENCODING[version])
    except UnicodeDecodeError as e:
        raise _fail(name, "header encoding", raw[e.start : e.end], f"{_ENCODING[version]} text") from e
    fields = _literal_dict(name, text, version)
    dtype = _dtype(name, fields["descr"])
    fortran_order = fields["fortran_order"]
    if not isinstance(fortran_order, bool):
        raise _fail(name, "'fortran_order'", fortran_order, "True or False")
    shape = _shape(name, fields["shape"])
    if dtype.subdtype is not None:
        # A sub-array descr such as ('<f4', (2,)): NumPy appends its dimensions to the shape (same bytes).
        dtype, shape = dtype.base, shape + dtype.shape
    if len(shape) > _MAX_DIMS:
        raise _fail(name, "'shape'", shape, f"at most {_MAX_DIMS} dimensions (NumPy's limit)")
    data_bytes = math.prod(shape) * dtype.itemsize
    # Like NumPy, also refuse an empty array whose non-zero dimensions overflow (e.g. (0, 2**63)).
    if math.prod(d for d in shape if d) * max(1, dtype.itemsize) > _MAX_INDEX:
        raise _fail(name, "'shape'", shape, f"at most {_MAX_INDEX} elements and bytes (NumPy's index limit)")
    available = file_bytes - data_offset
    if data_bytes > available:
        raise NpyFormatError(
            f"{name}: truncated .npy: shape {shape} of {dtype} needs {data_bytes} data bytes after the "
            f"{data_offset}-byte header, but the file has only {available} (file size {file_bytes})"
        )
    return NpyHeader(name, version, dtype, shape, fortran_order, data_offset, data_bytes, file_bytes)


def _literal_dict(name: str, text: str, version: tuple[int, int]) -> dict[str, Any]:
    try:
        try:
            value = ast.literal_eval(text)
        except SyntaxError:
            # Files written by NumPy under Python 2 may spell ints as `10L`; like NumPy, accept them in versions
            # 1.0 and 2.0, only when the header does not parse as it is.
            filtered = _without_py2_longs(text) if version < (3, 0) else None
            if filtered is None:
                raise
            value = ast.literal_eval(filtered)
    # literal_eval raises all of these on hostile text (deep nesting, huge ints, null bytes, odd tokens).
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as e:
        raise _fail(name, "header", text, f"a Python dict literal ({type(e).__name__}: {_shorten(str(e))})") from e
    if not isinstance(value, dict):
        raise _fail(name, "header", text, "a dict literal")
    keys = set(value)
    if keys != _KEYS:
        raise _fail(name, "header keys", sorted(keys, key=_show), f"exactly {sorted(_KEYS)}")
    return value


def _without_py2_longs(text: str) -> str | None:
    """``text`` with the ``L`` after each number token dropped (``10L`` -> ``10``), as NumPy's tokenizer-based
    filter does: an ``L`` inside a string literal (a field named ``'x 2L'``) is part of a string token and is
    kept. None if ``text`` has no such ``L`` or does not tokenize."""
    if not _MAYBE_PY2_LONG.search(text):
        return None  # cheap: tokenizing a hostile 10 MB header that cannot need the filter is not
    kept: list[tokenize.TokenInfo] = []
    dropped, after_number = False, False
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if after_number and token.type == tokenize.NAME and token.string == "L":
                dropped = True
                continue  # the flag stays: NumPy drops every `L` that follows a number, `10L L` included
            kept.append(token)
            after_number = token.type == tokenize.NUMBER
        return tokenize.untokenize(kept) if dropped else None
    except (tokenize.TokenError, SyntaxError, ValueError):
        return None


def _dtype(name: str, descr: object) -> np.dtype[Any]:
    try:
        dtype = np.lib.format.descr_to_dtype(descr)  # type: ignore[arg-type]
    except Exception as e:  # NumPy raises TypeError, ValueError, KeyError... for malformed descr.
        raise _fail(name, "'descr'", descr, f"a NumPy dtype description ({type(e).__name__}: {e})") from e
    if dtype.hasobject:
        raise _fail(name, "'descr'", descr, "a fixed-size dtype (object arrays need pickle, which npyfeed refuses)")
    return dtype


def _shape(name: str, shape: object) -> tuple[int, ...]:
    if not isinstance(shape, tuple):
        raise _fail(name, "'shape'", shape, "a tuple of non-negative ints")
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise _fail(name, "'shape'", shape, "a tuple of non-negative ints")
    return shape


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
