"""Which files in the cache directory are the cache's own, found by a scan: chunk files and claims (counted),
and temporary files a killed process left (deleted). Only regular files named like the cache's, inside object
directories named like its own, are touched; anything else there (a link, a FIFO, ``notes.tmp``) is neither
counted nor deleted."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from pathlib import Path

from npyfeed.storage.cache.chunk_file import TRAILER
from npyfeed.storage.cache.claims import unlink_quietly, unlocked
from npyfeed.storage.cache.private_dir import TEMP_NAME

__all__ = ["CHUNK_NAME", "regular_files", "scan"]

OBJECT_DIR = re.compile(r"^[0-9a-f]{32}$")
CHUNK_NAME = re.compile(r"^[0-9a-f]{16}-(\d+)-\d+$")
PART_NAME = re.compile(r"^[0-9a-f]{16}-(\d+)-\d+\.part$")
ROOT_FILES = (".used", "CACHEDIR.TAG")  # whose temporary files the cache writes in its root
ORPHAN_TMP_SECONDS = 600.0  # a temporary file lives milliseconds; older ones were left by a killed process


def scan(root: Path, exclude: str | None = None) -> tuple[list[tuple[int, int, str]], int]:
    """The chunk files under ``root`` as ``(atime, size, path)``, and the bytes the cache holds: chunks, and claims
    at their full size, but not the ``.part`` named ``exclude`` (the caller's own). Claims whose writer died and
    old temporary files are deleted on the way."""
    chunks: list[tuple[int, int, str]] = []  # (atime, size, path)
    total = 0
    now = time.time()
    for entry in regular_files(root):
        if (m := TEMP_NAME.match(entry.name)) and m.group("name") in ROOT_FILES:
            remove_if_old(entry, now)
    for sub in scandir(root):
        if not OBJECT_DIR.match(sub.name) or not sub.is_dir(follow_symlinks=False):
            continue
        for entry in regular_files(sub.path):
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if CHUNK_NAME.match(entry.name):
                chunks.append((info.st_atime_ns, info.st_size, entry.path))
                total += info.st_size
            elif match := PART_NAME.match(entry.name):
                if entry.name == exclude:
                    continue
                if unlocked(entry.path):  # its writer died
                    unlink_quietly(entry.path)
                else:
                    total += max(info.st_size, int(match.group(1)) + TRAILER.size)
            elif (m := TEMP_NAME.match(entry.name)) and CHUNK_NAME.match(m.group("name")):
                remove_if_old(entry, now)
    return chunks, total


def scandir(path: str | os.PathLike[str]) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def regular_files(path: str | os.PathLike[str]) -> list[os.DirEntry[str]]:
    """The regular files in ``path`` (never a link, a FIFO or a directory: those are not the cache's)."""
    found = []
    for entry in scandir(path):
        with contextlib.suppress(OSError):
            if stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
                found.append(entry)
    return found


def remove_if_old(entry: os.DirEntry[str], now: float) -> None:
    """Delete one of the cache's temporary files left by a killed process (none lives longer than milliseconds)."""
    with contextlib.suppress(OSError):
        if now - entry.stat(follow_symlinks=False).st_mtime > ORPHAN_TMP_SECONDS:
            unlink_quietly(entry.path)
