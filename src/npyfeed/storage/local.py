"""A local file as :class:`~npyfeed.storage.Storage`: one descriptor held from open, reads through ``mmap``.

The descriptor is opened once, so the header and every row come from the same inode. Every gather first checks
that the file is still the version opened (``fstat``: size and mtime; ``stat`` of the path: the same inode, not
deleted) and checks again after copying, so a batch is never made of two versions; a page that vanishes during
the copy (the file truncated, its filesystem gone) is caught by :mod:`npyfeed.storage.sigbus` instead of
killing the process. Any change raises :class:`~npyfeed.FileChangedError` naming the file.

Gathers view the mapping as ``(records, record_bytes)`` bytes and use ``np.take`` (memmove per record, GIL
released, padding bytes copied as they are), with kernel hints: ``advise("random")`` stops the 8 MB read-around a
random page fault would otherwise trigger, ``advise("sequential")`` doubles read-ahead, and ``will_need`` queues
reads without waiting, so a cold random batch keeps the device's queue deep instead of faulting page by page.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from npyfeed.errors import FileChangedError, NpyFormatError
from npyfeed.storage import sigbus
from npyfeed.storage.base import AccessPattern

__all__ = ["LocalFile"]

_WILLNEED_PIECE = 128 << 10  # the smallest read-ahead window Linux ships with (read_ahead_kb = 128)
_MADVISE = {"normal": "MADV_NORMAL", "sequential": "MADV_SEQUENTIAL", "random": "MADV_RANDOM", "sparse": "MADV_RANDOM"}
_FADVISE = {
    "normal": "POSIX_FADV_NORMAL",
    "sequential": "POSIX_FADV_SEQUENTIAL",
    "random": "POSIX_FADV_RANDOM",
    "sparse": "POSIX_FADV_RANDOM",
}

Version = tuple[int, int, int, int]


def _version(info: os.stat_result) -> Version:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


_LIMIT_LOCK = threading.Lock()


def _raise_open_file_limit() -> bool:
    """Raise this process's soft limit of open files to its hard limit; whether the soft limit went up.

    A descriptor is held per file from open (see the module docstring), so a glob of thousands of shards needs more
    than the usual soft limit of 1,024; the hard limit is usually far higher, and raising the soft one up to it
    needs no privilege (servers and Python's own test suite do the same).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return False
    with _LIMIT_LOCK:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        if soft != resource.RLIM_INFINITY and soft >= target:
            return False
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return False
        return True


def _open_readonly(name: str) -> int:
    # O_NONBLOCK: opening a FIFO for reading must not wait for a writer; non-regular files are refused by the caller.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(name, flags)
    except OSError as e:
        if e.errno != errno.EMFILE:
            raise
        if _raise_open_file_limit():
            with contextlib.suppress(OSError):
                return os.open(name, flags)
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        raise OSError(
            errno.EMFILE,
            f"{name}: cannot open: this process has {soft} open files, its limit (ulimit -n; hard limit {hard}). "
            "npyfeed holds one descriptor per .npy file it opens: raise the limit, or merge shards into fewer, "
            "larger files (npyfeed convert 'x_*.npy' x.npy)",
            name,
        ) from e


class LocalFile:
    """The bytes of one regular file, pinned to the inode and version opened."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._name = os.fspath(path)
        fd = _open_readonly(self._name)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
                raise NpyFormatError(f"{self._name}: cannot read as .npy: it is {kind}")
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd
        self._version = _version(info)
        self._lock = threading.Lock()
        self._mmap: mmap.mmap | None = None
        self._watch: sigbus.Watch | None = None
        self._records: dict[tuple[int, int], np.ndarray] = {}

    @property
    def name(self) -> str:
        return self._name

    @property
    def size(self) -> int:
        return self._version[2]

    @property
    def version(self) -> Version:
        return self._version

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self._name}: the file was closed")
        return self._fd

    def __repr__(self) -> str:
        return f"LocalFile({self._name!r})"

    # -- pickling: a worker process reopens the path and checks it is still the same version -------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self._name, "version": self._version}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]
        if self._version != tuple(state["version"]):
            found = self._version
            self.close()
            raise FileChangedError(f"{self._name}: {_describe(tuple(state['version']), found)} since it was opened")

    # -- checks --------------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`FileChangedError` if the open file was truncated or rewritten, or the path now names
        another file (replaced or deleted)."""
        self._check_open()
        try:
            at_path = os.stat(self._name)  # noqa: PTH116 (no Path object per check)
        except FileNotFoundError as e:
            raise FileChangedError(f"{self._name}: the file was deleted since it was opened") from e
        if (at_path.st_dev, at_path.st_ino) != self._version[:2]:
            raise FileChangedError(
                f"{self._name}: the path now names another file (replaced since it was opened: inode "
                f"{at_path.st_ino} of {at_path.st_size} bytes, expected inode {self._version[1]} of "
                f"{self._version[2]} bytes)"
            )

    def _check_open(self) -> None:
        """The open file (whatever the path names now) is still the version opened, and no page of it vanished."""
        found = _version(os.fstat(self.fd))
        if found != self._version:
            raise FileChangedError(f"{self._name}: {_describe(self._version, found)} since it was opened")
        if self._watch is not None and self._watch.faulted:
            raise FileChangedError(
                f"{self._name}: a page of the file could not be read (an I/O error, or its filesystem went away) "
                f"after it was opened"
            )

    # -- reading -------------------------------------------------------------------------------------------------
    def read_into(self, offset: int, out: np.ndarray) -> None:
        view = memoryview(out).cast("B")  # type: ignore[arg-type]
        done = 0
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], offset + done)
            if n == 0:
                raise FileChangedError(
                    f"{self._name}: the file ends at {offset + done} bytes, reading {len(view)} bytes at offset "
                    f"{offset} (it had {self.size} bytes when opened)"
                )
            done += n

    def _mapping(self) -> mmap.mmap:
        if self._mmap is None:
            with self._lock:
                if self._mmap is None:
                    found = _version(os.fstat(self.fd))
                    if found != self._version:
                        raise FileChangedError(f"{self._name}: {_describe(self._version, found)} since it was opened")
                    mapping = mmap.mmap(self.fd, self.size, access=mmap.ACCESS_READ)
                    if sigbus.enabled(recheck=True):
                        address = np.frombuffer(mapping, np.uint8, count=1).ctypes.data
                        self._watch = sigbus.watch(mapping, address, self.size)
                    self._mmap = mapping
        return self._mmap

    def records(self, base: int, record_bytes: int) -> np.ndarray:
        """A read-only ``(records, record_bytes)`` uint8 view of the mapping from ``base`` on (cached)."""
        key = (base, record_bytes)
        view = self._records.get(key)
        if view is None:
            count = (self.size - base) // record_bytes
            view = np.ndarray((count, record_bytes), np.uint8, buffer=self._mapping(), offset=base)
            view.flags.writeable = False
            self._records[key] = view
        return view

    def map_array(self, offset: int, shape: tuple[int, ...], dtype: np.dtype[Any], fortran: bool) -> np.ndarray:
        """A read-only, zero-copy ndarray over the mapping (what ``np.load(mmap_mode="r")`` returns)."""
        if self.size == 0 or offset >= self.size:
            view = np.empty(shape, dtype, order="F" if fortran else "C")
        else:
            view = np.ndarray(shape, dtype, buffer=self._mapping(), offset=offset, order="F" if fortran else "C")
        view.flags.writeable = False
        return view

    def gather(self, base: int, record_bytes: int, indices: np.ndarray, out: np.ndarray) -> None:
        if indices.size == 0 or record_bytes == 0:
            return
        self.check()
        out2 = out.reshape(indices.size, record_bytes)
        if not sigbus.enabled():
            self._pread_gather(base, record_bytes, indices, out2)
        else:
            records = self.records(base, record_bytes)
            first, last = int(indices[0]), int(indices[-1])
            if last - first == indices.size - 1 and (indices.size == 1 or (np.diff(indices) == 1).all()):
                # One run of consecutive records: a plain slice copy (memcpy speed, GIL released).
                np.copyto(out2, records[first : last + 1])
            else:
                # mode="clip" skips NumPy's buffered bounds check (indices are validated by the caller).
                np.take(records, indices, axis=0, out=out2, mode="clip")
        self._check_open()  # changed while copying: the batch may hold bytes of two versions

    def copy_run(self, base: int, record_bytes: int, first: int, out: np.ndarray) -> None:
        """Records ``first..first + len(out) - 1`` into ``out`` (``(records, record_bytes)`` uint8), then the open
        file checked as :meth:`gather` checks it after copying (``fstat``: the version opened, no page vanished).

        The cheap form of :meth:`gather` for reads in file order on the consumer's thread: the caller calls
        :meth:`check` before its first run and every few MiB after (the path's ``stat``, ~2 us); since each run's
        check after it is the next one's check before, every run is copied between two checks of the version.
        """
        if not len(out) or record_bytes == 0:
            return
        if self._watch is None and not sigbus.enabled():
            self.read_into(base + first * record_bytes, out)
        else:
            np.copyto(out, self.records(base, record_bytes)[first : first + len(out)])
        self._check_open()

    def _pread_gather(self, base: int, record_bytes: int, indices: np.ndarray, out: np.ndarray) -> None:
        """The same gather with ``pread``, one call per run of consecutive records (safe without the guard)."""
        breaks = np.flatnonzero(np.diff(indices) != 1) + 1
        starts = np.concatenate(([0], breaks)).tolist()
        stops = np.concatenate((breaks, [indices.size])).tolist()
        flat = out.reshape(-1)
        for a, b in zip(starts, stops, strict=True):
            self.read_into(base + int(indices[a]) * record_bytes, flat[a * record_bytes : b * record_bytes])

    # -- hints ---------------------------------------------------------------------------------------------------
    def will_need(self, ranges: Sequence[tuple[int, int]]) -> None:
        if self._fd is None or not hasattr(os, "posix_fadvise"):
            return
        for offset, end in ranges:
            # The kernel reads at most its read-ahead window per WILLNEED call (8 MiB here, often 128 KiB) and
            # silently ignores the rest, so long ranges go in pieces.
            for piece in range(offset, end, _WILLNEED_PIECE):
                os.posix_fadvise(self._fd, piece, min(_WILLNEED_PIECE, end - piece), os.POSIX_FADV_WILLNEED)

    def advise(self, pattern: AccessPattern) -> None:
        if self._fd is None:
            return
        if self.size and hasattr(mmap, _MADVISE[pattern]):
            self._mapping().madvise(getattr(mmap, _MADVISE[pattern]))
        if hasattr(os, _FADVISE[pattern]):
            os.posix_fadvise(self._fd, 0, 0, getattr(os, _FADVISE[pattern]))

    def drop_page_tables(self) -> None:
        """Unmap the pages touched so far (they stay in the page cache) and free the page tables that mapped them.

        Random reads over a big mapping leave a 4 KiB page table per 2 MiB touched, charged to the process until
        unmapped; the loader's memory budget calls this once they pass their share. Safe while other threads
        read: their next access just faults the page in again.
        """
        mapping = self._mmap
        if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            with contextlib.suppress(ValueError):  # closed meanwhile
                mapping.madvise(mmap.MADV_DONTNEED)

    # -- lifetime ------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the descriptor and mapping (arrays handed out earlier keep the mapping alive)."""
        with self._lock:
            self._records.clear()
            self._mmap = None  # unmapped when the last view of it is gone
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> LocalFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(expected: Version, found: Version) -> str:
    if found[:2] != expected[:2]:
        return f"the path names another file (inode {found[1]}, expected {expected[1]})"
    if found[2] != expected[2]:
        verb = "truncated" if found[2] < expected[2] else "extended"
        return f"the file was {verb} to {found[2]} bytes (it had {expected[2]})"
    return f"the file was rewritten (modified at {found[3]} ns, expected {expected[3]} ns)"
