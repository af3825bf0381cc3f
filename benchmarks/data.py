"""Benchmark files: ``.npy`` arrays whose rows carry their own index, so any loader's output can be checked.

The first 8 bytes of row ``i`` hold ``i`` as a little-endian int64 (whatever the dtype), and the optional label
file holds ``y[i] == i``. The rest of each row is seeded random data, so rows differ and a content check means
something. Files are written through a temporary name and reused when their header and last row match.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ROW_KINDS",
    "BenchFiles",
    "RowKind",
    "data_offset",
    "make_files",
    "open_memmap_fixed",
    "open_memmaps",
    "open_oracle",
    "row_ids",
]

ID_BYTES = 8
_CHUNK_BYTES = 64 << 20  # generate in 64 MiB pieces: bounded memory whatever the file size


@dataclass(frozen=True)
class RowKind:
    """What one row of a benchmark file looks like."""

    name: str
    row_shape: tuple[int, ...]
    dtype: str
    with_labels: bool
    description: str

    @property
    def row_bytes(self) -> int:
        """Bytes of one row of ``x`` in the file."""
        return math.prod(self.row_shape) * np.dtype(self.dtype).itemsize

    @property
    def sample_bytes(self) -> int:
        """Bytes a loader delivers per sample: the row plus its int64 label, if any."""
        return self.row_bytes + (8 if self.with_labels else 0)


ROW_KINDS: dict[str, RowKind] = {
    "12k": RowKind("12k", (64, 64, 3), "uint8", True, "12 KiB rows: 64x64x3 uint8 images + int64 labels"),
    "1k": RowKind("1k", (256,), "float32", False, "1 KiB rows: 256 float32"),
}


@dataclass(frozen=True)
class BenchFiles:
    """The files of one benchmark dataset (paths are strings so the object is JSON-friendly)."""

    kind: str
    x: str
    y: str | None
    num_rows: int
    x_offset: int
    y_offset: int | None

    @property
    def row_kind(self) -> RowKind:
        return ROW_KINDS[self.kind]

    @property
    def x_bytes(self) -> int:
        return self.num_rows * self.row_kind.row_bytes


def data_offset(path: str | os.PathLike[str]) -> int:
    """The real data offset of a ``.npy`` file (magic + version + length field + header), via NumPy's parser."""
    fmt = np.lib.format
    with Path(path).open("rb") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            fmt.read_array_header_1_0(f)
        else:
            fmt.read_array_header_2_0(f)
        return f.tell()


def _header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any]] | None:
    """``(shape, dtype)`` of an existing ``.npy`` file, or None if it is missing or unreadable."""
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    return arr.shape, arr.dtype


def _is_current(path: Path, shape: tuple[int, ...], dtype: np.dtype[Any]) -> bool:
    """True if ``path`` already holds a finished file of this shape whose last row has the right id."""
    if _header(path) != (shape, dtype):
        return False
    last = np.load(path, mmap_mode="r")[-1:]
    return int(row_ids(np.asarray(last))[0]) == shape[0] - 1


def _fill_chunk(out: np.ndarray, first_row: int, rng: np.random.Generator) -> None:
    """Random content in ``out`` (rows ``first_row...``), then each row's id in its first 8 bytes."""
    if out.dtype.kind == "f":
        out[...] = rng.standard_normal(out.shape, dtype=out.dtype)
    else:
        out.reshape(-1).view(np.uint8)[:] = np.frombuffer(rng.bytes(out.nbytes), np.uint8)
    ids = np.arange(first_row, first_row + len(out), dtype="<i8")
    out.reshape(len(out), -1).view(np.uint8)[:, :ID_BYTES] = ids.view(np.uint8).reshape(-1, ID_BYTES)


def _write_x(path: Path, kind: RowKind, num_rows: int, seed: int) -> None:
    """Write the row file chunk by chunk through a memmap, under a temporary name, then rename it."""
    tmp = path.with_suffix(".tmp.npy")
    x = np.lib.format.open_memmap(tmp, mode="w+", dtype=kind.dtype, shape=(num_rows, *kind.row_shape))
    rows_per_chunk = max(1, _CHUNK_BYTES // kind.row_bytes)
    for chunk, start in enumerate(range(0, num_rows, rows_per_chunk)):
        rng = np.random.default_rng([seed, chunk])
        _fill_chunk(x[start : start + rows_per_chunk], start, rng)
    x.flush()
    del x
    tmp.replace(path)


def make_files(root: Path, kind_name: str | RowKind, size_bytes: int, seed: int = 0, tag: str = "") -> BenchFiles:
    """Create (or reuse) the files of one dataset of about ``size_bytes`` of rows under ``root`` (``kind_name``: a
    key of :data:`ROW_KINDS`, or a benchmark's own kind)."""
    kind = ROW_KINDS[kind_name] if isinstance(kind_name, str) else kind_name
    num_rows = max(1, size_bytes // kind.row_bytes)
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{tag}{kind.name}_{num_rows}"
    x_path = root / f"x_{stem}.npy"
    if not _is_current(x_path, (num_rows, *kind.row_shape), np.dtype(kind.dtype)):
        _write_x(x_path, kind, num_rows, seed)
    y_path: Path | None = None
    if kind.with_labels:
        y_path = root / f"y_{stem}.npy"
        if _header(y_path) != ((num_rows,), np.dtype("<i8")):
            np.save(y_path, np.arange(num_rows, dtype="<i8"))
    return BenchFiles(
        kind=kind.name,
        x=str(x_path),
        y=None if y_path is None else str(y_path),
        num_rows=num_rows,
        x_offset=data_offset(x_path),
        y_offset=None if y_path is None else data_offset(y_path),
    )


def open_memmap_fixed(path: str, offset: int, num_rows: int, row_shape: tuple[int, ...], dtype: str) -> np.memmap:
    """The classic ``np.memmap`` recipe with its header bug fixed: ``offset`` is the real header length."""
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(num_rows, *row_shape))


def open_oracle(files: BenchFiles) -> tuple[np.ndarray, np.ndarray | None]:
    """The file's rows (and labels) as NumPy itself reads them: the reference every loader is checked against."""
    x = np.load(files.x, mmap_mode="r")
    y = None if files.y is None else np.load(files.y, mmap_mode="r")
    return x, y


def row_ids(x: np.ndarray) -> np.ndarray:
    """The id stored in the first 8 bytes of each row of a batch, as int64."""
    flat = np.ascontiguousarray(x).reshape(len(x), -1).view(np.uint8)
    return np.ascontiguousarray(flat[:, :ID_BYTES]).view("<i8").reshape(-1)


def open_memmaps(files: BenchFiles) -> tuple[np.memmap, np.memmap | None]:
    """Rows and labels as the baselines open them: ``np.memmap`` at the real data offsets."""
    kind = files.row_kind
    x = open_memmap_fixed(files.x, files.x_offset, files.num_rows, kind.row_shape, kind.dtype)
    if files.y is None or files.y_offset is None:
        return x, None
    return x, open_memmap_fixed(files.y, files.y_offset, files.num_rows, (), "<i8")
