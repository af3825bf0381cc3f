"""The ``.npy`` member of an ``.npz`` archive (stored or deflated), read as a stream: its header, then its rows
a block at a time through the decompressor, reaching the member's end so that zipfile checks its CRC."""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator
from typing import IO

import numpy as np

from npyfeed.errors import ConfigError, NpyFormatError
from npyfeed.format import MAX_HEADER_SIZE, NpyHeader, header_size, parse_header, split_npz_spec
from npyfeed.write.blocks import block_rows

__all__ = [
    "COPY_BYTES",
    "member_header",
    "member_info",
    "npz_member_header",
    "open_zip",
    "read_full",
    "read_into",
    "stream_blocks",
]

COPY_BYTES = 8 << 20  # unpacking a Fortran .npz member to a temporary file, this much at a time


def npz_member_header(spec: str, *, max_header_size: int = MAX_HEADER_SIZE) -> NpyHeader:
    """The ``.npy`` header of the member ``"archive.npz:member"`` (stored or deflated), reading only the header."""
    parts = split_npz_spec(spec)
    if parts is None:
        raise ConfigError(f"{spec}: expected ARCHIVE.npz:MEMBER")
    archive, member = parts
    with open_zip(archive) as zf:
        info = member_info(zf, archive, member)
        with zf.open(info) as stream:
            return member_header(stream, info.file_size, spec, max_header_size)[0]


def open_zip(archive: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise NpyFormatError(f"{archive}: not a valid .npz (zip) archive: {e}") from e


def member_info(zf: zipfile.ZipFile, archive: str, member: str) -> zipfile.ZipInfo:
    names = zf.namelist()
    entry = member if member in names else f"{member}.npy"
    if entry not in names:
        arrays = sorted(n.removesuffix(".npy") for n in names)
        raise ConfigError(f"{archive}: no member {member!r}; the archive holds {arrays}")
    info = zf.getinfo(entry)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise NpyFormatError(f"{archive}:{entry}: compression method {info.compress_type} is not stored/deflated")
    return info


def member_header(stream: IO[bytes], size: int, name: str, max_header_size: int) -> tuple[NpyHeader, bytes]:
    prefix = read_full(stream, 12)
    try:
        length = header_size(prefix, name, max_header_size=max_header_size)
    except ValueError as e:
        if isinstance(e, NpyFormatError):
            raise
        raise NpyFormatError(f"{name}: invalid .npy: the member has only {len(prefix)} bytes") from e
    prefix += read_full(stream, length - len(prefix))
    header = parse_header(prefix, size, name, max_header_size=max_header_size)
    if header.data_offset != len(prefix):
        raise NpyFormatError(f"{name}: header length {header.data_offset} does not match {len(prefix)}")
    return header, prefix


def read_full(stream: IO[bytes], size: int) -> bytes:
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


def stream_blocks(stream: IO[bytes], header: NpyHeader, name: str, memory_bytes: int) -> Iterator[np.ndarray]:
    rows, row_shape, dtype = header.shape[0], header.shape[1:], header.dtype
    row_bytes = dtype.itemsize * math.prod(row_shape)
    if row_bytes == 0:
        yield np.empty((rows, *row_shape), dtype)
        return
    step = block_rows(row_bytes, memory_bytes)
    buffer = bytearray(min(step, rows) * row_bytes)
    for start in range(0, rows, step):
        count = min(step, rows - start)
        view = memoryview(buffer)[: count * row_bytes]
        got = read_into(stream, view, name)
        if got != len(view):
            raise NpyFormatError(f"{name}: truncated member: rows {start}..{start + count} end after {got} bytes")
        yield np.frombuffer(view, dtype).reshape(count, *row_shape)
    read_full(stream, 1)  # reach the end of the member, so zipfile checks its CRC


def read_into(stream: IO[bytes], view: memoryview, name: str) -> int:
    done = 0
    while done < len(view):
        chunk = read_full(stream, min(len(view) - done, COPY_BYTES))
        if not chunk:
            break
        view[done : done + len(chunk)] = chunk
        done += len(chunk)
    return done
