"""npyfeed: feed NumPy ``.npy`` files far larger than RAM into model training.

>>> import npyfeed  # doctest: +SKIP
>>> source = {"image": "x.npy", "label": "y.npy"}  # doctest: +SKIP
>>> loader = npyfeed.Loader(source, batch_size=256, shuffle=True, seed=0)  # doctest: +SKIP
>>> model.fit(loader.to_tf_dataset(), epochs=3)  # doctest: +SKIP
"""

from npyfeed.errors import (
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
from npyfeed.format import NpyHeader, read_header
from npyfeed.loader.loader import Loader
from npyfeed.order.orders import BlockShuffle, GlobalShuffle, Order, Sequential
from npyfeed.shard import Shard
from npyfeed.sources import ConcatArray, NpyArray, RowSlice, RowSource
from npyfeed.sources.columns import Columns, open, split
from npyfeed.sources.mix import Mix, mix
from npyfeed.write.writer import NpyWriter

__version__ = "0.1.0"

__all__ = [
    "BlockShuffle",
    "ColumnMismatchError",
    "Columns",
    "ConcatArray",
    "ConfigError",
    "FileChangedError",
    "GlobalShuffle",
    "Loader",
    "Mix",
    "NpyArray",
    "NpyFormatError",
    "NpyHeader",
    "NpyWriter",
    "NpyfeedError",
    "NpyfeedWarning",
    "ObjectChangedError",
    "Order",
    "RemoteShuffleWarning",
    "RowSlice",
    "RowSource",
    "Sequential",
    "Shard",
    "UnversionedObjectWarning",
    "WorkerError",
    "__version__",
    "mix",
    "open",
    "read_header",
    "split",
]
