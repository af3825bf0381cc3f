"""Aligned columns: one array, a tuple ``(x, y[, sample_weight])`` or a dict of named arrays with equal rows.

``open`` turns what a user types (a path, a glob, a list of shard paths, a tuple or dict of those) into sources;
``Columns`` keeps the user's structure so batches come back shaped like the input (what Keras expects).
"""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeAlias

import numpy as np

from npyfeed import arguments as args
from npyfeed.errors import ColumnMismatchError, ConfigError
from npyfeed.format import MAX_HEADER_SIZE, split_npz_spec
from npyfeed.sources.array import NpyArray
from npyfeed.sources.base import AccessPattern, RowSource, index_rows, row_nbytes
from npyfeed.sources.concat import ConcatArray, RowSlice
from npyfeed.storage import open_storage
from npyfeed.storage.urls import has_glob, is_url, local_path, parse_url, redact

__all__ = ["Columns", "Source", "open", "split"]

PathLike: TypeAlias = str | os.PathLike[str]
ArraySpec: TypeAlias = PathLike | Sequence[PathLike] | RowSource
Source: TypeAlias = "ArraySpec | tuple[ArraySpec, ...] | Mapping[str, ArraySpec] | Columns"
"""What ``open`` and ``Loader`` accept: a path or glob, a list of shard paths, an opened array, or a tuple or
dict of those (aligned columns)."""

StorageOptions: TypeAlias = Mapping[str, Any] | None
"""Object-store configuration (endpoint, credentials, request tuning): see docs/object-storage.md."""

_GLOB_CHARS = frozenset("*?[")


def opens_urls(source: Any) -> bool:
    """Whether opening ``source`` reads any object store (a URL other than ``file://`` in it, at any depth)."""
    if isinstance(source, Mapping):
        return any(opens_urls(v) for v in source.values())
    if isinstance(source, (tuple, list)):
        return any(opens_urls(v) for v in source)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return isinstance(path, str) and is_url(path) and not path.startswith("file://")
    return False


def check_storage_options(source: Any, storage_options: StorageOptions) -> StorageOptions:
    """``storage_options`` if they can apply to ``source``: a mapping, and a source that opens some URL.

    Given with local files or an already opened source they would be ignored, so they are refused. The message
    shows their keys only (values may be credentials).
    """
    if storage_options is None:
        return None
    if not isinstance(storage_options, Mapping):
        raise ConfigError(f"storage_options must be a dict or None, got {type(storage_options).__name__}")
    if storage_options and not opens_urls(source):
        local = isinstance(source, (str, os.PathLike, tuple, list, Mapping))
        what = "local files only" if local else "an already opened source"
        raise args.inapplicable(
            "storage_options",
            None,
            f"they configure object stores, and the source opens no URL ({what}); open URLs with them",
            shown=f"{{keys {sorted(map(str, storage_options))}}}",
        )
    return storage_options


def _open_array(spec: ArraySpec, max_header_size: int, storage_options: StorageOptions = None) -> RowSource:
    if isinstance(spec, RowSource) and not isinstance(spec, (str, bytes, list, tuple)):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        member = split_npz_spec(path)
        if member is not None and not os.path.exists(path):
            raise ConfigError(
                f"{redact(path)}: a member of an .npz archive cannot be read in place (members may be compressed and "
                f"their data is not aligned); convert it once: `npyfeed convert {redact(path)} {member[1]}.npy`, "
                f"then open {member[1]}.npy"
            )
        if is_url(path) and not path.startswith("file://"):
            if has_glob(parse_url(path).key):
                return _open_parts(_glob_urls(path, storage_options), max_header_size, storage_options)
            return _open_one(path, max_header_size, storage_options)
        if path.startswith("file://"):
            path = local_path(path)
        if not os.path.exists(path) and _GLOB_CHARS & set(path):
            matches = sorted(glob.glob(path))
            if not matches:
                raise FileNotFoundError(f"no file matches the pattern {path!r}")
            return _open_array(matches, max_header_size)
        return NpyArray(path, max_header_size=max_header_size)
    if isinstance(spec, list):
        return _open_parts([(p, None) for p in spec], max_header_size, storage_options)
    raise TypeError(
        f"cannot open {type(spec).__name__!s} as an array: expected a path or URL, a glob pattern, a list of "
        "shard paths, or an opened npyfeed array"
    )


def _open_one(name: PathLike, max_header_size: int, storage_options: StorageOptions, meta: Any = None) -> NpyArray:
    if isinstance(name, str) and is_url(name):
        return NpyArray(open_storage(name, storage_options=storage_options, meta=meta), max_header_size=max_header_size)
    return NpyArray(name, max_header_size=max_header_size)


def _open_parts(names: Sequence[tuple[PathLike, Any]], max_header_size: int, options: StorageOptions) -> RowSource:
    if len(names) > 1 and all(isinstance(n, str) and is_url(n) for n, _ in names):
        # Remote shards: open them concurrently (a header read each is one round trip).
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(16, len(names)), thread_name_prefix="npyfeed-open") as pool:
            parts = list(pool.map(lambda nm: _open_one(nm[0], max_header_size, options, nm[1]), names))
    else:
        parts = [_open_one(n, max_header_size, options, m) for n, m in names]
    return parts[0] if len(parts) == 1 else ConcatArray(parts)


def _glob_urls(pattern: str, storage_options: StorageOptions) -> list[tuple[PathLike, Any]]:
    from npyfeed.storage.object_store import glob_objects

    matches = glob_objects(pattern, storage_options)
    if not matches:
        shown = redact(pattern)
        raise FileNotFoundError(errno.ENOENT, f"{shown}: no object matches the pattern", shown)
    return list(matches)


def open(
    source: Source, *, max_header_size: int = MAX_HEADER_SIZE, storage_options: StorageOptions = None
) -> RowSource | Columns:
    """Open ``.npy`` data by rows without loading it.

    - a path: an :class:`NpyArray`; a glob (``"x_*.npy"``) or a list of paths: a :class:`ConcatArray` of shards;
    - a tuple or dict of those: :class:`Columns`, aligned arrays that must all have the same number of rows.

    Paths may be URLs, read in place without a download: ``s3://bucket/x.npy``, ``gs://...``, ``https://...``
    (a server that honours ``Range``), ``file://...``; globs work over bucket prefixes (``s3://b/train/x_*.npy``).
    ``storage_options`` configure the store (credentials, endpoint, ...; default: the standard environment such
    as ``AWS_ENDPOINT_URL``) and an optional local cache (``cache_dir``, ``cache_size``); see
    docs/object-storage.md.

    Indexing with an int, slice, int array or bool mask returns what ``np.load(path, mmap_mode="r")[key]``
    returns, as an in-memory array. Headers are validated at open (see :mod:`npyfeed.format`).
    """
    check_storage_options(source, storage_options)
    if isinstance(source, Columns):
        return source
    if isinstance(source, (tuple, Mapping)):
        return Columns(source, max_header_size=max_header_size, storage_options=storage_options)
    return _open_array(source, max_header_size, storage_options)


class Columns:
    """Named or positional arrays with the same number of rows, read together row by row.

    >>> import numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> np.save(os.path.join(d, "x.npy"), np.arange(6).reshape(3, 2)); np.save(os.path.join(d, "y.npy"), [7, 8, 9])
    >>> cols = Columns({"x": os.path.join(d, "x.npy"), "y": os.path.join(d, "y.npy")})
    >>> len(cols), cols[1]
    (3, {'x': array([2, 3]), 'y': np.int64(8)})
    """

    kind: Literal["array", "tuple", "dict"]
    keys: tuple[str | int, ...]

    def __init__(
        self,
        source: ArraySpec | tuple[ArraySpec, ...] | Mapping[str, ArraySpec],
        *,
        max_header_size: int = MAX_HEADER_SIZE,
        storage_options: StorageOptions = None,
    ) -> None:
        check_storage_options(source, storage_options)
        if isinstance(source, Mapping):
            if not source:
                raise ConfigError("a dict source needs at least one column")
            for key in source:
                if not isinstance(key, str):
                    raise ConfigError(f"dict source keys must be str, got {key!r}")
            self.kind, self.keys = "dict", tuple(source)
            specs: list[ArraySpec] = list(source.values())
        elif isinstance(source, tuple):
            if not source:
                raise ConfigError("a tuple source needs at least one column")
            self.kind, self.keys = "tuple", tuple(range(len(source)))
            specs = list(source)
        else:
            self.kind, self.keys = "array", (0,)
            specs = [source]
        self.arrays: tuple[RowSource, ...] = tuple(_open_array(s, max_header_size, storage_options) for s in specs)
        lengths = [len(a) for a in self.arrays]
        for name, array, n in zip(self.keys, self.arrays, lengths, strict=True):
            if n != lengths[0]:
                raise ColumnMismatchError(
                    f"columns must have the same number of rows: {self.arrays[0].paths[0]} "
                    f"(column {self.keys[0]!r}) has {lengths[0]} rows, {array.paths[0]} (column {name!r}) "
                    f"has {n}"
                )

    @classmethod
    def of(
        cls, source: Source, *, max_header_size: int = MAX_HEADER_SIZE, storage_options: StorageOptions = None
    ) -> Columns:
        """``source`` as Columns (returned unchanged if it already is)."""
        check_storage_options(source, storage_options)
        if isinstance(source, Columns):
            return source
        return cls(source, max_header_size=max_header_size, storage_options=storage_options)

    @classmethod
    def _from_arrays(cls, template: Columns, arrays: Sequence[RowSource]) -> Columns:
        new = cls.__new__(cls)
        new.kind, new.keys, new.arrays = template.kind, template.keys, tuple(arrays)
        return new

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {a!r}" for k, a in zip(self.keys, self.arrays, strict=True))
        return f"Columns({self.kind}, {len(self)} rows, {{{inner}}})"

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(p for a in self.arrays for p in a.paths)

    @property
    def row_bytes(self) -> int:
        """Bytes of one row across all columns."""
        return sum(row_nbytes(a) for a in self.arrays)

    def pack(self, values: Sequence[Any]) -> Any:
        """Put one value per column back into the user's structure (array, tuple or dict)."""
        if self.kind == "array":
            return values[0]
        if self.kind == "tuple":
            return tuple(values)
        return dict(zip(self.keys, values, strict=True))

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            if self.kind != "dict" or key not in self.keys:
                raise KeyError(f"no column named {key!r}; columns are {list(self.keys)}")
            return self.arrays[self.keys.index(key)]
        return self.pack([index_rows(a, key) for a in self.arrays])

    def read_rows(self, rows: np.ndarray) -> list[np.ndarray]:
        """New arrays, one per column, holding ``rows`` of every column."""
        outs = []
        for array in self.arrays:
            out = np.empty((rows.size, *array.shape[1:]), array.dtype)
            array.read_rows(rows, out)
            outs.append(out)
        return outs

    def will_need(self, ranges: Sequence[tuple[int, int]]) -> None:
        for array in self.arrays:
            array.will_need(ranges)

    def advise(self, pattern: AccessPattern) -> None:
        for array in self.arrays:
            array.advise(pattern)

    def slice(self, start: int, stop: int) -> Columns:
        """Rows ``[start, stop)`` of every column, without copying."""
        return Columns._from_arrays(self, [RowSlice(a, start, stop) for a in self.arrays])

    def split(self, first: float | int) -> tuple[Columns, Columns]:
        """Cut rows in two without copying: ``first`` is a fraction in (0, 1) or a row count.

        ``train, val = cols.split(0.9)`` gives the first 90% of rows and the rest. The cut is by position in the
        files, so the same rows land in each part every time. It is not a random draw (there is no ``shuffle=``):
        rows stored sorted by class or time need shuffling when the files are written.
        """
        n = len(self)
        if isinstance(first, (float, np.floating)):
            cut = round(n * args.number("split fraction", first, maximum=1.0, exclusive=True))
        else:
            try:
                cut = args.integer("split row count", first, maximum=n)
            except ConfigError as e:
                raise ConfigError(f"{e} (split takes a fraction in (0, 1) or a row count)") from None
        return self.slice(0, cut), self.slice(cut, n)


def split(source: Source, first: float | int, *, storage_options: StorageOptions = None) -> tuple[Columns, Columns]:
    """Split any source into two row ranges without copying (see :meth:`Columns.split`); ``storage_options`` as
    for :func:`open`."""
    return Columns.of(source, storage_options=storage_options).split(first)
