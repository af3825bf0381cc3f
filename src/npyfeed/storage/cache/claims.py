"""The chunk cache's files: flock claims and their orphans, boot ids and CRCs (see
:mod:`npyfeed.storage.cache.directory`)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import uuid
import zlib
from pathlib import Path

__all__ = [
    "CLOEXEC",
    "NO_BOOT_ID",
    "boot_id",
    "claims",
    "crc_of",
    "mark_checked",
    "part_path",
    "remove_orphan",
    "scandir",
    "unlink_quietly",
    "unlocked",
]

CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_CRC_PIECE = 1 << 20  # checksums read the chunk in pieces of this size: bounded memory
BOOT_ID_BYTES = 16  # the boot id is the last field of a chunk's trailer


def scandir(path: str | os.PathLike[str]) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def unlink_quietly(path: str | os.PathLike[str]) -> bool:
    try:
        Path(path).unlink()
        return True
    except FileNotFoundError:
        return False


def unlocked(path: str | os.PathLike[str], *, shared: bool = False) -> bool:
    """Whether no process holds the flock of ``path`` (a missing file counts as unlocked)."""
    try:
        fd = os.open(path, os.O_RDONLY | CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def remove_orphan(part: Path) -> bool:
    """Remove ``part`` if its writer is gone (its lock is free); whether it is gone now."""
    try:
        fd = os.open(part, os.O_RDONLY | CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        with contextlib.suppress(FileNotFoundError):
            if part.stat().st_ino == os.fstat(fd).st_ino:
                part.unlink()
        return True
    finally:
        os.close(fd)


NO_BOOT_ID = bytes(16)
_boot: list[bytes] = []


def boot_id() -> bytes:
    """This boot of the machine (Linux's ``boot_id``); zeros where unknown (every process then checks CRCs)."""
    if not _boot:
        try:
            _boot.append(uuid.UUID(Path("/proc/sys/kernel/random/boot_id").read_text().strip()).bytes)
        except (OSError, ValueError):
            _boot.append(NO_BOOT_ID)
    return _boot[0]


def mark_checked(path: Path, length: int, trailer_bytes: int) -> None:
    """Write the current boot id into a checked chunk's trailer (best effort: if it fails, it is checked again)."""
    if boot_id() == NO_BOOT_ID:
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | CLOEXEC)
        try:
            os.pwrite(fd, boot_id(), length + trailer_bytes - BOOT_ID_BYTES)
        finally:
            os.close(fd)


def crc_of(fd: int, length: int) -> int:
    crc = 0
    for offset in range(0, length, _CRC_PIECE):
        piece = os.pread(fd, min(_CRC_PIECE, length - offset), offset)
        if not piece:
            raise OSError(errno.EIO, "a cache chunk file ended early")
        crc = zlib.crc32(piece, crc)
    return crc


# Descriptors of the chunks this process is writing. A forked child inherits them, and with them the flock that
# says "being written": closed in the child, so a parent that dies mid-write leaves a claim others can take over.
claims: set[int] = set()


def _close_inherited_claims() -> None:
    for fd in list(claims):
        with contextlib.suppress(OSError):
            os.close(fd)
    claims.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_claims)
