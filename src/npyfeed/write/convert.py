"""``npyfeed convert``: rewrite ``.npy`` data into the layout that reads fastest, out of core.

One function, :func:`convert`, reads a source block of rows at a time and writes it with :class:`NpyWriter`
(temporary file, header at close, atomic rename), so memory is a block, whatever the file size:

- a Fortran-order file -> C order: a blocked transpose; a block of rows is one strip of each column (columns are
  contiguous in a Fortran file), gathered into C-order rows;
- a member of an ``.npz`` archive (``data.npz:images``), stored or deflated -> ``.npy``, streamed through the
  decompressor (the zip CRC is checked at the end);
- many shards (a glob or a list) -> one file, and any source -> shards (``shard_bytes``);
- ``dtype`` casts while converting, with NumPy's casting rules (see ``write/casting.py``): ``casting="same_kind"``
  (the default) rounds float64 -> float32, refuses float -> int, and checks every value of a narrowing integer
  cast (int64 -> int8 is refused at the first value that does not fit, never wrapped); ``casting="unsafe"`` is
  NumPy's unchecked ``astype``.

The output is never one of the inputs (after glob expansion, through symlinks and hard links): writing it would
change the data being read, and a glob read later would count the output too.

>>> import numpy as np, tempfile, os
>>> d = tempfile.mkdtemp()
>>> np.save(os.path.join(d, "f.npy"), np.asfortranarray(np.arange(6.0).reshape(3, 2)))
>>> _ = convert(os.path.join(d, "f.npy"), os.path.join(d, "c.npy"), dtype="float32")
>>> np.load(os.path.join(d, "c.npy")).flags.c_contiguous, np.load(os.path.join(d, "c.npy")).dtype
(True, dtype('float32'))
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from npyfeed import arguments as args
from npyfeed.errors import ConfigError, NpyFormatError
from npyfeed.format import MAX_HEADER_SIZE, NpyHeader, header_size, parse_header, split_npz_spec
from npyfeed.sources import NpyArray, RowSource
from npyfeed.write.casting import Casting, check_castable
from npyfeed.write.writer import NpyWriter

__all__ = ["ConvertResult", "convert", "npz_member_header", "split_npz_spec"]

_MEMORY_BYTES = 64 << 20  # one block of rows: large sequential reads and writes, small next to any RAM
_COPY_BYTES = 8 << 20  # unpacking a Fortran .npz member to a temporary file, this much at a time


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert` did."""

    source: str
    outputs: tuple[str, ...]
    rows: int
    dtype: str
    kind: str
    """``"fortran"``, ``"npz"``, ``"npz+fortran"`` or ``"copy"`` (C order in, C order out)."""
    bytes_read: int
    bytes_written: int
    seconds: float


def convert(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    dest: str | os.PathLike[str],
    *,
    dtype: Any = None,
    casting: Casting = "same_kind",
    shard_bytes: int | str | None = None,
    memory_bytes: int | str = _MEMORY_BYTES,
    progress: bool = False,
    max_header_size: int = MAX_HEADER_SIZE,
    storage_options: Mapping[str, Any] | None = None,
) -> ConvertResult:
    """Write ``source`` to ``dest`` as a C-order ``.npy`` (or shards of ``dest``), in bounded memory.

    Args:
        source: a ``.npy`` path, a glob or list of shards (read as one array), or ``"archive.npz:member"``.
        dest: the output path; with ``shard_bytes``, ``x.npy`` names shards ``x_000.npy``, ``x_001.npy``, ...
        dtype: cast to this dtype (default: keep the source's).
        casting: NumPy's casting rule for ``dtype`` (``"unsafe"`` to allow e.g. float -> int).
        shard_bytes: the most bytes per output shard, header included (default: one file).
        memory_bytes: the size of one block of rows in memory (at least one row).

        progress: show a progress bar (tqdm) on stderr.
        max_header_size: accept source headers up to this size (raise only for trusted files).
        storage_options: object-store settings for URL sources, as for :func:`npyfeed.open`.

    Sizes are ints or strings such as ``"64MB"`` (``"64MiB"`` in units of 2**20): see docs/configuration.md.
    """
    memory_bytes = args.size("memory_bytes", memory_bytes)
    shard_bytes = None if shard_bytes is None else args.size("shard_bytes", shard_bytes)
    progress = args.flag("progress", progress)
    max_header_size = args.integer("max_header_size", max_header_size)
    started = time.perf_counter()
    spec = split_npz_spec(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else None
    if spec is not None:
        if storage_options:
            raise args.inapplicable(
                "storage_options",
                None,
                "an .npz archive is read from a local file",
                shown=f"{{keys {sorted(map(str, storage_options))}}}",
            )
        _refuse_overwriting_inputs([spec[0]], dest)
        return _convert_npz(spec, dest, dtype, casting, shard_bytes, memory_bytes, progress, max_header_size, started)
    from npyfeed.sources.columns import open as open_source

    array = open_source(
        source if isinstance(source, (str, os.PathLike)) else [os.fspath(s) for s in source],
        max_header_size=max_header_size,
        storage_options=storage_options,
    )
    if not isinstance(array, RowSource):
        raise ConfigError(f"convert reads one array (a path, glob or list of shards), not columns: {source!r}")
    _refuse_overwriting_inputs(array.paths, dest)
    name = array.paths[0] if len(array.paths) == 1 else f"{array.paths[0]} (+{len(array.paths) - 1} shards)"
    out_dtype = _target_dtype(name, array.dtype, dtype, casting)
    fortran = isinstance(array, NpyArray) and array.fortran_order and array.ndim > 1
    blocks = _fortran_blocks(array, memory_bytes) if fortran else _row_blocks(array, memory_bytes)  # type: ignore[arg-type]
    row_shape = tuple(array.shape[1:])
    total = len(array) * array.dtype.itemsize * math.prod(row_shape)
    outputs, written = _write(blocks, dest, out_dtype, row_shape, casting, shard_bytes, total, progress, name)
    return ConvertResult(
        name, outputs, len(array), str(out_dtype), "fortran" if fortran else "copy", total, written,
        time.perf_counter() - started,
    )  # fmt: skip


def _target_dtype(name: str, have: np.dtype[Any], want: Any, casting: Casting) -> np.dtype[Any]:
    if want is None:
        return have
    try:
        target: np.dtype[Any] = np.dtype(want)
    except TypeError as e:
        raise ConfigError(f"--dtype {want!r} is not a NumPy dtype ({e})") from e
    check_castable(have, target, casting, f"{name}: dtype={target}", "casting='unsafe' (--casting unsafe)")
    return target


def _refuse_overwriting_inputs(inputs: Sequence[str], dest: str | os.PathLike[str]) -> None:
    """Refuse a ``dest`` that is one of ``inputs`` (the same file, by name, symlink or hard link)."""
    try:
        out = Path(dest).stat()
    except OSError:
        return  # not there yet (or not reachable): it cannot be an input
    for path in inputs:
        try:
            same = os.path.samestat(out, Path(path).stat())
        except (OSError, ValueError):  # a URL, or gone: not a local file that dest could be
            continue
        if same:
            raise ConfigError(
                f"convert: the output {os.fspath(dest)} is one of the inputs ({path}); write to a new name (then "
                "rename it, if you mean to replace the input)"
            )


def _block_rows(row_bytes: int, memory_bytes: int) -> int:
    return max(1, memory_bytes // max(1, row_bytes))


def _row_blocks(array: RowSource, memory_bytes: int) -> Iterator[np.ndarray]:
    """C-order sources (one file or shards): consecutive rows, read straight into a reused buffer."""
    row_shape = tuple(array.shape[1:])
    step = _block_rows(array.dtype.itemsize * math.prod(row_shape), memory_bytes)
    array.advise("sequential")
    buffer = np.empty((min(step, len(array)), *row_shape), array.dtype)
    for start in range(0, len(array), step):
        stop = min(start + step, len(array))
        out = buffer[: stop - start]
        array.read_rows(np.arange(start, stop, dtype=np.int64), out)
        yield out


def _fortran_blocks(array: NpyArray, memory_bytes: int) -> Iterator[np.ndarray]:
    """A blocked transpose: rows ``[a, b)`` of a Fortran file are one contiguous strip per column.

    Each strip is read with one ``pread`` into a column-major block, which is then transposed in memory into
    C-order rows. Strips are ``memory_bytes / (2 x row_bytes)`` elements long: long sequential reads, while
    memory stays two blocks. (Page faults on a mapping would be wrong here: each fault reads the kernel's whole
    read-around window, megabytes, for every strip, and under a memory cap those pages are evicted before the
    next block uses them.) Bytes are moved raw, so padding of structured dtypes comes along.
    """
    if getattr(array.storage, "map_array", None) is None:  # not a local file: the storage gathers elements
        yield from _row_blocks(array, memory_bytes)
        return
    h = array.header
    n, rest, itemsize = h.shape[0], h.shape[1:], h.dtype.itemsize
    per_row, k = math.prod(rest), len(rest)
    step = max(1, memory_bytes // max(1, 2 * array.row_bytes))
    fd = os.open(array.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead past each strip: it is never used
        unit = np.dtype(f"u{itemsize}") if itemsize in (1, 2, 4, 8) else np.dtype((np.void, itemsize))
        strips = np.empty((per_row, min(step, n) * itemsize), np.uint8)
        buffer = np.empty((min(step, n), *rest), h.dtype)
        _queue_strips(fd, h.data_offset, n, per_row, itemsize, 0, min(step, n))
        for start in range(0, n, step):
            count = min(step, n - start)
            size = count * itemsize
            # Queue the next block's strips with the kernel now: they arrive while this block is transposed and
            # written, and the device sees hundreds of reads at once instead of one at a time.
            _queue_strips(fd, h.data_offset, n, per_row, itemsize, start + step, min(start + 2 * step, n))
            for column in range(per_row):
                offset = h.data_offset + (column * n + start) * itemsize
                view = memoryview(strips[column, :size])  # type: ignore[arg-type]
                if os.preadv(fd, [view], offset) != size:
                    raise NpyFormatError(f"{array.path}: file ended inside column {column} (truncated?)")
            out = buffer[:count]
            # Transpose whole elements (a uint of the item's size, else raw void records), not single bytes.
            laid = strips[:, :size].view(unit).reshape(*rest[::-1], count)
            out.reshape(-1).view(unit).reshape(count, *rest)[...] = laid.transpose(k, *range(k - 1, -1, -1))
            yield out
    finally:
        os.close(fd)


def _queue_strips(fd: int, base: int, n: int, columns: int, itemsize: int, start: int, stop: int) -> None:
    """``posix_fadvise(WILLNEED)`` on rows ``[start, stop)`` of every column: asynchronous reads, no waiting."""
    if stop <= start or not hasattr(os, "posix_fadvise"):
        return
    length = (stop - start) * itemsize
    for column in range(columns):
        offset = base + (column * n + start) * itemsize
        # The kernel reads at most its read-ahead window per call and ignores the rest: ask in 128 KiB pieces.
        for piece in range(offset, offset + length, 128 << 10):
            os.posix_fadvise(fd, piece, min(128 << 10, offset + length - piece), os.POSIX_FADV_WILLNEED)


def _write(
    blocks: Iterator[np.ndarray],
    dest: str | os.PathLike[str],
    dtype: np.dtype[Any],
    row_shape: tuple[int, ...],
    casting: Casting,
    shard_bytes: int | None,
    total_bytes: int,
    progress: bool,
    name: str,
) -> tuple[tuple[str, ...], int]:
    bar = _progress_bar(total_bytes, f"convert {Path(name).name}", progress)
    with NpyWriter(dest, dtype, row_shape, shard_bytes=shard_bytes, casting=casting) as writer:
        for block in blocks:
            writer.write(block)
            bar.update(block.nbytes)
    bar.close()
    return writer.outputs, writer.rows_written * writer.row_bytes


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # the `cli` extra is not installed: convert anyway, silently
        return _NoBar()
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr)


# -- .npz members ---------------------------------------------------------------------------------------------------
def _convert_npz(
    spec: tuple[str, str],
    dest: str | os.PathLike[str],
    dtype: Any,
    casting: Casting,
    shard_bytes: int | None,
    memory_bytes: int,
    progress: bool,
    max_header_size: int,
    started: float,
) -> ConvertResult:
    archive, member = spec
    with _open_zip(archive) as zf:
        info = _member_info(zf, archive, member)
        name = f"{archive}:{member}"
        with zf.open(info) as stream:
            header, prefix = _member_header(stream, info.file_size, name, max_header_size)
            if not header.shape:
                raise NpyFormatError(f"{name}: a 0-d array has no rows to convert")
            out_dtype = _target_dtype(name, header.dtype, dtype, casting)
            row_shape = header.shape[1:]
            if header.fortran_order and len(header.shape) > 1:
                result = _npz_fortran(
                    stream, header, prefix, dest, name, dtype, casting, shard_bytes, memory_bytes, progress
                )
                return ConvertResult(
                    name, result.outputs, result.rows, result.dtype, "npz+fortran", header.data_bytes,
                    result.bytes_written, time.perf_counter() - started,
                )  # fmt: skip
            blocks = _stream_blocks(stream, header, name, memory_bytes)
            outputs, written = _write(
                blocks, dest, out_dtype, row_shape, casting, shard_bytes, header.data_bytes, progress, name
            )
    return ConvertResult(
        name, outputs, header.shape[0], str(out_dtype), "npz", header.data_bytes, written,
        time.perf_counter() - started,
    )  # fmt: skip


def npz_member_header(spec: str, *, max_header_size: int = MAX_HEADER_SIZE) -> NpyHeader:
    """The ``.npy`` header of the member ``"archive.npz:member"`` (stored or deflated), reading only the header."""
    parts = split_npz_spec(spec)
    if parts is None:
        raise ConfigError(f"{spec}: expected ARCHIVE.npz:MEMBER")
    archive, member = parts
    with _open_zip(archive) as zf:
        info = _member_info(zf, archive, member)
        with zf.open(info) as stream:
            return _member_header(stream, info.file_size, spec, max_header_size)[0]


def _open_zip(archive: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise NpyFormatError(f"{archive}: not a valid .npz (zip) archive: {e}") from e


def _member_info(zf: zipfile.ZipFile, archive: str, member: str) -> zipfile.ZipInfo:
    names = zf.namelist()
    entry = member if member in names else f"{member}.npy"
    if entry not in names:
        arrays = sorted(n.removesuffix(".npy") for n in names)
        raise ConfigError(f"{archive}: no member {member!r}; the archive holds {arrays}")
    info = zf.getinfo(entry)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise NpyFormatError(f"{archive}:{entry}: compression method {info.compress_type} is not stored/deflated")
    return info


def _member_header(stream: IO[bytes], size: int, name: str, max_header_size: int) -> tuple[NpyHeader, bytes]:
    prefix = _read_full(stream, 12)
    try:
        length = header_size(prefix, name, max_header_size=max_header_size)
    except ValueError as e:
        if isinstance(e, NpyFormatError):
            raise
        raise NpyFormatError(f"{name}: invalid .npy: the member has only {len(prefix)} bytes") from e
    prefix += _read_full(stream, length - len(prefix))
    header = parse_header(prefix, size, name, max_header_size=max_header_size)
    if header.data_offset != len(prefix):
        raise NpyFormatError(f"{name}: header length {header.data_offset} does not match {len(prefix)}")
    return header, prefix


def _read_full(stream: IO[bytes], size: int) -> bytes:
    chunks, left = [], size
    while left > 0:
        try:
            chunk = stream.read(left)
        except (zipfile.BadZipFile, EOFError, OSError) as e:  # a CRC mismatch or a truncated deflate stream
            raise NpyFormatError(f"{getattr(stream, 'name', 'npz member')}: corrupt archive member: {e}") from e
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _stream_blocks(stream: IO[bytes], header: NpyHeader, name: str, memory_bytes: int) -> Iterator[np.ndarray]:
    rows, row_shape, dtype = header.shape[0], header.shape[1:], header.dtype
    row_bytes = dtype.itemsize * math.prod(row_shape)
    if row_bytes == 0:
        yield np.empty((rows, *row_shape), dtype)
        return
    step = _block_rows(row_bytes, memory_bytes)
    buffer = bytearray(min(step, rows) * row_bytes)
    for start in range(0, rows, step):
        count = min(step, rows - start)
        view = memoryview(buffer)[: count * row_bytes]
        got = _read_into(stream, view, name)
        if got != len(view):
            raise NpyFormatError(f"{name}: truncated member: rows {start}..{start + count} end after {got} bytes")
        yield np.frombuffer(view, dtype).reshape(count, *row_shape)
    _read_full(stream, 1)  # reach the end of the member, so zipfile checks its CRC


def _read_into(stream: IO[bytes], view: memoryview, name: str) -> int:
    done = 0
    while done < len(view):
        chunk = _read_full(stream, min(len(view) - done, _COPY_BYTES))
        if not chunk:
            break
        view[done : done + len(chunk)] = chunk
        done += len(chunk)
    return done


def _npz_fortran(
    stream: IO[bytes],
    header: NpyHeader,
    prefix: bytes,
    dest: str | os.PathLike[str],
    name: str,
    dtype: Any,
    casting: Casting,
    shard_bytes: int | None,
    memory_bytes: int,
    progress: bool,
) -> ConvertResult:
    """A Fortran-order member cannot be transposed from a stream: unpack it beside ``dest``, then transpose.

    Beside the shards' directory for sharded output: that directory is published whole, so it must stay empty.
    """
    target = Path(dest).absolute()
    beside = target.parent if shard_bytes is None else target.parent.parent
    temp = beside / f".{target.name}.{secrets.token_hex(4)}.fortran.partial"
    try:
        with open(temp, "xb") as out:
            out.write(prefix)  # the member's own header: the temporary is an exact copy of the member
            left = header.data_bytes
            while left > 0:
                chunk = _read_full(stream, min(left, _COPY_BYTES))
                if not chunk:
                    raise NpyFormatError(f"{name}: truncated member: {left} data bytes missing")
                out.write(chunk)
                left -= len(chunk)
        _read_full(stream, 1)  # CRC check
        return convert(
            temp, dest, dtype=dtype, casting=casting, shard_bytes=shard_bytes, memory_bytes=memory_bytes,
            progress=progress, max_header_size=max(MAX_HEADER_SIZE, header.data_offset),
        )  # fmt: skip
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
