"""A chunk file: its data, then a trailer that says whose chunk it is and lets a reader verify it.

The trailer holds a magic, the data length, a CRC-32 of the data, a digest of the key (URL, version, chunk size,
index) and the boot id of the machine's boot that wrote or last checked it. A truncated file, a file of another
object, or bytes changed on disk (a power loss before the data was flushed) are found bad, and the chunk is fetched
again. The CRC is read back when a chunk is written, and checked again the first time a chunk is used after a
reboot (a crash before the page cache reached the disk is how a complete-looking file goes bad; the CRC of a file
written since boot was computed from the bytes it holds). Once checked, its trailer takes the current boot id, so
every process of this boot trusts it without reading it again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import uuid
import zlib
from pathlib import Path

from npyfeed.storage.cache.options import TRAILER_BYTES
from npyfeed.storage.cache.private_dir import open_regular

__all__ = ["NO_BOOT_ID", "TRAILER", "boot_id", "crc_of", "finish", "is_good", "mark_checked"]

# magic, data length, crc32 of the data, (padding), key digest, boot id of the boot that wrote or last checked it.
TRAILER = struct.Struct("<8sQI4x8s16s")
assert TRAILER.size == TRAILER_BYTES
_MAGIC = b"NPYFCHK2"
_CRC_PIECE = 1 << 20  # checksums read the chunk in pieces of this size: bounded memory
_BOOT_ID_BYTES = 16  # the boot id is the last field of the trailer
NO_BOOT_ID = bytes(_BOOT_ID_BYTES)
_boot: list[bytes] = []


def boot_id() -> bytes:
    """This boot of the machine (Linux's ``boot_id``); zeros where unknown (every process then checks CRCs)."""
    if not _boot:
        try:
            _boot.append(uuid.UUID(Path("/proc/sys/kernel/random/boot_id").read_text().strip()).bytes)
        except (OSError, ValueError):
            _boot.append(NO_BOOT_ID)
    return _boot[0]


def crc_of(fd: int, length: int) -> int:
    crc = 0
    for offset in range(0, length, _CRC_PIECE):
        piece = os.pread(fd, min(_CRC_PIECE, length - offset), offset)
        if not piece:
            raise OSError(errno.EIO, "a cache chunk file ended early")
        crc = zlib.crc32(piece, crc)
    return crc


def finish(fd: int, length: int, digest: bytes) -> None:
    """Append the trailer to the ``length`` data bytes written to ``fd`` (their CRC read back from the file)."""
    os.pwrite(fd, TRAILER.pack(_MAGIC, length, crc_of(fd, length), digest, boot_id()), length)


def is_good(fd: int, info: os.stat_result, length: int, digest: bytes, trusted: bool) -> tuple[bool, bool]:
    """``(good, checked)``: whether the open chunk file ``fd`` (``fstat`` ``info``) holds ``length`` good bytes of
    the key ``digest``, and whether its CRC was read just now (then the caller trusts it from now on and calls
    :func:`mark_checked`). ``trusted``: this process already checked this very file (inode, size, mtime)."""
    if info.st_size != length + TRAILER.size:
        return False, False
    raw = os.pread(fd, TRAILER.size, length).ljust(TRAILER.size, b"\0")
    magic, found, crc, key, boot = TRAILER.unpack(raw)
    if magic != _MAGIC or found != length or key != digest:
        return False, False
    if trusted or (boot == boot_id() and boot != NO_BOOT_ID):
        return True, False
    try:
        return crc_of(fd, length) == crc, True
    except OSError:  # shortened while being checked
        return False, False


def mark_checked(path: Path, length: int) -> None:
    """Write the current boot id into a checked chunk's trailer (best effort: if it fails, it is checked again)."""
    if boot_id() == NO_BOOT_ID:
        return
    with contextlib.suppress(OSError):
        fd = open_regular(path, os.O_WRONLY)
        if fd is not None:
            try:
                os.pwrite(fd, boot_id(), length + TRAILER.size - _BOOT_ID_BYTES)
            finally:
                os.close(fd)
