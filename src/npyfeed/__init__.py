"""npyfeed: feed NumPy ``.npy`` files far larger than RAM into model training.

>>> import npyfeed  # doctest: +SKIP
>>> source = {"image": "x.npy", "label": "y.npy"}  # doctest: +SKIP
>>> loader = npyfeed.Loader(source, batch_size=256, shuffle=True, seed=0)  # doctest: +SKIP
>>> model.fit(loader.to_tf_dataset(), epochs=3)  # doctest: +SKIP

``__all__`` is what a user calls. The documented modules resolve as attributes after ``import npyfeed`` alone,
imported on first use so that ``import npyfeed`` imports no framework: ``npyfeed.keras`` (Keras' checkpoint
callback), ``npyfeed.jax_arrays`` (global JAX arrays), ``npyfeed.convert``, ``npyfeed.storage`` (the ``Storage``
protocol and its backends). The module map is in docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import Any

from npyfeed.errors import (
    BatchOrderWarning,
    CacheWarning,
    ColumnMismatchError,
    ConfigError,
    FileChangedError,
    NpyfeedError,
    NpyfeedWarning,
    NpyFormatError,
    ObjectChangedError,
    RemoteShuffleWarning,
    UnversionedObjectWarning,
    WorkerError,
)
from npyfeed.format import read_header
from npyfeed.loader.loader import Loader
from npyfeed.shard import Shard
from npyfeed.sources.array import NpyArray
from npyfeed.sources.columns import Columns, open, split
from npyfeed.sources.mix import Mix, mix
from npyfeed.write.writer import NpyWriter

__version__ = "0.1.0"

__all__ = [
    "BatchOrderWarning",
    "CacheWarning",
    "ColumnMismatchError",
    "Columns",
    "ConfigError",
    "FileChangedError",
    "Loader",
    "Mix",
    "NpyArray",
    "NpyFormatError",
    "NpyWriter",
    "NpyfeedError",
    "NpyfeedWarning",
    "ObjectChangedError",
    "RemoteShuffleWarning",
    "Shard",
    "UnversionedObjectWarning",
    "WorkerError",
    "__version__",
    "mix",
    "open",
    "read_header",
    "split",
]

# Documented modules, imported when first used (each may import a framework or a cloud client).
_LAZY_MODULES = frozenset({"convert", "jax_arrays", "keras", "storage"})


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_MODULES)
