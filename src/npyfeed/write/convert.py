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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from npyfeed import arguments as args
from npyfeed.errors import ConfigError, NpyFormatError
from npyfeed.format import MAX_HEADER_SIZE, NpyHeader, split_npz_spec
from npyfeed.sources import NpyArray, RowSource
from npyfeed.write.blocks import fortran_blocks, row_blocks
from npyfeed.write.casting import Casting, check_castable
from npyfeed.write.npz import (
    COPY_BYTES,
    member_header,
    member_info,
    npz_member_header,
    open_zip,
    read_full,
    stream_blocks,
)
from npyfeed.write.writer import NpyWriter

__all__ = ["ConvertResult", "convert", "npz_member_header", "split_npz_spec"]

_MEMORY_BYTES = 64 << 20  # one block of rows: large sequential reads and writes, small next to any RAM


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
    blocks = fortran_blocks(array, memory_bytes) if fortran else row_blocks(array, memory_bytes)  # type: ignore[arg-type]
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
    with open_zip(archive) as zf:
        info = member_info(zf, archive, member)
        name = f"{archive}:{member}"
        with zf.open(info) as stream:
            header, prefix = member_header(stream, info.file_size, name, max_header_size)
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
            blocks = stream_blocks(stream, header, name, memory_bytes)
            outputs, written = _write(
                blocks, dest, out_dtype, row_shape, casting, shard_bytes, header.data_bytes, progress, name
            )
    return ConvertResult(
        name, outputs, header.shape[0], str(out_dtype), "npz", header.data_bytes, written,
        time.perf_counter() - started,
    )  # fmt: skip


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
                chunk = read_full(stream, min(left, COPY_BYTES))
                if not chunk:
                    raise NpyFormatError(f"{name}: truncated member: {left} data bytes missing")
                out.write(chunk)
                left -= len(chunk)
        read_full(stream, 1)  # CRC check
        return convert(
            temp, dest, dtype=dtype, casting=casting, shard_bytes=shard_bytes, memory_bytes=memory_bytes,
            progress=progress, max_header_size=max(MAX_HEADER_SIZE, header.data_offset),
        )  # fmt: skip
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
