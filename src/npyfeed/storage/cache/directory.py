"""The cache's directory: its files, the space they take, and eviction of its own files only.

``storage_options={"cache_dir": "~/.cache/npyfeed", "cache_size": "20GB"}`` (and optionally
``"cache_chunk_bytes"``, 4 MiB by default; see :mod:`npyfeed.storage.cache.options`) turns it on;
:class:`npyfeed.storage.cache.cached_object.CachedObject` reads rows through it. Layout::

    <cache_dir>/CACHEDIR.TAG              the marker: this directory is the cache's (see private_dir)
    <cache_dir>/.lock                     flock'ed while space is reserved or freed
    <cache_dir>/.used                     bytes held by chunk files (a counter; rebuilt by a scan when missing)
    <cache_dir>/<sha256(url)[:32]>/<sha256(version)[:16]>-<chunk bytes>-<index>      a chunk: data + trailer
    <cache_dir>/<sha256(url)[:32]>/<chunk name>.part                                 a claim (see claims)

Space: before a chunk is written, its bytes are reserved in ``.used`` under ``.lock``; when they do not fit, a
scan deletes the least recently used chunks (``atime``, which a read sets explicitly, whatever the mount's
``noatime``) until they do, or the chunk is not cached (its rows are read from the store instead). ``.part`` files
count at their full size, so the directory stays under the limit while chunks are being written. The lock is
waited for at most the storage ``deadline`` (a stopped process may hold it forever): then, and until it is free
again, chunks are not cached (a ``TimeoutError``, which the readers turn into rows read from the store).

Eviction deletes only what the cache made: regular files named like its chunks, claims and temporary files,
inside object directories named like its own, inside the marked directory. Anything else there (``notes.tmp``, a
FIFO, a link, a directory) is neither counted nor deleted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from npyfeed.errors import CacheWarning, ConfigError
from npyfeed.storage.cache.chunk_file import TRAILER, finish, is_good, mark_checked
from npyfeed.storage.cache.claims import claims, part_path, unlink_quietly
from npyfeed.storage.cache.options import CacheOptions
from npyfeed.storage.cache.private_dir import (
    check_private,
    create_file,
    ensure_marker,
    make_dirs,
    open_or_create,
    open_regular,
    read_text,
    temp_name,
    write_file,
)
from npyfeed.storage.cache.scan import CHUNK_NAME, regular_files, scan

__all__ = ["THRASH_RATIO", "TRAILER", "ChunkDirectory", "chunk_directory"]

THRASH_RATIO = 4
"""Warn when chunks fetched exceed this many times the rows served, the cache having turned over once."""


class ChunkDirectory:
    """One private cache directory: reserving space (evicting the least recently used chunks), publishing and
    opening verified chunk files. Thread-safe; processes coordinate through ``flock``."""

    def __init__(self, options: CacheOptions) -> None:
        self.options = options
        self.root = Path(options.directory)
        self._lock = threading.Lock()  # flock excludes other processes, not this process's other threads
        self._failed = False
        self._lock_wait = math.inf  # see wait_at_most
        self._lock_stuck = False  # the last wait for .lock timed out: try once, not wait, until it is free
        try:
            make_dirs(self.root)
            check_private(self.root)  # a ConfigError naming the owner and mode found
            ensure_marker(self.root)
            probe = self.root / temp_name(".used")  # named like a temporary file: removed if left behind
            os.close(create_file(probe))
            probe.unlink()
            fd = open_or_create(self.root / ".lock")
            try:  # flock works there (not on every network filesystem)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # held by another process: flock works
            finally:
                os.close(fd)
        except OSError as e:
            raise ConfigError(
                f"storage_options['cache_dir'] = {options.directory!r}: cannot be used as a cache directory "
                f"(it must be a writable directory): {e.strerror or e}"
            ) from e
        self._verified: set[tuple[int, int, int, int]] = set()
        self.evicted = 0
        """Chunk files this process deleted to make room (for tests and ``npyfeed bench``)."""
        self.fetched_bytes = 0
        """Bytes of chunks this process fetched into the cache."""
        self.served_bytes = 0
        """Bytes of rows this process's gathers returned through the cache."""
        self._warned = False

    @property
    def limit(self) -> int:
        return self.options.size

    def wait_at_most(self, seconds: float) -> None:
        """Bound the wait for the space lock (the shortest storage ``deadline`` of the objects using the cache)."""
        with self._lock:
            self._lock_wait = min(self._lock_wait, seconds)

    # -- space -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``.lock`` (and this process's lock); a TimeoutError after :meth:`wait_at_most` seconds."""
        with self._lock:
            fd = open_or_create(self.root / ".lock")
            try:
                deadline = time.monotonic() + (0.0 if self._lock_stuck else self._lock_wait)
                delay = 0.0005
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            self._lock_stuck = True
                            raise TimeoutError(
                                errno.ETIMEDOUT,
                                f"the cache's space lock is held by a process that does not let go (stopped?) for "
                                f"over {self._lock_wait:g} s",
                                str(self.root / ".lock"),
                            ) from None
                        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                        delay = min(delay * 2, 0.02)
                self._lock_stuck = False
                yield
            finally:
                os.close(fd)  # releases the flock

    def _read_used(self) -> int | None:
        text = read_text(self.root / ".used")
        try:
            return int(text) if text and text.strip() else None
        except ValueError:
            return None

    def _write_used(self, used: int) -> None:
        write_file(self.root / ".used", str(max(0, used)))

    def reserve(self, nbytes: int, part: Path | None = None) -> bool:
        """Count ``nbytes`` of a chunk about to be written (claimed as ``part``), evicting least recently used
        chunks to make room; False if they cannot fit (the chunk is then not cached)."""
        if nbytes > self.limit:
            return False
        with self._locked():
            used = self._read_used()
            if used is None or used + nbytes > self.limit:
                used = self._evict(self.limit - nbytes, exclude=None if part is None else part_path(part).name)
                if used + nbytes > self.limit:
                    self._write_used(used)
                    return False
            self._write_used(used + nbytes)
            return True

    def release(self, nbytes: int) -> None:
        """Give back space reserved for a chunk that was not written, or held by a chunk file deleted."""
        with self._locked():
            used = self._read_used()
            if used is not None:
                self._write_used(used - nbytes)

    def used(self) -> int:
        """Bytes held, by a scan (also rewrites the counter): chunk files, and chunks being written at their full
        size (an upper bound while writers are claiming: a claim is made before its room is reserved)."""
        with self._locked():
            used = self._evict(None)
            self._write_used(used)
            return used

    def _evict(self, target: int | None, exclude: str | None = None) -> int:
        """Scan the directory (under the lock); delete least recently used chunks until at most ``target`` bytes
        remain (None: delete nothing but orphans). Returns the bytes left, not counting the ``.part`` named
        ``exclude`` (the caller's own, reserved separately). Only the cache's own files are touched."""
        chunks, total = scan(self.root, exclude)
        if target is not None and total > target:
            chunks.sort()
            for _, size, path in chunks:
                if total <= target:
                    break
                if unlink_quietly(path):
                    self.evicted += 1
                total -= size
        return total

    def count(self, fetched: int = 0, served: int = 0) -> None:
        """Add to the byte counters; warn once if the cache is thrashing (see :data:`THRASH_RATIO`)."""
        with self._lock:
            self.fetched_bytes += fetched
            self.served_bytes += served
            thrashing = (
                not self._warned
                and self.evicted * self.options.chunk_bytes > self.limit
                and self.fetched_bytes > THRASH_RATIO * self.served_bytes + self.limit
            )
            self._warned = self._warned or thrashing
        if thrashing:
            warnings.warn(
                f"npyfeed cache {self.options.directory}: {self.fetched_bytes / 1e6:.1f} MB of chunks fetched for "
                f"{self.served_bytes / 1e6:.1f} MB of rows, and chunks are evicted before they are used again: "
                f"the data read in random order (shuffle=True) is larger than cache_size ({self.limit / 1e6:.1f} "
                "MB). Raise cache_size, read in block-shuffle order, or turn the cache off",
                CacheWarning,
                stacklevel=4,
            )

    def failed(self, error: OSError) -> None:
        """A chunk could not be written here (disk full, filesystem errors, something not the cache's in the way):
        warn once; its rows are read from the store."""
        with self._lock:
            first, self._failed = not self._failed, True
        if first:
            warnings.warn(
                f"npyfeed cache {self.options.directory}: cannot write a chunk ({error}); reading those rows from "
                "the store instead",
                CacheWarning,
                stacklevel=4,
            )

    # -- chunk files --------------------------------------------------------------------------------------------
    def publish(self, fd: int, path: Path, length: int, digest: bytes) -> bool:
        """Finish the claimed chunk ``path`` whose ``length`` data bytes were written to ``fd``: append the
        trailer and rename it in place (replacing a link or a FIFO there; a directory there is an OSError and
        the claim is removed). Closes ``fd``; False if the ``.part`` was taken away meanwhile."""
        part = part_path(path)
        try:
            finish(fd, length, digest)
            info = os.fstat(fd)
            part.rename(path)
        except FileNotFoundError:
            return False
        except OSError:
            with contextlib.suppress(OSError):
                if part.stat(follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    part.unlink()
            raise
        finally:
            claims.discard(fd)
            os.close(fd)
        with self._lock:
            self._verified.add((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
        return True

    def open(self, path: Path, length: int, digest: bytes) -> int | None:
        """An open descriptor of chunk ``path`` if it is a regular file holding ``length`` good bytes of this key
        (see :func:`~npyfeed.storage.cache.chunk_file.is_good`); else None: a bad chunk file is deleted (so the
        chunk is fetched again); anything but a regular file is never opened. Marks it used (atime) for eviction.
        """
        try:
            fd = open_regular(path)
        except OSError:  # no way to it: read from the store
            return None
        if fd is None:
            return None
        try:
            info = os.fstat(fd)
            identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
            good, checked = is_good(fd, info, length, digest, identity in self._verified)
            if checked:
                with self._lock:
                    self._verified.add(identity)
                mark_checked(path, length)
            if not good:
                os.close(fd)
                self._discard(path, info)
                return None
            with contextlib.suppress(OSError):
                os.utime(fd, ns=(time.time_ns(), info.st_mtime_ns))  # last use, for LRU eviction
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    def _discard(self, path: Path, info: os.stat_result) -> None:
        """Delete a bad chunk file (if ``path`` still names it) and give back its space."""
        with contextlib.suppress(FileNotFoundError):
            now = path.stat(follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino):
                path.unlink()
                with contextlib.suppress(OSError):  # a counter left high is corrected by the next scan
                    self.release(info.st_size)

    def remove_other_versions(self, directory: Path, keep: str) -> None:
        """Delete the chunk files in ``directory`` (one object) whose version is not ``keep`` (a replaced object's
        old chunks: never served again), giving back their space."""
        freed = 0
        for entry in regular_files(directory):
            if CHUNK_NAME.match(entry.name) and not entry.name.startswith(keep + "-"):
                with contextlib.suppress(FileNotFoundError):
                    size = entry.stat(follow_symlinks=False).st_size
                    Path(entry.path).unlink()
                    freed += size
        if freed:
            self.release(freed)


_caches: dict[tuple[int, CacheOptions], ChunkDirectory] = {}
_caches_lock = threading.Lock()


def chunk_directory(options: CacheOptions) -> ChunkDirectory:
    """The process's :class:`ChunkDirectory` for these options (one per directory and settings)."""
    key = (os.getpid(), options)
    with _caches_lock:
        cache = _caches.get(key)
        if cache is None:
            cache = _caches[key] = ChunkDirectory(options)
        return cache
