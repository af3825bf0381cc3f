"""Write ``.npy`` files row batch by row batch, crash-safe, without knowing the final length.

>>> import numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
>>> with NpyWriter(path, np.float32, (3,)) as w:
...     w.write(np.ones((2, 3), np.float32))
...     w.write(np.zeros((1, 3), np.float32))
>>> np.load(path).shape
(3, 3)

How it stays crash-safe: rows go to a temporary file beside the target (``.x.npy.<random>.partial``), which
starts with a placeholder that is *not* a ``.npy`` header (its magic is ``\\x93NPYFEED``, so ``np.load`` and
``npyfeed.open`` refuse it and ``npyfeed inspect`` says what it is). ``close()`` overwrites the placeholder with
the real header, fsyncs the file, renames it onto the target and fsyncs the directory. A killed writer leaves
only the temporary; the target is either absent, the previous file, or the complete new one.

The header length at close is known in advance, by the same design NumPy uses to grow files in place: the header
text reserves room for a row count of 21 digits (``numpy.lib.format.GROWTH_AXIS_MAX_DIGITS``: any int64), so the
header of ``N`` rows has the same length for every ``N``. The placeholder reserves exactly that length; close
writes NumPy's own header bytes there (version 1.0 unless it needs 2.0 or 3.0, chosen as NumPy chooses). No data
is ever moved, and memory stays one batch whatever the file size.
"""

from __future__ import annotations

import os
import re
import secrets
import struct
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from npyfeed.errors import ConfigError, NpyFormatError

__all__ = ["PARTIAL_MAGIC", "NpyWriter", "describe_partial", "shard_paths"]

PARTIAL_MAGIC = b"\x93NPYFEED"  # same length as "\x93NUMPY" + version: never a valid .npy prefix
_ALIGN = 64  # numpy.lib.format.ARRAY_ALIGN: data starts on a 64-byte boundary
_GROWTH_DIGITS = 21  # numpy.lib.format.GROWTH_AXIS_MAX_DIGITS: room for any int64 row count
_LENGTH = {(1, 0): ("<H", "latin1"), (2, 0): ("<I", "latin1"), (3, 0): ("<I", "utf8")}
Casting = Literal["no", "equiv", "safe", "same_kind", "unsafe"]


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


def _placeholder(size: int, target: str, dtype: np.dtype[Any], row_shape: tuple[int, ...]) -> bytes:
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


def shard_paths(path: str | os.PathLike[str], count: int) -> list[str]:
    """``x_000.npy, x_001.npy, ...`` for target ``x.npy`` (wider numbers past 1000 shards, so names sort)."""
    p = Path(path)
    width = max(3, len(str(count - 1)))
    return [str(p.with_name(f"{p.stem}_{i:0{width}d}{p.suffix or '.npy'}")) for i in range(count)]


class _Part:
    """One temporary file being filled: the placeholder, then raw C-order rows."""

    def __init__(self, target: str, dtype: np.dtype[Any], row_shape: tuple[int, ...], header_bytes: int) -> None:
        p = Path(target)
        self.target = target
        self.temp = str(p.with_name(f".{p.name}.{secrets.token_hex(4)}.partial"))
        self.file = open(self.temp, "xb")  # noqa: SIM115 -- closed by finish() or discard()
        self.file.write(_placeholder(header_bytes, target, dtype, row_shape))
        self.file.flush()  # on disk at once: a writer killed before its first flush still left a telling file
        self.rows = 0

    def finish(self, header: bytes) -> None:
        f = self.file
        f.flush()
        if f.tell() < len(header):
            raise NpyFormatError(f"{self.temp}: temporary shorter than its reserved header")
        os.pwrite(f.fileno(), header, 0)
        os.fsync(f.fileno())
        f.close()

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        Path(self.temp).unlink(missing_ok=True)


class NpyWriter:
    """Append rows to a new ``.npy`` file (or shards), put in place atomically at :meth:`close`.

    Args:
        path: the target file. With ``shard_bytes``, the target names shards: ``x.npy`` gives ``x_000.npy``,
            ``x_001.npy``, ... which ``npyfeed.open("x_*.npy")`` reads back as one array.
        dtype: the dtype of the file (any fixed-size NumPy dtype: structured, big-endian, ...).
        row_shape: the shape of one row (``()`` for a 1-d array).
        shard_bytes: the most bytes one shard file may hold, header included (``None``: one file).
        casting: which casts :meth:`write` accepts from the rows it is given (NumPy's casting rules;
            default ``"same_kind"``: float64 rows go into float32, floats never into ints).

    An exception inside ``with NpyWriter(...)`` (or :meth:`abort`) removes the temporaries and leaves the
    target as it was. Shards are all renamed into place at close, so a crash never leaves a shorter glob.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        dtype: Any,
        row_shape: Iterable[int] | int = (),
        *,
        shard_bytes: int | None = None,
        casting: Casting = "same_kind",
    ) -> None:
        self.path = os.fspath(path)
        try:
            self.dtype: np.dtype[Any] = np.dtype(dtype)
        except TypeError as e:
            raise ConfigError(f"{self.path}: dtype {dtype!r} is not a NumPy dtype ({e})") from e
        if self.dtype.hasobject:
            raise ConfigError(f"{self.path}: dtype {self.dtype} holds Python objects; .npy needs fixed-size data")
        if self.dtype.subdtype is not None:
            raise ConfigError(f"{self.path}: sub-array dtype {self.dtype}: put its shape in row_shape instead")
        shape = (row_shape,) if isinstance(row_shape, (int, np.integer)) else tuple(row_shape)
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ConfigError(f"{self.path}: row_shape must be non-negative ints, got {row_shape!r}")
        self.row_shape: tuple[int, ...] = tuple(int(d) for d in shape)
        if casting not in ("no", "equiv", "safe", "same_kind", "unsafe"):
            raise ConfigError(f"casting must be one of no, equiv, safe, same_kind, unsafe; got {casting!r}")
        self.casting: Casting = casting
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        self._header_bytes = len(npy_header(self.dtype, (0, *self.row_shape)))
        self.shard_bytes = shard_bytes
        self._rows_per_part: int | None = None
        if shard_bytes is not None:
            if isinstance(shard_bytes, bool) or not isinstance(shard_bytes, (int, np.integer)) or shard_bytes < 1:
                raise ConfigError(f"{self.path}: shard_bytes must be a positive int, got {shard_bytes!r}")
            room = int(shard_bytes) - self._header_bytes
            if room < max(1, self.row_bytes):
                raise ConfigError(
                    f"{self.path}: shard_bytes={shard_bytes} cannot hold the {self._header_bytes}-byte header "
                    f"and one {self.row_bytes}-byte row"
                )
            self._rows_per_part = room // self.row_bytes if self.row_bytes else None
            stale = sorted(str(p) for p in _existing_shards(self.path))
            if stale:
                raise ConfigError(
                    f"{self.path}: shards from an earlier run exist ({', '.join(stale[:3])}"
                    f"{', ...' if len(stale) > 3 else ''}); remove them first, or a glob would mix two datasets"
                )
        self._parts: list[_Part] = []
        self._done: list[_Part] = []
        self._closed = False
        self.rows_written = 0
        """Rows appended so far."""
        self.outputs: tuple[str, ...] = ()
        """The files put in place by :meth:`close` (the target, or its shards in order)."""
        self._parts.append(self._new_part())

    def _new_part(self) -> _Part:
        return _Part(self.path, self.dtype, self.row_shape, self._header_bytes)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"NpyWriter({self.path!r}, dtype={self.dtype}, row_shape={self.row_shape}, "
            f"rows={self.rows_written}, {state})"
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, rows: Any) -> None:
        """Append a batch of rows (an array of shape ``(n, *row_shape)``; ``n`` may be 0)."""
        if self._closed:
            raise ConfigError(f"{self.path}: write() after close() or abort()")
        array = rows if isinstance(rows, np.ndarray) else np.asarray(rows)
        if array.shape[1:] != self.row_shape or array.ndim != len(self.row_shape) + 1:
            raise ConfigError(
                f"{self.path}: write() got an array of shape {array.shape}, expected (n, *row_shape) with "
                f"row_shape {self.row_shape}"
            )
        if array.dtype != self.dtype and not np.can_cast(array.dtype, self.dtype, casting=self.casting):
            raise ConfigError(
                f"{self.path}: write() got rows of dtype {array.dtype}, which cannot be cast to the file's "
                f"dtype {self.dtype} with casting={self.casting!r}"
            )
        data = np.ascontiguousarray(array, dtype=self.dtype)
        start = 0
        while start < len(data):
            part = self._parts[-1]
            take = len(data) - start
            if self._rows_per_part is not None:
                if part.rows == self._rows_per_part:
                    self._done.append(self._parts.pop())
                    self._parts.append(self._new_part())
                    continue
                take = min(take, self._rows_per_part - part.rows)
            chunk = data[start : start + take]
            if self.row_bytes:
                part.file.write(chunk.reshape(-1).view(np.uint8).data)
            part.rows += take
            start += take
            self.rows_written += take

    def close(self) -> None:
        """Write the header(s), fsync, and rename into place; the writer cannot be used afterwards."""
        if self._closed:
            return
        parts = self._done + self._parts
        self._closed = True
        try:
            for part in parts:
                header = npy_header(self.dtype, (part.rows, *self.row_shape))
                if len(header) != self._header_bytes:  # cannot happen by construction; never write a bad file
                    raise NpyFormatError(f"{self.path}: header length changed from {self._header_bytes} bytes")
                part.finish(header)
            targets = [self.path] if self.shard_bytes is None else shard_paths(self.path, len(parts))
            for part, target in zip(parts, targets, strict=True):
                Path(part.temp).replace(target)
            self.outputs = tuple(targets)
        except BaseException:
            for part in parts:
                part.discard()
            raise
        _fsync_dir(self.path)

    def abort(self) -> None:
        """Remove the temporary file(s); the target is left as it was. Safe to call more than once."""
        self._closed = True
        for part in self._done + self._parts:
            part.discard()

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # Never put an unclosed file in place; a forgotten writer leaves no temporary behind either.
        if not getattr(self, "_closed", True):
            self.abort()


def _existing_shards(path: str) -> list[Path]:
    p = Path(path)
    pattern = re.compile(re.escape(p.stem) + r"_\d{3,}" + re.escape(p.suffix or ".npy"))
    parent = p.parent if str(p.parent) else Path()
    try:
        return [q for q in parent.iterdir() if pattern.fullmatch(q.name)]
    except FileNotFoundError:
        return []


def _fsync_dir(path: str) -> None:
    """Make the renames durable: the directory entry is what a crash could lose."""
    fd = os.open(Path(path).absolute().parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
