"""``tf.data`` for a Loader: exact specs, known cardinality, parallel reads, checkpointable iterators.

The dataset is ``range(len(loader))`` mapped through a parallel, stateless ``tf.numpy_function`` that calls
``loader.read_batch(epoch, index)``, a pure function of its arguments. Nothing goes through ``from_generator``, so:

- ``cardinality()`` is ``len(loader)`` (Keras shows ``N/N`` and an ETA from the first epoch);
- reads run on tf.data's thread pool (``os.preadv`` releases the GIL), ordered, and are prefetched;
- ``element_spec`` comes from the ``.npy`` headers (the file's dtype in native byte order, its row shape, a static
  batch dimension when every batch is full), shaped like the source: one tensor, a tuple or a dict;
- an iterator saved with ``tf.train.Checkpoint(iterator=it)`` holds a few hundred bytes (its epoch and position,
  never batches: tf.data's symbolic checkpointing re-reads what was read ahead), and restoring it into an
  iterator of a freshly built dataset continues with exactly the batches that would have come next.

**Epochs.** Like ``iter(loader)``, every new iterator over the dataset is the next epoch: Keras ``fit`` makes one
iterator per epoch, so epochs 0, 1, 2, ... get exactly the orders ``loader.read_batch(e, i)`` gives. An iterator
takes its epoch number when its first batch is asked for (creating an iterator and dropping it unused, as Keras
does after the last epoch, consumes nothing), from a counter held by the dataset (a ``tf.Variable`` starting at
``start_epoch``, by default ``loader.epoch``). The counter is independent of ``loader.epoch``: iterating the
dataset does not move the Loader, and ``ds.repeat()`` runs consecutive epochs.

**Resuming.** A restored iterator continues its saved epoch, and once it yields a batch (or reports its end) the
dataset's counter moves past that epoch, so the next iterator starts the epoch after it, as in the run that saved
it. An iterator saved before its first batch has no epoch yet: restored, it starts the new dataset's next epoch.
To resume at an epoch boundary without an iterator, build the dataset with ``start_epoch=`` (or
``loader.set_state(...)`` first).

**Transforms.** With ``loader.transform`` set, the spec is probed by reading and transforming batch 0 of
``start_epoch`` once, when the dataset is built (one batch of I/O). A transform whose output shapes vary from
batch to batch (beyond the batch dimension), or a loader with no batch to probe, needs ``output_signature=``.
Every batch is checked against the spec and a mismatch names the batch, the field, and what was expected.

Options downstream: symbolic checkpointing is switched on for the pipeline; a later transformation that does not
support it (``.cache()``) makes saving fail with ``UNIMPLEMENTED``, in which case set
``tf.data.Options().experimental_symbolic_checkpoint = False`` (saving then stores buffered batches) and
``experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.WARN`` (the epoch counter is
external state).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from npyfeed.errors import ConfigError

if TYPE_CHECKING:
    import tensorflow as tf

    from npyfeed.loader import Loader

__all__ = ["element_spec", "to_tf_dataset"]


def _tf() -> Any:
    try:
        import tensorflow as tf
    except ImportError as e:  # pragma: no cover - exercised only without TensorFlow
        raise ImportError("npyfeed's tf.data adapter needs TensorFlow: pip install 'npyfeed[tf]'") from e
    return tf


def _tf_dtype(dtype: np.dtype[Any], where: str) -> Any:
    """The TensorFlow dtype for a NumPy dtype (byte order made native), or a ConfigError saying why not."""
    tf = _tf()
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


def _normalize(structure: Any) -> Any:
    """Lists become tuples (what Keras and tf.data expect for ``(x, y)``); dicts keep their keys."""
    if isinstance(structure, Mapping):
        return {k: _normalize(v) for k, v in structure.items()}
    if isinstance(structure, list):
        return tuple(_normalize(v) for v in structure)
    if isinstance(structure, tuple) and not hasattr(structure, "_fields"):
        return tuple(_normalize(v) for v in structure)
    return structure


def _leaf_paths(structure: Any, prefix: str = "") -> list[str]:
    """Each leaf's path (``"x"``, ``"0"``, ``"inputs/image"``) in ``tf.nest.flatten`` order (dict keys sorted)."""
    if isinstance(structure, Mapping):
        return [p for k in sorted(structure) for p in _leaf_paths(structure[k], f"{prefix}{k}/")]
    if isinstance(structure, (tuple, list)):
        return [p for i, v in enumerate(structure) for p in _leaf_paths(v, f"{prefix}{i}/")]
    return [prefix.rstrip("/") or "(the batch)"]


def _full_batches(loader: Loader) -> bool:
    """Whether every batch of every epoch has exactly ``batch_size`` rows (the batch dimension can be static)."""
    return len(loader) > 0 and (loader.drop_remainder or loader.num_rows % loader.batch_size == 0)


def _header_spec(loader: Loader) -> Any:
    """The element spec of untransformed batches, from the ``.npy`` headers alone (nothing is read)."""
    tf = _tf()
    batch_dim = loader.batch_size if _full_batches(loader) else None
    specs = []
    for key, array in zip(loader.source.keys, loader.source.arrays, strict=True):
        where = f"{', '.join(array.paths[:2])} (column {key!r})" if loader.source.kind != "array" else array.paths[0]
        specs.append(tf.TensorSpec((batch_dim, *array.shape[1:]), _tf_dtype(array.dtype, where)))
    return loader.source.pack(specs)


def _probed_spec(loader: Loader, epoch: int) -> Any:
    """The element spec of transformed batches, from batch 0 of ``epoch`` read and transformed once."""
    tf = _tf()
    if len(loader) == 0:
        raise ConfigError(
            f"cannot probe the transform's output: {loader!r} has no batch; pass output_signature= to to_tf_dataset()"
        )
    batch = _normalize(loader.read_batch(epoch, 0))
    rows = min(loader.batch_size, loader.num_rows)
    batch_dim = loader.batch_size if _full_batches(loader) else None

    specs = []
    for path, leaf in zip(_leaf_paths(batch), tf.nest.flatten(batch), strict=True):
        array = np.asarray(leaf)
        shape: tuple[int | None, ...] = array.shape
        if array.ndim and array.shape[0] == rows:
            shape = (batch_dim, *array.shape[1:])
        specs.append(tf.TensorSpec(shape, _tf_dtype(array.dtype, f"transform output {path}")))
    return tf.nest.pack_sequence_as(batch, specs)


def element_spec(loader: Loader, *, epoch: int | None = None) -> Any:
    """The ``element_spec`` :func:`to_tf_dataset` gives ``loader`` (headers, or one probed batch with a transform)."""
    if loader.transform is None:
        return _header_spec(loader)
    return _probed_spec(loader, loader.epoch if epoch is None else epoch)


def _check_signature(signature: Any) -> Any:
    tf = _tf()
    signature = _normalize(signature)
    for leaf in tf.nest.flatten(signature):
        if not isinstance(leaf, tf.TensorSpec):
            raise ConfigError(f"output_signature must be a nest of tf.TensorSpec, found {leaf!r}")
    return signature


def _batch_reader(loader: Loader, spec: Any) -> Any:
    """``read(epoch, index) -> list of arrays`` in ``tf.nest.flatten(spec)`` order, checked against ``spec``."""
    tf = _tf()
    flat_specs = tf.nest.flatten(spec)
    paths = _leaf_paths(spec)

    def read(epoch: np.int64, index: np.int64) -> list[np.ndarray]:
        e, i = int(epoch), int(index)
        batch = loader.read_batch(e, i)
        try:
            tf.nest.assert_same_structure(spec, batch, check_types=False)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"batch {i} of epoch {e} does not have the structure of the element spec: {err}") from err
        out = []
        for path, s, leaf in zip(paths, flat_specs, tf.nest.flatten(batch), strict=True):
            array = np.asarray(leaf)
            if array.dtype.kind not in "SUO" and not array.dtype.isnative:
                array = array.astype(array.dtype.newbyteorder("="))  # one byte swap; TensorFlow is native-only
            if s.dtype != tf.string and array.dtype != s.dtype.as_numpy_dtype:
                raise ConfigError(
                    f"batch {i} of epoch {e}: field {path} has dtype {array.dtype}, but the element "
                    f"spec says {s.dtype.name}; fix the transform or pass output_signature="
                )
            if not s.shape.is_compatible_with(array.shape):
                raise ConfigError(
                    f"batch {i} of epoch {e}: field {path} has shape {array.shape}, but the "
                    f"element spec says {s.shape}; pass output_signature= with None for the dimensions that vary"
                )
            out.append(array)
        return out

    return read


def to_tf_dataset(
    loader: Loader,
    *,
    output_signature: Any = None,
    start_epoch: int | None = None,
    num_parallel_calls: int | None = None,
    threads: int | None = None,
    prefetch: int | None = None,
) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of ``loader``'s batches: one epoch per iterator, ``len(loader)`` elements.

    Args:
        loader: the :class:`npyfeed.Loader` to read (its shuffle, seed, shard, transform, drop_remainder).
        output_signature: a nest of ``tf.TensorSpec`` for the batches, instead of deriving it (headers, or one
            probed batch when the loader has a transform).
        start_epoch: the epoch of the first iterator (default ``loader.epoch``); later iterators count up from it.
        num_parallel_calls: batches read at once (default ``tf.data.AUTOTUNE``).
        threads: a private tf.data thread pool of this size for the reads (default: tf.data's shared pool, one
            thread per core). Cold, random reads wait on storage, not CPU: 8 to 16 threads read faster there.
        prefetch: batches read ahead of the consumer (default ``tf.data.AUTOTUNE``).

    >>> ds = loader.to_tf_dataset()  # doctest: +SKIP
    >>> model.fit(ds, epochs=3)  # doctest: +SKIP
    """
    tf = _tf()
    start = loader.epoch if start_epoch is None else start_epoch
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise ConfigError(f"start_epoch must be a non-negative int, got {start_epoch!r}")
    start = int(start)
    for name, value in (("num_parallel_calls", num_parallel_calls), ("threads", threads), ("prefetch", prefetch)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a positive int or None, got {value!r}")
    spec = _check_signature(output_signature) if output_signature is not None else element_spec(loader, epoch=start)
    flat_specs = tf.nest.flatten(spec)
    read = _batch_reader(loader, spec)
    num_batches = len(loader)

    # The dataset's next epoch. An iterator claims it when its first batch is asked for, so an iterator that is
    # made and dropped unused (Keras makes one after the last epoch) consumes nothing.
    next_epoch = tf.Variable(start, dtype=tf.int64, trainable=False, name="npyfeed_next_epoch")

    @tf.autograph.experimental.do_not_convert
    def with_epoch(epoch: Any, index: Any) -> tuple[Any, tuple[Any, Any]]:
        # The scan state is the iterator's epoch (-1 until its first element). It is part of the iterator's
        # checkpoint, so a restored iterator keeps its epoch; if the restored dataset's counter is behind it, move
        # the counter past it so the next iterator is the one after. Arithmetic, not tf.cond: the branches cost
        # more than the two variable updates, which in a normal run add 0 except for an iterator's first element.
        first = epoch < 0
        claimed = next_epoch.assign_add(tf.cast(first, tf.int64), read_value=True)
        epoch = tf.where(first, claimed - 1, epoch)
        sync = next_epoch.assign_add(tf.maximum(epoch + 1 - claimed, 0), read_value=True)
        with tf.control_dependencies([sync]):
            return epoch, (tf.identity(epoch), index)

    @tf.autograph.experimental.do_not_convert
    def real(epoch: Any, index: Any) -> Any:
        return index < num_batches

    @tf.autograph.experimental.do_not_convert
    def read_batch(epoch: Any, index: Any) -> Any:
        flat = tf.numpy_function(read, [epoch, index], [s.dtype for s in flat_specs], stateful=False, name="npyfeed")
        for tensor, s in zip(flat, flat_specs, strict=True):
            tensor.set_shape(s.shape)
        return tf.nest.pack_sequence_as(spec, flat)

    # One extra index past the end: after a restore at the end of an epoch, pulling it (the iterator's
    # end-of-sequence, or repeat() moving on) runs with_epoch once more, which syncs the counter; filter drops it.
    dataset = (
        tf.data.Dataset.range(num_batches + 1)
        .scan(tf.constant(-1, tf.int64), with_epoch)
        .filter(real)
        .apply(tf.data.experimental.assert_cardinality(num_batches))
        .map(
            read_batch,
            num_parallel_calls=num_parallel_calls or tf.data.AUTOTUNE,
            deterministic=True,
            name="npyfeed_read",
        )
        .prefetch(prefetch or tf.data.AUTOTUNE)
    )
    options = tf.data.Options()
    # Checkpoints record positions, not buffered batches; reads are pure functions of (epoch, index), so what
    # was read ahead is simply read again after a restore.
    options.experimental_symbolic_checkpoint = True
    if threads is not None:
        options.threading.private_threadpool_size = threads
    return dataset.with_options(options)
