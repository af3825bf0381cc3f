"""A local directory of fixed-size chunks of remote objects, shared by processes and kept under a size limit.

``storage_options={"cache_dir": "/tmp/npyfeed-cache", "cache_size": "20GB"}`` (and optionally
``"cache_chunk_bytes"``, 4 MiB by default; see :mod:`npyfeed.storage.cache.options`) turns it on;
:class:`npyfeed.storage.cache.cached_object.CachedObject` reads rows through it. This module is the directory
alone: names, space, writing and checking chunk files. Layout::

    <cache_dir>/.lock                     flock'ed while space is reserved or freed
    <cache_dir>/.used                     bytes held by chunk files (a counter; rebuilt by a scan when missing)
    <cache_dir>/<sha256(url)[:32]>/<sha256(version)[:16]>-<chunk bytes>-<index>      a chunk: data + trailer

- A chunk file is its data followed by a 48-byte trailer (magic, data length, CRC-32 of the data, a digest of the
  key, a boot id), so a truncated file, a file of another object, or bytes changed on disk (a power loss before the
  data was flushed) are caught: such a file is deleted and the chunk fetched again. The CRC is read back when a
  chunk is written, and checked again the first time a chunk is used after a reboot (see :meth:`ChunkDirectory.open`).
- One writer per chunk among all processes: the writer makes a temporary file, locks it (``flock``), and links it
  to ``<name>.part``; a second process finds the ``.part``, waits for its lock, then uses the finished chunk. A
  killed writer leaves an unlocked ``.part``, which the next claimant (or a scan) removes. A chunk is published by
  ``rename``, so no reader ever sees half of one.
- Space: before a chunk is written, its bytes are reserved in ``.used`` under ``.lock``; when they do not fit, a
  scan deletes the least recently used chunks (``atime``, which a read sets explicitly, whatever the mount's
  ``noatime``) until they do, or the chunk is not cached (its rows are read from the store instead). ``.part``
  files count at their full size, so the directory stays under the limit while chunks are being written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import struct
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from npyfeed.errors import ConfigError
from npyfeed.storage.cache.claims import (
    CLOEXEC,
    NO_BOOT_ID,
    boot_id,
    claims,
    crc_of,
    mark_checked,
    part_path,
    remove_orphan,
    scandir,
    unlink_quietly,
    unlocked,
)
from npyfeed.storage.cache.options import TRAILER_BYTES, CacheOptions

__all__ = ["TRAILER", "ChunkDirectory", "chunk_directory"]

# magic, data length, crc32 of the data, (padding), key digest, boot id of the machine's boot that wrote or last
# checked it (see ChunkDirectory.open).
TRAILER = struct.Struct("<8sQI4x8s16s")
assert TRAILER.size == TRAILER_BYTES
_MAGIC = b"NPYFCHK2"
_CHUNK_NAME = re.compile(r"^[0-9a-f]{16}-(\d+)-\d+$")
_PART_NAME = re.compile(r"^[0-9a-f]{16}-(\d+)-\d+\.part$")
THRASH_RATIO = 4
"""Warn when chunks fetched exceed this many times the rows served, the cache having turned over once."""
_ORPHAN_TMP_SECONDS = 600.0  # a claim's temporary file lives milliseconds; older ones were left by a killed process


class ChunkDirectory:
    """One cache directory: reserving space (evicting the least recently used chunks), claiming, publishing and
    checking chunk files. Thread-safe; processes coordinate through ``flock``."""

    def __init__(self, options: CacheOptions) -> None:
        self.options = options
        self.root = Path(options.directory)
        self._lock = threading.Lock()  # flock excludes other processes, not this process's other threads
        self._failed = False
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe.{os.getpid()}.{secrets.token_hex(4)}"
            probe.touch()
            probe.unlink()
            (self.root / ".lock").touch()
            with self._locked():  # flock works there (not on every network filesystem)
                pass
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

    # -- space -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _read_used(self) -> int | None:
        try:
            text = (self.root / ".used").read_text()
            return int(text) if text.strip() else None
        except (OSError, ValueError):
            return None

    def _write_used(self, used: int) -> None:
        tmp = self.root / f".used.{os.getpid()}.{threading.get_ident()}"
        tmp.write_text(str(max(0, used)))
        tmp.replace(self.root / ".used")

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
        ``exclude`` (the caller's own, reserved separately)."""
        chunks: list[tuple[int, int, str]] = []  # (atime, size, path)
        total = 0
        now = time.time()
        for sub in scandir(self.root):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for entry in scandir(sub.path):
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if _CHUNK_NAME.match(entry.name):
                    chunks.append((info.st_atime_ns, info.st_size, entry.path))
                    total += info.st_size
                elif match := _PART_NAME.match(entry.name):
                    if entry.name == exclude:
                        continue
                    if unlocked(entry.path):  # its writer died
                        unlink_quietly(entry.path)
                    else:
                        total += max(info.st_size, int(match.group(1)) + TRAILER.size)
                elif entry.name.endswith(".tmp") and now - info.st_mtime > _ORPHAN_TMP_SECONDS:
                    unlink_quietly(entry.path)
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
                RuntimeWarning,
                stacklevel=4,
            )

    def failed(self, error: OSError) -> None:
        """A chunk could not be written here (disk full, filesystem errors): warn once; its rows are read from
        the store."""
        with self._lock:
            first, self._failed = not self._failed, True
        if first:
            warnings.warn(
                f"npyfeed cache {self.options.directory}: cannot write a chunk ({error}); reading those rows from "
                "the store instead",
                RuntimeWarning,
                stacklevel=4,
            )

    # -- writing ------------------------------------------------------------------------------------------------
    def claim(self, path: Path) -> int | None:
        """Become the one writer of chunk ``path``: an open, locked descriptor of ``<path>.part``, or None if
        another live process is writing it (see :meth:`wait`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        part = part_path(path)
        for _ in range(3):
            tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | CLOEXEC, 0o644)
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

    def wait(self, path: Path, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until no process is writing chunk ``path``."""
        part = part_path(path)
        deadline = time.monotonic() + timeout
        delay = 0.002
        while time.monotonic() < deadline:
            if not part.exists() or unlocked(part, shared=True):
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def publish(self, fd: int, path: Path, length: int, digest: bytes) -> bool:
        """Finish the claimed chunk ``path`` whose ``length`` data bytes were written to ``fd``: append the
        trailer and rename it in place. Closes ``fd``; False if the ``.part`` was taken away meanwhile."""
        try:
            crc = crc_of(fd, length)
            os.pwrite(fd, TRAILER.pack(_MAGIC, length, crc, digest, boot_id()), length)
            info = os.fstat(fd)
            part_path(path).rename(path)
        except FileNotFoundError:
            return False
        finally:
            claims.discard(fd)
            os.close(fd)
        with self._lock:
            self._verified.add((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
        return True

    def abandon(self, fd: int, path: Path) -> None:
        """Give up a claimed chunk: remove its ``.part`` (if still ours) and close ``fd``."""
        try:
            with contextlib.suppress(FileNotFoundError):
                if part_path(path).stat().st_ino == os.fstat(fd).st_ino:
                    part_path(path).unlink()
        finally:
            claims.discard(fd)
            os.close(fd)

    # -- reading ------------------------------------------------------------------------------------------------
    def open(self, path: Path, length: int, digest: bytes) -> int | None:
        """An open descriptor of chunk ``path`` if it holds ``length`` good bytes of this key; else None (a file
        found bad is deleted, so the chunk is fetched again). Marks it used (its atime) for eviction.

        A file whose length or trailer is wrong is bad. Its CRC is checked when it was written (or last checked)
        before the machine's current boot (a crash before the page cache reached the disk is how a complete-looking
        file goes bad; the CRC of a file written since boot was computed from the bytes it holds). Once checked, its
        trailer takes the current boot id, so every process of this boot trusts it without reading it again.
        """
        try:
            fd = os.open(path, os.O_RDONLY | CLOEXEC)
        except OSError:  # not there (or no way to it: read from the store)
            return None
        try:
            info = os.fstat(fd)
            identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
            good = info.st_size == length + TRAILER.size
            if good:
                raw = os.pread(fd, TRAILER.size, length).ljust(TRAILER.size, b"\0")
                magic, found, crc, key, boot = TRAILER.unpack(raw)
                good = magic == _MAGIC and found == length and key == digest
            if good and (boot != boot_id() or boot == NO_BOOT_ID) and identity not in self._verified:
                try:
                    good = crc_of(fd, length) == crc
                except OSError:  # shortened while being checked
                    good = False
                if good:
                    with self._lock:
                        self._verified.add(identity)
                    mark_checked(path, length, TRAILER.size)
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
            now = path.stat()
            if (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino):
                path.unlink()
                self.release(info.st_size)

    def remove_other_versions(self, directory: Path, keep: str) -> None:
        """Delete the chunk files in ``directory`` (one object) whose version is not ``keep`` (a replaced object's
        old chunks: never served again), giving back their space."""
        freed = 0
        for entry in scandir(directory):
            if _CHUNK_NAME.match(entry.name) and not entry.name.startswith(keep + "-"):
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
