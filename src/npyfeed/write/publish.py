"""Putting what :class:`~npyfeed.write.writer.NpyWriter` wrote in place with one rename: readers see all of it or none.

One file: the temporary beside the target (``.x.npy.<random>.partial``) is renamed onto it. Shards: the writer
fills a temporary directory beside the shards' directory (``.out.<random>.partial/``), and close renames that
directory into place, so a glob over it (``out/x_*.npy``) sees every shard or none, whenever the writer is killed.
Shards renamed one by one into an existing directory could not do that: a crash between two renames leaves a
shorter glob that every reader accepts. The shards' directory must therefore not exist yet, or be empty (an
empty directory is replaced by the rename, its permission bits kept).

Targets are checked when the writer is made, before any data is written: a directory where a file goes, a
target that is not a regular file, an existing target that is not writable, a shard directory that holds files.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from pathlib import Path

from npyfeed.errors import ConfigError

__all__ = ["Publish", "fsync_dir", "shard_paths", "with_path"]


def shard_paths(path: str | os.PathLike[str], count: int) -> list[str]:
    """``x_000.npy, x_001.npy, ...`` for target ``x.npy`` (wider numbers past 1000 shards, so names sort)."""
    p = Path(path)
    width = max(3, len(str(count - 1)))
    return [str(p.with_name(f"{p.stem}_{i:0{width}d}{p.suffix or '.npy'}")) for i in range(count)]


def with_path(error: OSError, path: str, what: str) -> OSError:
    """``error`` again, same type and errno, naming ``path`` and what was being done (chain it ``from error``)."""
    message = f"{error.strerror or error}: {what}"
    try:
        return type(error)(error.errno, message, path)
    except TypeError:  # a subclass with another constructor: the errno's own built-in type
        return OSError(error.errno, message, path)


def fsync_dir(path: Path) -> None:
    """Make renames in directory ``path`` durable: the directory entry is what a crash could lose."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Publish:
    """Where the temporaries of a writer for ``path`` go, and how they are put in place (see the module docstring)."""

    def __init__(self, path: str, *, sharded: bool) -> None:
        self.path = path
        self._temp_dir: Path | None = None
        if sharded:
            self.final = Path(path).absolute().parent
            mode = _check_shard_dir(self.final, path)
            self._temp_dir = _make_dir_beside(self.final, path, mode)
        else:
            self.final = _check_target_file(path)

    def temp_name(self, index: int) -> str:
        """The temporary file for part ``index``."""
        if self._temp_dir is not None:
            return str(self._temp_dir / f".{Path(self.path).name}.{index}.partial")
        return str(self.final.with_name(f".{self.final.name}.{secrets.token_hex(4)}.partial"))

    def publish(self, temps: list[str]) -> tuple[str, ...]:
        """Rename the finished temporaries into place; the names published, in order."""
        if self._temp_dir is None:
            (temp,) = temps
            Path(temp).replace(self.final)
            self._durable(self.final.absolute().parent)
            return (self.path,)
        names = [Path(p).name for p in shard_paths(self.path, len(temps))]
        for temp, name in zip(temps, names, strict=True):
            Path(temp).rename(self._temp_dir / name)  # inside the temporary directory: no reader looks there
        fsync_dir(self._temp_dir)
        try:
            self._temp_dir.rename(self.final)  # the one step readers see (it replaces an empty directory)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise with_path(e, str(self.final), "files appeared in the shards' directory while writing") from e
            raise
        self._temp_dir = None
        self._durable(self.final.parent)
        return tuple(shard_paths(self.path, len(temps)))

    def _durable(self, directory: Path) -> None:
        try:
            fsync_dir(directory)
        except OSError as e:
            raise with_path(e, self.path, "published, but syncing its directory failed: a crash may undo it") from e

    def discard(self) -> None:
        """Remove the temporary directory (shards only; the writer removes its own files). Idempotent."""
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


def _check_target_file(path: str) -> Path:
    """The file a single-file writer replaces (a symlink is followed, as ``np.save`` does); refused early."""
    final = Path(path).resolve() if Path(path).is_symlink() else Path(path)
    try:
        st = final.stat()
    except FileNotFoundError:
        return final
    except OSError as e:
        raise with_path(e, path, "checking the target") from e
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(
            errno.EISDIR, "the target is a directory; NpyWriter writes a file (name one in it)", path
        )
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: the target exists and is not a regular file; NpyWriter replaces only files")
    if not os.access(final, os.W_OK):
        raise PermissionError(
            errno.EACCES, "the target exists and is not writable; NpyWriter does not replace it", path
        )
    return final


def _check_shard_dir(directory: Path, path: str) -> int | None:
    """The permission bits of ``directory`` if it exists and is empty, ``None`` if it does not exist; else refused."""
    try:
        st = directory.stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise with_path(e, str(directory), f"checking the shards' directory of {path}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, f"the shards of {path} go in a directory; this is not one", directory)
    held = sorted(p.name for p in directory.iterdir())
    if held:
        raise ConfigError(
            f"{path}: shards are published as one new directory (one rename: a glob sees all of them or none), but "
            f"{directory} already holds {', '.join(held[:3])}{', ...' if len(held) > 3 else ''}; name a new or "
            f"empty directory, e.g. {directory / 'shards' / Path(path).name}"
        )
    if directory.samefile(Path.cwd()):
        raise ConfigError(
            f"{path}: shards are published by renaming a new directory onto {directory}, which is the current "
            "directory; name another (new or empty) directory"
        )
    return stat.S_IMODE(st.st_mode)


def _make_dir_beside(directory: Path, path: str, mode: int | None) -> Path:
    """A new temporary directory next to ``directory`` (same filesystem, so one rename publishes it)."""
    temp = directory.with_name(f".{directory.name}.{secrets.token_hex(4)}.partial")
    try:
        temp.mkdir(0o777)  # the umask applies, as to any new directory
        if mode is not None:
            temp.chmod(mode)  # replacing an empty directory: keep its permissions
    except OSError as e:
        raise with_path(e, path, f"creating the temporary directory {temp} for the shards") from e
    return temp
