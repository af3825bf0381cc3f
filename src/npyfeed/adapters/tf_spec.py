"""The ``element_spec`` of a Loader's ``tf.data`` pipelines: from the ``.npy`` headers, or from one transformed
batch read once; what TensorFlow dtype each NumPy dtype becomes (byte order made native), or why none does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from npyfeed.adapters.frameworks import require_tensorflow
from npyfeed.errors import ConfigError

if TYPE_CHECKING:
    from npyfeed.adapters.feed import Feed

__all__ = [
    "check_signature",
    "element_spec",
    "full_batches",
    "header_spec",
    "leaf_paths",
    "normalize",
    "probed_spec",
    "tf_dtype",
]


def tf_dtype(dtype: np.dtype[Any], where: str) -> Any:
    """The TensorFlow dtype for a NumPy dtype (byte order made native), or a ConfigError saying why not."""
    tf = require_tensorflow()
    if dtype.names is not None or dtype.subdtype is not None:
        raise ConfigError(
            f"{where}: structured dtype {dtype} has no TensorFlow equivalent; pass a transform that splits the "
            "fields into plain arrays (e.g. lambda b: (b['x'], b['y'])) or save one .npy per field"
        )
    if dtype.kind in "SU":
        return tf.string
    try:
        return tf.as_dtype(dtype.newbyteorder("="))
    except TypeError as e:
        raise ConfigError(
            f"{where}: dtype {dtype} has no TensorFlow equivalent (TensorFlow has bool, ints, uints, float16/32/64, "
            "bfloat16, complex64/128 and strings); pass a transform that converts it, e.g. .astype('int64')"
        ) from e


def normalize(structure: Any) -> Any:
    """Lists become tuples (what Keras and tf.data expect for ``(x, y)``); dicts keep their keys."""
    if isinstance(structure, Mapping):
        return {k: normalize(v) for k, v in structure.items()}
    if isinstance(structure, list):
        return tuple(normalize(v) for v in structure)
    if isinstance(structure, tuple) and not hasattr(structure, "_fields"):
        return tuple(normalize(v) for v in structure)
    return structure


def leaf_paths(structure: Any, prefix: str = "") -> list[str]:
    """Each leaf's path (``"x"``, ``"0"``, ``"inputs/image"``) in ``tf.nest.flatten`` order (dict keys sorted)."""
    if isinstance(structure, Mapping):
        return [p for k in sorted(structure) for p in leaf_paths(structure[k], f"{prefix}{k}/")]
    if isinstance(structure, (tuple, list)):
        return [p for i, v in enumerate(structure) for p in leaf_paths(v, f"{prefix}{i}/")]
    return [prefix.rstrip("/") or "(the batch)"]


def full_batches(loader: Feed, offset: int = 0) -> bool:
    """Whether every batch of every epoch, and of the rest of one from position ``offset``, has exactly
    ``batch_size`` rows (the batch dimension can be static)."""
    rows = {loader.layout().num_positions, loader.layout(offset).num_positions}
    return len(loader) > 0 and (loader.drop_remainder or all(r % loader.batch_size == 0 for r in rows))


def header_spec(loader: Feed, offset: int = 0) -> Any:
    """The element spec of untransformed batches, from the ``.npy`` headers alone (nothing is read)."""
    tf = require_tensorflow()
    batch_dim = loader.batch_size if full_batches(loader, offset) else None
    specs = []
    for key, array in zip(loader.source.keys, loader.source.arrays, strict=True):
        where = f"{', '.join(array.paths[:2])} (column {key!r})" if loader.source.kind != "array" else array.paths[0]
        specs.append(tf.TensorSpec((batch_dim, *array.shape[1:]), tf_dtype(array.dtype, where)))
    return loader.source.pack(specs)


def probed_spec(loader: Feed, epoch: int, offset: int = 0) -> Any:
    """The element spec of transformed batches, from batch 0 of ``epoch`` read and transformed once."""
    tf = require_tensorflow()
    if len(loader) == 0:
        raise ConfigError(
            f"cannot probe the transform's output: {loader!r} has no batch; pass output_signature= to to_tf_dataset()"
        )
    batch = normalize(loader.read_batch(epoch, 0))
    rows = min(loader.batch_size, loader.num_rows)
    batch_dim = loader.batch_size if full_batches(loader, offset) else None

    specs = []
    for path, leaf in zip(leaf_paths(batch), tf.nest.flatten(batch), strict=True):
        array = np.asarray(leaf)
        shape: tuple[int | None, ...] = array.shape
        if array.ndim and array.shape[0] == rows:
            shape = (batch_dim, *array.shape[1:])
        specs.append(tf.TensorSpec(shape, tf_dtype(array.dtype, f"transform output {path}")))
    return tf.nest.pack_sequence_as(batch, specs)


def element_spec(loader: Feed, *, epoch: int | None = None, offset: int = 0) -> Any:
    """The ``element_spec`` :func:`to_tf_dataset` gives ``loader`` (headers, or one probed batch with a transform)
    for epochs read whole and the rest of one from position ``offset``."""
    if loader.transform is None:
        return header_spec(loader, offset)
    return probed_spec(loader, loader.epoch if epoch is None else epoch, offset)


def check_signature(signature: Any) -> Any:
    tf = require_tensorflow()
    signature = normalize(signature)
    for leaf in tf.nest.flatten(signature):
        if not isinstance(leaf, tf.TensorSpec):
            raise ConfigError(f"output_signature must be a nest of tf.TensorSpec, found {leaf!r}")
    return signature
