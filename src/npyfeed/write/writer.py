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
import typing
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from npyfeed import arguments as args
from npyfeed.errors import ConfigError, NpyFormatError
from npyfeed.write.casting import CASTINGS, Casting, cast
from npyfeed.write.header import PARTIAL_MAGIC, describe_partial, npy_header, partial_placeholder
from npyfeed.write.publish import Publish, shard_paths, with_path

__all__ = ["PARTIAL_MAGIC", "Casting", "NpyWriter", "describe_partial", "npy_header", "shard_paths"]


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        done = os.pwrite(fd, data, offset)  # short at a size limit; the next call raises EFBIG / ENOSPC
        data, offset = data[done:], offset + done


class _Part:
    """One temporary file being filled: the placeholder, then raw C-order rows at offsets it computes itself.

    Rows are written with ``pwrite`` at ``header + rows * row_bytes`` and nothing is buffered, so after a failed
    write the file can be cut back to its last complete row (:meth:`truncate`) and the next write lands exactly.
    """

    def __init__(self, temp: str, target: str, writer: NpyWriter) -> None:
        self.temp = temp
        self.header_bytes = writer.header_bytes
        self.row_bytes = writer.row_bytes
        self.rows = 0
        self.fd = -1
        try:
            self.fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            # On disk at once: a writer killed before its first rows still left a telling file.
            placeholder = partial_placeholder(self.header_bytes, target, writer.dtype, writer.row_shape)
            _pwrite_all(self.fd, memoryview(placeholder), 0)
        except BaseException:
            self.discard()
            raise

    def append(self, rows: np.ndarray) -> None:
        if self.row_bytes:
            data = memoryview(rows.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
            _pwrite_all(self.fd, data, self.header_bytes + self.rows * self.row_bytes)
        self.rows += len(rows)

    def truncate(self, rows: int) -> None:
        """Cut the file back to ``rows`` complete rows."""
        os.ftruncate(self.fd, self.header_bytes + rows * self.row_bytes)
        self.rows = rows

    def finish(self, header: bytes) -> None:
        if len(header) != self.header_bytes:  # cannot happen by construction; never write a bad file
            raise NpyFormatError(f"{self.temp}: header of {len(header)} bytes, {self.header_bytes} reserved")
        _pwrite_all(self.fd, memoryview(header), 0)
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        Path(self.temp).unlink(missing_ok=True)


class NpyWriter:
    """Append rows to a new ``.npy`` file (or shards), put in place atomically at :meth:`close`: right or absent.

    Args:
        path: the target file. With ``shard_bytes``, the target names shards in its directory: ``out/x.npy``
            gives ``out/x_000.npy``, ``out/x_001.npy``, ... which ``npyfeed.open("out/x_*.npy")`` reads back as
            one array. That directory is published at close by one rename, so it must not exist yet (or be
            empty): a glob over it sees every shard or none.
        dtype: the dtype of the file (any fixed-size NumPy dtype: structured, big-endian, ...).
        row_shape: the shape of one row (``()`` for a 1-d array).
        shard_bytes: the most bytes one shard file may hold, header included (``None``: one file): an int or a
            size such as ``"64MB"`` (see :func:`npyfeed.arguments.size`).
        casting: which casts :meth:`write` accepts from the rows it is given (NumPy's casting rules, see
            :mod:`npyfeed.write.casting`). Unless ``"unsafe"``, a narrowing cast to an integer type checks that every
            value fits (int64 300 is refused for int8, never wrapped); the default ``"same_kind"`` rounds
            float64 rows into float32 and refuses floats for ints.

    :meth:`write` is all or nothing: when it fails (disk full, ``RLIMIT_FSIZE``, an interrupt), the temporary is
    cut back to the rows before it, so retrying the same write is exact; if even that fails, the writer is
    poisoned: every later call raises and the target is never created. Errors keep their ``OSError`` type and
    errno and name the target. An exception inside ``with NpyWriter(...)`` (or :meth:`abort`) removes the
    temporaries and leaves the target as it was.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        dtype: Any,
        row_shape: Iterable[int] | int = (),
        *,
        shard_bytes: int | str | None = None,
        casting: Casting = "same_kind",
    ) -> None:
        self.path = os.fspath(path)
        self._closed = True  # until the temporaries exist: __del__ of a refused writer has nothing to remove
        try:
            self.dtype: np.dtype[Any] = np.dtype(dtype)
        except TypeError as e:
            raise ConfigError(f"{self.path}: dtype {dtype!r} is not a NumPy dtype ({e})") from e
        if self.dtype.hasobject:
            raise ConfigError(f"{self.path}: dtype {self.dtype} holds Python objects; .npy needs fixed-size data")
        if self.dtype.subdtype is not None:
            raise ConfigError(f"{self.path}: sub-array dtype {self.dtype}: put its shape in row_shape instead")
        shape = (row_shape,) if args.is_int(row_shape) else tuple(row_shape)  # type: ignore[arg-type]
        self.row_shape: tuple[int, ...] = tuple(
            args.integer(f"{self.path}: row_shape[{i}]", d) for i, d in enumerate(shape)
        )
        self.casting = typing.cast(Casting, args.choice(f"{self.path}: casting", casting, CASTINGS))
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        self.header_bytes = len(npy_header(self.dtype, (0, *self.row_shape)))
        """Bytes of every header this writer writes (fixed in advance, see the module docstring)."""
        self.shard_bytes = None if shard_bytes is None else args.size(f"{self.path}: shard_bytes", shard_bytes)
        self._rows_per_part: int | None = None
        if self.shard_bytes is not None:
            room = self.shard_bytes - self.header_bytes
            if room < max(1, self.row_bytes):
                raise ConfigError(
                    f"{self.path}: shard_bytes={shard_bytes} cannot hold the {self.header_bytes}-byte header "
                    f"and one {self.row_bytes}-byte row"
                )
            self._rows_per_part = room // self.row_bytes if self.row_bytes else None
        self.rows_written = 0
        """Rows appended so far (by writes that succeeded)."""
        self.outputs: tuple[str, ...] = ()
        """The files put in place by :meth:`close` (the target, or its shards in order)."""
        self._parts: list[_Part] = []
        self._failure: BaseException | None = None
        self._publish = Publish(self.path, sharded=shard_bytes is not None)
        self._closed = False
        try:
            self._parts.append(self._new_part())
        except BaseException:
            self.abort()
            raise

    def _new_part(self) -> _Part:
        temp = self._publish.temp_name(len(self._parts))
        try:
            return _Part(temp, self.path, self)
        except OSError as e:
            raise with_path(e, self.path, f"creating the temporary file {temp}") from e

    def __repr__(self) -> str:
        state = "failed" if self._failure else "closed" if self._closed else "open"
        return (
            f"NpyWriter({self.path!r}, dtype={self.dtype}, row_shape={self.row_shape}, "
            f"rows={self.rows_written}, {state})"
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_usable(self, call: str) -> None:
        failure = self._failure
        if failure is not None:
            what = (
                f"{call}: an earlier write failed ({type(failure).__name__}: {failure}) and could not be rolled "
                "back, so the writer was aborted and the target is never created"
            )
            if isinstance(failure, OSError):
                raise with_path(failure, self.path, what) from failure
            raise ConfigError(f"{self.path}: {what}") from failure
        if self._closed:
            raise ConfigError(f"{self.path}: {call} after close() or abort()")

    def write(self, rows: Any) -> None:
        """Append a batch of rows (an array of shape ``(n, *row_shape)``; ``n`` may be 0): all or nothing."""
        self._check_usable("write()")
        array = rows if isinstance(rows, np.ndarray) else np.asarray(rows)
        if array.shape[1:] != self.row_shape or array.ndim != len(self.row_shape) + 1:
            raise ConfigError(
                f"{self.path}: write() got an array of shape {array.shape}, expected (n, *row_shape) with "
                f"row_shape {self.row_shape}"
            )
        data = cast(array, self.dtype, self.casting, f"{self.path}: write()", self.rows_written)
        parts, last_rows, rows_before = len(self._parts), self._parts[-1].rows, self.rows_written
        try:
            self._append(data)
        except BaseException as e:
            rows = f"rows {rows_before}..{rows_before + len(data) - 1}"
            undone = self._roll_back(parts, last_rows, rows_before, e)
            if undone is not None:
                what = (
                    f"writing {rows}; rolling back to the {rows_before} rows before failed too ({undone}), so the "
                    "writer was aborted and the target is never created"
                )
            else:
                what = (
                    f"writing {rows}; rolled back to the {rows_before} rows before, so the same write() can be retried"
                )
            if isinstance(e, OSError):
                raise with_path(e, self.path, what) from e
            e.add_note(f"{self.path}: {what}")
            raise

    def _append(self, data: np.ndarray) -> None:
        start = 0
        while start < len(data):
            part = self._parts[-1]
            take = len(data) - start
            if self._rows_per_part is not None:
                if part.rows == self._rows_per_part:
                    self._parts.append(self._new_part())
                    continue
                take = min(take, self._rows_per_part - part.rows)
            part.append(data[start : start + take])
            start += take
            self.rows_written += take

    def _roll_back(self, parts: int, last_rows: int, rows_before: int, error: BaseException) -> BaseException | None:
        """Undo a failed write: drop the parts it started, cut the one it continued; else poison the writer.

        Returns what made the roll-back fail (the writer is then aborted), ``None`` when it worked.
        """
        try:
            while len(self._parts) > parts:
                self._parts.pop().discard()
            self._parts[-1].truncate(last_rows)
            self.rows_written = rows_before
        except BaseException as e:
            self._failure = error
            self.abort()
            return e
        return None

    def close(self) -> None:
        """Write the header(s), fsync, and publish with one rename; the writer cannot be used afterwards.

        Raises (and removes the temporaries, creating nothing) if the writer failed earlier or anything here fails.
        """
        if self._closed and self._failure is None:
            return
        try:
            self._check_usable("close()")
            self._closed = True
            for part in self._parts:
                part.finish(npy_header(self.dtype, (part.rows, *self.row_shape)))
            self.outputs = self._publish.publish([p.temp for p in self._parts])
        except OSError as e:
            self.abort()
            if e.filename is not None:
                raise
            raise with_path(e, self.path, "closing: nothing was published") from e
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Remove the temporary file(s); the target is left as it was. Safe to call more than once."""
        self._closed = True
        for part in self._parts:
            part.discard()
        self._publish.discard()

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
