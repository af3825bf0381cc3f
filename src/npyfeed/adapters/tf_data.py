"""``tf.data`` for a Loader: exact specs, known cardinality, parallel reads, checkpointable iterators.

The dataset is a ``range`` mapped through a parallel, stateless ``tf.numpy_function`` that calls
``loader.read_batches(epoch, start, stop)``, a pure function of its arguments. Nothing goes through
``from_generator``, so:

- ``cardinality()`` is ``len(loader)`` (Keras shows ``N/N`` and an ETA from the first epoch);
- reads run on tf.data's thread pool (NumPy's gathers from the file's mapping release the GIL), ordered, and are
  prefetched. Without a transform, one call reads a chunk of about 4 MiB of batches (``_batches_per_call``)
  in one pass and ``unbatch()`` splits it: a ``numpy_function`` call costs about 100 us, as much as reading a
  256 KiB batch;
- one copy per byte for a single batch per read (the gather from the file), two for chunks (``unbatch()`` copies
  each batch out): the Loader reads into 64-byte-aligned buffers, which ``numpy_function`` wraps without a copy
  (it copies unaligned arrays), and a chunk is handed over as a view of its buffer. A batch that aliases a buffer
  keeps it out of the Loader's buffer pool while anything references it, so held batches never change. Batches
  are never views of the file's mapping: a file truncated or rewritten under a job would change (or fault)
  bytes already handed out (unless ``views=True`` says the files never change);
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
Batches of a transform, or read under a user's ``output_signature``, are checked against the spec, and a
mismatch names the batch, the field, and what was expected.

**Lifetime.** The dataset (and every dataset or iterator built from it) keeps the Loader alive; once they are all
dropped, the Loader's files and buffers are released (TensorFlow itself keeps only a small weak reference, see
:class:`npyfeed.adapters.tf_reads.Call`).

**Errors and exit.** A failed read or transform reaches the consumer after every good batch before it, as a
``tf.errors.OpError`` naming the batch, its epoch, the files and the original error. Every read passes through
:data:`npyfeed.adapters.tf_calls.GATE`, drained at interpreter exit, so a script that ends (or is interrupted)
with a live iterator exits instead of hanging in tf.data's teardown.

Options downstream: symbolic checkpointing is switched on for the pipeline; a later transformation that does not
support it (``.cache()``) makes saving fail with ``UNIMPLEMENTED``, in which case set
``tf.data.Options().experimental_symbolic_checkpoint = False`` (saving then stores buffered batches) and
``experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.WARN`` (the epoch counter is
external state).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from npyfeed import arguments as args
from npyfeed.adapters.frameworks import require_tensorflow as _tf
from npyfeed.adapters.tf_calls import GATE
from npyfeed.adapters.tf_reads import Call, Reader
from npyfeed.adapters.tf_spec import check_signature, element_spec, header_spec
from npyfeed.adapters.tf_wait import TfWait, with_wait
from npyfeed.errors import ConfigError
from npyfeed.sources.array import NpyArray
from npyfeed.system import cpu_count

if TYPE_CHECKING:
    import tensorflow as tf

    from npyfeed.adapters.feed import Feed

__all__ = ["element_spec", "to_tf_dataset"]

_CHECKPOINT = "tf.train.Checkpoint(iterator=iterator) with the iterator over the dataset"


def _fit_split(
    spec: Any, targets: str | Sequence[str] | None, sample_weights: str | None
) -> Callable[[dict[str, Any]], tuple[Any, ...]] | None:
    """The map from a dict batch to Keras' ``(inputs, targets[, sample_weights])``, or None without ``targets``."""
    if targets is None:
        if sample_weights is not None:
            raise ConfigError(f"sample_weights={sample_weights!r} needs targets= (the key of the targets)")
        return None
    if not isinstance(spec, dict):
        raise ConfigError(
            f"targets={targets!r} picks keys of dict batches, but the batches are {type(spec).__name__}s; "
            "use a dict source ({'image': ..., 'label': ...}) or a transform that returns a dict"
        )
    names = [targets] if isinstance(targets, str) else list(targets)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"targets must be a key or a list of distinct keys, got {targets!r}")
    if sample_weights is not None and not isinstance(sample_weights, str):
        raise ConfigError(f"sample_weights must be a key, got {sample_weights!r}")
    picked = [*names, *([sample_weights] if sample_weights is not None else [])]
    for name in picked:
        if name not in spec:
            raise ConfigError(f"no key {name!r} in the batches: they have {sorted(spec)}")
    if sample_weights in names:
        raise ConfigError(f"sample_weights={sample_weights!r} is also a target")
    inputs = [k for k in spec if k not in picked]
    if not inputs:
        raise ConfigError(f"targets and sample_weights take every key of the batches ({sorted(spec)}): no inputs left")
    single = isinstance(targets, str)

    @_tf().autograph.experimental.do_not_convert
    def split(batch: dict[str, Any]) -> tuple[Any, ...]:
        out = batch[names[0]] if single else {n: batch[n] for n in names}
        pair = ({k: batch[k] for k in inputs}, out)
        return pair if sample_weights is None else (*pair, batch[sample_weights])

    return split


# Each tf.data element costs CPU before any read (the epoch bookkeeping, the map, the numpy_function call), more
# than gathering a small batch (benchmarks/RESULTS.md, issue 21). Calls therefore read several batches, up to this
# much output, whatever the Loader's read plan says for its own reads.
_CALL_BYTES = 4 << 20
_CALL_BATCHES = 16


def _batches_per_call(loader: Feed) -> int:
    """Batches one ``numpy_function`` call reads: ``loader.batches_per_read``, or for a global shuffle more.

    A global shuffle's read plan counts every page a random row may touch (a 1 KiB row: 5 KiB), so its reads of
    small rows are single batches. The Loader reads a chunk window by window, so the page cache in flight stays
    bounded by its plan whatever the chunk's size; a call then reads batches up to ``_CALL_BYTES`` of output
    (``_CALL_BATCHES`` at most): fewer elements through tf.data's per-call ops, ``unbatch()`` splitting them.
    """
    per_read = loader.batches_per_read
    if loader.shuffle != "global" or per_read > 1:
        return per_read
    batch_bytes = max(1, loader.batch_size * loader.source.row_bytes)
    return max(1, min(_CALL_BATCHES, _CALL_BYTES // batch_bytes))


def _chunk_starts(loader: Feed, offset: int = 0) -> np.ndarray:
    """First batch of each chunk read in one call, and the pass's batch count after the last (a pass over an
    epoch from position ``offset``: all of it, or the rest of a resumed one).

    Chunks hold :func:`_batches_per_call` full batches, except the first, a single batch (see ``to_tf_dataset``),
    and a last, partial batch, alone in its own chunk (a chunk is ``[k, batch_size, ...]``).
    """
    layout = loader.layout(offset)
    num_batches = len(layout)
    every_full = num_batches > 0 and (loader.drop_remainder or layout.num_positions % loader.batch_size == 0)
    full = num_batches if every_full else max(0, num_batches - 1)
    starts = [0] if full else []
    starts += range(1, full, _batches_per_call(loader))
    if full < num_batches:
        starts.append(full)
    return np.array([*starts, num_batches], dtype=np.int64)


def to_tf_dataset(
    loader: Feed,
    *,
    output_signature: Any = None,
    start_epoch: int | None = None,
    num_parallel_calls: int | None = None,
    threads: int | None = None,
    prefetch: int | None = None,
    native: bool = False,
    epochs: int | None = 1,
    targets: str | Sequence[str] | None = None,
    sample_weights: str | None = None,
    data_wait: bool = False,
    views: bool = False,
) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of ``loader``'s batches: one epoch per iterator, ``len(loader)`` elements.

    Args:
        loader: the :class:`npyfeed.Loader` to read (its shuffle, seed, shard, transform, drop_remainder).
        output_signature: a nest of ``tf.TensorSpec`` for the batches, instead of deriving it (headers, or one
            probed batch when the loader has a transform).
        start_epoch: the epoch of the first iterator (default ``loader.epoch``); later iterators count up from it.
        num_parallel_calls: reads at once, each of one batch, or of one chunk of batches when the loader has no
            transform (default ``tf.data.AUTOTUNE``; for chunks on a machine of 2 cores or fewer without
            ``threads``, 1, leaving a core to the training step).
        threads: a private tf.data thread pool of this size for the reads (default: tf.data's shared pool, one
            thread per core). Cold, random reads wait on storage, not CPU: 8 to 16 threads read faster there.
        prefetch: batches read ahead of the consumer (default ``tf.data.AUTOTUNE``).
        native: build the pipeline from TensorFlow ops only, with no Python in the graph (tf.data service, TPU
            hosts); byte-identical batches, for sequential and block orders. See :mod:`npyfeed.adapters.tf_native`.
        epochs: with ``native=True``, the consecutive epochs from ``start_epoch`` the dataset holds (``None``:
            endless); a native dataset has no epoch counter, so every iterator starts at ``start_epoch``.
        targets: for batches that are dicts (a dict source, or a transform returning dicts), the key of the
            targets, or a list of keys (targets as a dict, for a model with named outputs): each element becomes
            ``(inputs, targets)``, inputs being the dict of the other keys, as Keras ``fit`` wants them.
        sample_weights: with ``targets``, the key of per-row sample weights: elements become
            ``(inputs, targets, sample_weights)``.
        data_wait: count how long the consumer waits for each element in ``loader.metrics``, inside the graph
            (:mod:`npyfeed.adapters.tf_wait`: two small maps run inline in the consumer's ``GetNext``). Off by
            default: it still costs some CPU per element (benchmarks/RESULTS.md).
            Not for a graph that leaves the process (the tf.data service): the counters are this process's.
        views: hand TensorFlow zero-copy views of the files' mappings instead of copies, for a sequential loader
            (``shuffle=False``) over local ``.npy`` files without a transform: no copy per byte for large batches
            (one element per batch), one instead of two for chunks of small ones. **Only for files that never
            change while the dataset or any batch lives**: what it gives up is the guarantee that batches handed
            out never change. A file rewritten in place changes batches already delivered, one truncated makes
            reading them kill the process (``SIGBUS``), and the version check of each read does not cover bytes
            read through a view. Batches whose rows are not one run of the file (a shard's) are copied as usual.

    >>> ds = loader.to_tf_dataset()  # doctest: +SKIP
    >>> model.fit(ds, epochs=3)  # doctest: +SKIP
    """
    tf = _tf()
    GATE.install()
    pending_epoch, pending_offset = loader.next_pass
    start = args.integer("start_epoch", pending_epoch if start_epoch is None else start_epoch)
    offset = pending_offset if start == pending_epoch else 0  # the first epoch is the rest of a resumed one
    num_parallel_calls = args.optional_positive_int("num_parallel_calls", num_parallel_calls)
    threads = args.optional_positive_int("threads", threads)
    prefetch = args.optional_positive_int("prefetch", prefetch)
    epochs = args.optional_positive_int("epochs", epochs)
    native = args.flag("native", native)
    data_wait = args.flag("data_wait", data_wait)
    views = args.flag("views", views)
    if native:
        if views:
            raise args.inapplicable("views", views, "native=True reads with TensorFlow's file ops, not the mapping")
        if output_signature is not None:
            raise ConfigError("native=True derives the element spec from the .npy headers; drop output_signature=")
        for name, value in (("threads", threads), ("prefetch", prefetch)):
            if value is not None:
                raise args.inapplicable(name, value, "it tunes the numpy_function pipeline; native=True has none")
        from npyfeed.adapters.tf_native import native_dataset

        spec = header_spec(loader)
        split = _fit_split(spec, targets, sample_weights)
        native_ds = native_dataset(
            loader,
            start_epoch=start,
            offset=offset,
            epochs=epochs,
            num_parallel_calls=num_parallel_calls,
            spec=spec,
        )
        loader.track_elsewhere(_CHECKPOINT)
        native_ds = native_ds if split is None else native_ds.map(split, name="npyfeed_targets")
        return _counted(native_ds, loader) if data_wait else native_ds
    if epochs != 1:
        raise args.inapplicable("epochs", epochs, "it applies to native=True; repeat the dataset with .repeat()")
    if output_signature is not None:
        spec = check_signature(output_signature)
    else:
        spec = element_spec(loader, epoch=start, offset=offset)
    split = _fit_split(spec, targets, sample_weights)
    flat_specs = tf.nest.flatten(spec)
    num_batches = len(loader)
    # Untransformed batches are read several at a time (about 4 MiB, see _batches_per_call): one
    # numpy_function call and one gather per chunk instead of per batch, split into batches by unbatch().
    chunked = loader.transform is None and _batches_per_call(loader) > 1

    def chunk_starts(offset: int) -> np.ndarray:
        return _chunk_starts(loader, offset) if chunked else np.arange(loader.num_batches(offset) + 1, dtype=np.int64)

    starts, resumed_starts = chunk_starts(0), chunk_starts(offset)
    num_reads, resumed_reads = len(starts) - 1, len(resumed_starts) - 1
    trusted = output_signature is None and loader.transform is None
    reader = Reader(
        loader, spec, starts, trusted=trusted, resumed=(start, offset, resumed_starts),
        views=_file_views(loader) if views else None,
    )  # fmt: skip

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
        if not offset:
            return index < num_reads
        return index < tf.where(tf.equal(epoch, start), tf.constant(resumed_reads, tf.int64), num_reads)

    function, leading = (Call(reader, "chunk"), [None]) if chunked else (Call(reader, "batch"), [])

    @tf.autograph.experimental.do_not_convert
    def read(epoch: Any, index: Any) -> Any:
        dtypes = [s.dtype for s in flat_specs]
        flat = tf.numpy_function(function, [epoch, index], dtypes, stateful=False, name="npyfeed")
        for tensor, s in zip(flat, flat_specs, strict=True):
            tensor.set_shape(leading + s.shape.as_list() if s.shape.rank is not None else None)
        batch = tf.nest.pack_sequence_as(spec, flat)
        # Keras' (inputs, targets[, weights]) is made here, once per read, not by a map over every batch:
        # unbatch() splits any structure.
        return batch if split is None else split(batch)

    # Reads at once. Chunks on 2 cores or fewer: one, since a call reads many batches with its own I/O concurrency
    # (kernel read-ahead hints, concurrent ranged requests) and a training step needs the other core (two chunk
    # reads at once cost Keras more CPU per batch than they saved, benchmarks/RESULTS.md, issue 21). Otherwise, or
    # with a private pool (threads=), tf.data's autotuning.
    one = chunked and threads is None and cpu_count() <= 2
    parallel = num_parallel_calls or (1 if one else tf.data.AUTOTUNE)

    # One extra index past the end: after a restore at the end of an epoch, pulling it (the iterator's
    # end-of-sequence, or repeat() moving on) runs with_epoch once more, which syncs the counter; filter drops it.
    dataset = (
        tf.data.Dataset.range(num_reads + 1)
        .scan(tf.constant(-1, tf.int64), with_epoch)
        .filter(real)
        .map(read, num_parallel_calls=parallel, deterministic=True, name="npyfeed_read")
    )
    if chunked:
        # unbatch() copies each batch out of its chunk (into memory TensorFlow owns, so the chunk's buffer goes
        # back to the Loader's pool). With symbolic checkpointing it saves its position in the chunk and, restored,
        # reads the chunk again; but the upstream state it saves is the one from before that chunk. The first
        # chunk is therefore a single batch: by the time a second batch is delivered, the saved state holds the
        # iterator's epoch.
        dataset = dataset.unbatch()
    if not offset:  # every iterator is a whole epoch (a resumed epoch's rest is shorter: cardinality unknown)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_batches))
    dataset = dataset.prefetch(prefetch or tf.data.AUTOTUNE)
    options = tf.data.Options()
    # Checkpoints record positions, not buffered batches; reads are pure functions of (epoch, index), so what
    # was read ahead is simply read again after a restore.
    options.experimental_symbolic_checkpoint = True
    # The Loader shards itself (shard=InputContext or "auto"): tf.data's AutoShard would fall back to DATA
    # sharding here (every worker reading everything and dropping most of it), so it is switched off.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    if threads is not None:
        options.threading.private_threadpool_size = threads
    loader.track_elsewhere(_CHECKPOINT)
    dataset = dataset.with_options(options)
    if data_wait:
        dataset = _counted(dataset, loader)
    # The reader (and through it the Loader, its files and buffers) lives as long as this dataset object, or any
    # dataset or iterator built from it (they hold their inputs): see Call.
    dataset._npyfeed_reader = reader
    return dataset


def _file_views(loader: Feed) -> list[np.ndarray]:
    """Each column's read-only, zero-copy view of its file, for ``to_tf_dataset(views=True)`` (refused where
    batches could not be views of the files: a shuffle, a transform, remote or several files, Fortran order)."""
    if loader.shuffle != "none":
        raise ConfigError(
            f"views=True needs file order (shuffle=False), got shuffle={loader.shuffle!r}: shuffled rows are gathered"
        )
    if loader.transform is not None:
        raise ConfigError("views=True hands over the files' bytes; a transform's output is not a view of them")
    views = []
    for array in loader.source.arrays:
        if not isinstance(array, NpyArray):
            raise ConfigError(
                f"views=True needs each column to be one .npy file, got {type(array).__name__} "
                f"of {', '.join(array.paths[:3])}"
            )
        if array.fortran_order:
            raise ConfigError(f"views=True needs C-order files: {array.path} is in Fortran order")
        try:
            views.append(array.view())
        except TypeError as err:
            raise ConfigError(f"views=True needs local files: {err}") from err
    return views


def _counted(dataset: tf.data.Dataset, loader: Feed) -> tf.data.Dataset:
    """``dataset`` with its consumer's wait counted in ``loader.metrics`` (a stage of its own: tf_wait.py)."""
    wait = TfWait(loader.metrics.bucket_edges, loader.source.row_bytes)
    loader.metrics.pull(wait)
    counted = with_wait(dataset, wait)
    wait.watch(counted)  # loader.metrics keeps the counters until the dataset is gone and they are read
    return counted
