"""One writer per chunk among all processes: claims held by ``flock``.

The writer makes a temporary file, locks it (``flock``), and links it to ``<chunk>.part``; a second process finds
the ``.part``, waits for its lock (at most a deadline: a stopped holder keeps it forever), then uses the finished
chunk or reads the rows from the store itself. A killed writer's lock is released by the kernel: its unlocked
``.part`` is an orphan, which the next claimant (or an eviction scan) removes. Only regular files are ever opened
(:func:`~npyfeed.storage.cache.private_dir.open_regular`): a FIFO named like a claim is never waited on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from npyfeed.storage.cache.private_dir import create_file, make_subdir, open_regular, temp_name

__all__ = ["abandon", "claim", "claims", "holder", "part_path", "remove_orphan", "unlink_quietly", "unlocked", "wait"]


def part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def unlink_quietly(path: str | os.PathLike[str]) -> bool:
    try:
        Path(path).unlink()
        return True
    except FileNotFoundError:
        return False


def unlocked(path: str | os.PathLike[str], *, shared: bool = False) -> bool:
    """Whether no process holds the flock of the regular file ``path`` (missing, or not a regular file: True)."""
    fd = open_regular(path)
    if fd is None:
        return True
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def remove_orphan(part: Path) -> bool:
    """Remove the claim ``part`` if its writer is gone (its lock is free); whether it is gone now. Anything but a
    regular file there is not the cache's: left alone (False)."""
    fd = open_regular(part)
    if fd is None:
        return not os.path.lexists(part)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        with contextlib.suppress(FileNotFoundError):
            if part.stat(follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                part.unlink()
        return True
    finally:
        os.close(fd)


def claim(path: Path) -> int | None:
    """Become the one writer of chunk ``path``: an open, locked descriptor of ``<path>.part``, or None if another
    live process is writing it (see :func:`wait`) or something not the cache's is in the way."""
    make_subdir(path.parent)
    part = part_path(path)
    for _ in range(3):
        tmp = path.parent / temp_name(path.name)
        fd = create_file(tmp)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # locked before it has the .part name: no one sees it unlocked
            os.link(tmp, part)
            claims.add(fd)
        except FileExistsError:
            os.close(fd)
            unlink_quietly(tmp)
            if not remove_orphan(part):
                return None
            continue
        except BaseException:
            os.close(fd)
            unlink_quietly(tmp)
            raise
        unlink_quietly(tmp)
        return fd
    return None


def holder(path: Path) -> tuple[int, int] | None:
    """Which claim file is at ``<path>.part`` (device, inode), to recognise a claim already waited on."""
    try:
        info = part_path(path).stat(follow_symlinks=False)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def wait(path: Path, timeout: float) -> bool:
    """Wait at most ``timeout`` seconds until no process is writing chunk ``path``; whether none is."""
    part = part_path(path)
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        if unlocked(part, shared=True):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.05)


def abandon(fd: int, path: Path) -> None:
    """Give up a claimed chunk: remove its ``.part`` (if still ours) and close ``fd``."""
    try:
        with contextlib.suppress(FileNotFoundError):
            if part_path(path).stat(follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                part_path(path).unlink()
    finally:
        claims.discard(fd)
        os.close(fd)


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
