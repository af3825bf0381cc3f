"""The cache's directory is private, and the cache keeps to what it made there.

- Directories are created 0700 and files 0600 whatever the umask (chunks hold private bucket data).
- A ``cache_dir`` owned by another user, or that group or others can write, or whose parents would let another
  user replace it, is refused (:class:`ConfigError`): whoever can write there could forge chunks that this user's
  jobs would serve as data.
- A marker file, ``CACHEDIR.TAG`` (the Cache Directory Tagging convention, so backup tools skip it), is written
  when the cache makes its directory (or finds it empty); a directory without it that holds anything else is
  refused, so the cache never evicts from a directory it did not make.
- Files are opened only as regular files: never through a symlink, never blocking on a FIFO, never a directory or
  a device (``O_NOFOLLOW | O_NONBLOCK``, then ``fstat``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from pathlib import Path

from npyfeed.errors import ConfigError

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "MARKER",
    "TEMP_NAME",
    "check_private",
    "create_file",
    "ensure_marker",
    "make_dirs",
    "make_subdir",
    "open_or_create",
    "open_regular",
    "read_text",
    "temp_name",
    "write_file",
]

DIR_MODE = 0o700
FILE_MODE = 0o600
MARKER = "CACHEDIR.TAG"
_MARKER_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This directory is an npyfeed chunk cache (see https://bford.info/cachedir/).\n"
    "# npyfeed deletes only the files it made here; deleting the whole directory between jobs is safe.\n"
)
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.\d+\.[0-9a-f]{8}\.tmp$")
"""A temporary file the cache writes before giving it its name (:func:`temp_name`)."""
_SAFE = getattr(os, "O_CLOEXEC", 0) | os.O_NOFOLLOW | os.O_NONBLOCK
# Errors of opening something that is not a regular file: a symlink (ELOOP), a FIFO without a reader opened for
# writing (ENXIO), a directory opened for writing (EISDIR); or of a path that is gone.
_NOT_A_FILE = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO, errno.EISDIR}


def temp_name(name: str) -> str:
    """A fresh name for a temporary file in the same directory as ``name``, recognised by :data:`TEMP_NAME`."""
    return f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def open_regular(path: str | os.PathLike[str], flags: int = os.O_RDONLY) -> int | None:
    """A descriptor of the regular file ``path``; None if it is missing or anything else (a symlink, a FIFO, a
    directory, a device), which is never opened for reading or writing."""
    try:
        fd = os.open(path, flags | _SAFE)
    except OSError as e:
        if e.errno in _NOT_A_FILE:
            return None
        raise
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def create_file(path: str | os.PathLike[str], flags: int = os.O_RDWR) -> int:
    """A new file ``path`` (FileExistsError if anything is there), mode 0600 whatever the umask."""
    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | _SAFE, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # a umask can take bits away from the mode asked for
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_or_create(path: Path, flags: int = os.O_RDWR) -> int:
    """The regular file ``path``, created 0600 if missing; an OSError if something else is there."""
    for _ in range(3):
        try:
            return create_file(path, flags)
        except FileExistsError:
            fd = open_regular(path, flags)
            if fd is not None:
                return fd
            if os.path.lexists(path):
                break
    raise OSError(errno.EEXIST, "not a regular file where the cache keeps one", str(path))


def read_text(path: Path, limit: int = 4096) -> str | None:
    """The start of the regular file ``path`` as text; None if it is missing or not a regular file."""
    fd = open_regular(path)
    if fd is None:
        return None
    try:
        return os.read(fd, limit).decode(errors="replace")
    finally:
        os.close(fd)


def write_file(path: Path, text: str) -> None:
    """Replace ``path`` with a 0600 file holding ``text``, atomically (a temporary file renamed)."""
    tmp = path.with_name(temp_name(path.name))
    fd = create_file(tmp, os.O_WRONLY)
    try:
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each 0700 whatever the umask (existing ones are left alone)."""
    missing = []
    probe = path
    while not os.path.lexists(probe) and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile: checked by the caller
            directory.mkdir(DIR_MODE)
            directory.chmod(DIR_MODE)


def make_subdir(path: Path) -> None:
    """Create the directory ``path`` (its parent exists) 0700; NotADirectoryError if a symlink or a file is there."""
    try:
        path.mkdir(DIR_MODE)
        path.chmod(DIR_MODE)
    except FileExistsError:
        if not stat.S_ISDIR(path.lstat().st_mode):
            raise NotADirectoryError(
                errno.ENOTDIR, "not a directory where the cache keeps an object's chunks", str(path)
            ) from None


def check_private(path: Path) -> None:
    """Refuse a directory that another user owns or that group or others can write, or one whose parents would let
    another user replace it (a ConfigError naming the directory, the owner and mode found, and what is expected).

    A symlink to a private directory is accepted: the directory it leads to is checked, and its parents must be
    owned by this user or root and not writable by group or others, unless sticky (like ``/tmp``: there only an
    entry's owner can rename it), as ssh checks a key's directories.
    """
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
    me = os.geteuid()
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != me or mode & 0o022:
        raise ConfigError(
            f"storage_options['cache_dir'] = {str(path)!r}: refused as a cache directory: it is owned by "
            f"{_user(info.st_uid)} with mode {mode:04o}; expected a directory owned by this user ({_user(me)}) that "
            "group and others cannot write (e.g. mode 0700): anyone who can write there could plant chunks this "
            "user would read as data. Name a directory of your own (e.g. '~/.cache/npyfeed'), or a new path the "
            "cache creates 0700"
        )
    for parent in Path(os.path.realpath(path)).parents:
        info = parent.stat()
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid not in (me, 0) or (mode & 0o022 and not mode & stat.S_ISVTX):
            raise ConfigError(
                f"storage_options['cache_dir'] = {str(path)!r}: refused as a cache directory: its parent "
                f"{str(parent)!r} is owned by {_user(info.st_uid)} with mode {mode:04o}, so another user could "
                f"replace the cache directory with one of theirs; expected parents owned by this user ({_user(me)}) "
                "or root that group and others cannot write (or sticky, like /tmp)"
            )


def ensure_marker(path: Path) -> None:
    """Tag ``path`` as the cache's own (see the module docstring); a ConfigError if it holds anything else."""
    if read_text(path / MARKER) == _MARKER_TEXT:
        return
    others = sorted(
        entry.name
        for entry in path.iterdir()
        if not ((m := TEMP_NAME.match(entry.name)) and m.group("name") == MARKER)  # another process tagging it now
    )
    if others:
        shown = ", ".join(repr(n) for n in others[:3]) + (", ..." if len(others) > 3 else "")
        raise ConfigError(
            f"storage_options['cache_dir'] = {str(path)!r}: refused as a cache directory: it holds files the cache "
            f"did not make ({shown}) and no npyfeed {MARKER} marker; expected a new or empty directory, or one the "
            "cache made (a cache left by an older npyfeed has no marker: delete it)"
        )
    write_file(path / MARKER, _MARKER_TEXT)


def _user(uid: int) -> str:
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        return f"uid {uid}"
