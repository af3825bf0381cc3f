"""The ``tf.numpy_function`` side of :func:`npyfeed.adapters.tf_data.to_tf_dataset`: what runs in Python per read.

:class:`Reader` reads one batch, or a chunk of batches stacked without a copy, from the Loader (through the exit
gate), checks what it got against the element spec, and names the batch, its epoch and the files on failure.
:class:`Call` is the small callable TensorFlow keeps: a weak reference to a reader, so a dropped pipeline releases
its Loader.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from npyfeed.adapters.frameworks import require_tensorflow as _tf
from npyfeed.adapters.tf_calls import GATE
from npyfeed.adapters.tf_spec import leaf_paths
from npyfeed.errors import ConfigError, NpyfeedError, WorkerError

if TYPE_CHECKING:
    from npyfeed.adapters.feed import Feed

__all__ = ["Call", "Reader", "compatible", "stacked"]


class Reader:
    """The ``numpy_function`` bodies: arrays in ``tf.nest.flatten(spec)`` order, checked against ``spec``.

    ``batch(epoch, index)`` returns one batch; ``chunk(epoch, chunk)`` returns batches ``starts[chunk]`` to
    ``starts[chunk + 1] - 1`` stacked on a new leading axis (``[k, batch, ...]``), read in one pass. Untransformed
    batches described by the headers (``trusted``) skip the checks: only a byte swap can be needed.
    """

    def __init__(
        self,
        loader: Feed,
        spec: Any,
        starts: np.ndarray,
        *,
        trusted: bool,
        resumed: tuple[int, int, np.ndarray],
        views: list[np.ndarray] | None = None,
    ) -> None:
        tf = _tf()
        self.loader = loader
        # to_tf_dataset(views=True): each column's zero-copy view of its file (source order), or None: copies.
        self.views = views
        self.spec = spec
        self.starts = starts
        self.resumed = resumed  # (epoch, offset, starts) of the pass that reads the rest of a resumed epoch
        self.trusted = trusted
        self.paths = leaf_paths(spec)
        self.specs = tf.nest.flatten(spec)
        self.dtypes = [None if s.dtype == tf.string else np.dtype(s.dtype.as_numpy_dtype) for s in self.specs]
        self.shapes = [tuple(s.shape.as_list()) for s in self.specs]
        source = loader.source
        self.flatten: Callable[[Any], list[Any]]
        # ``tf.nest.flatten`` order of an untransformed batch, without tf.nest's per-call cost.
        if source.kind == "dict":
            order = sorted(range(len(source.keys)), key=lambda j: source.keys[j])
            self.flatten = lambda batch: [batch[source.keys[j]] for j in order]
        elif source.kind == "tuple":
            self.flatten = list
        else:
            self.flatten = lambda batch: [batch]

    def _leaves(self, batch: Any, where: str) -> list[Any]:
        """The leaves of ``batch`` in ``tf.nest.flatten`` order, once its structure is checked against the spec."""
        if self.trusted:
            return self.flatten(batch)
        tf = _tf()
        try:
            tf.nest.assert_same_structure(self.spec, batch, check_types=False)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where} does not have the structure of the element spec: {err}") from err
        return tf.nest.flatten(batch)

    def _checked(self, leaves: list[Any], where: str, leading: tuple[int, ...]) -> list[np.ndarray]:
        """``leaves`` as native-endian arrays, each checked against its spec (its shape after ``leading``)."""
        out = []
        for path, s, dtype, shape, leaf in zip(self.paths, self.specs, self.dtypes, self.shapes, leaves, strict=True):
            array = np.asarray(leaf)
            if array.dtype.kind not in "SUO" and not array.dtype.isnative:
                array = array.astype(array.dtype.newbyteorder("="))  # one byte swap; TensorFlow is native-only
            if self.trusted:
                out.append(array)
                continue
            if dtype is not None and array.dtype != dtype:
                raise ConfigError(
                    f"{where}: field {path} has dtype {array.dtype}, but the element spec says {s.dtype.name}; "
                    "fix the transform or pass output_signature="
                )
            got = array.shape[len(leading) :]
            if array.shape[: len(leading)] != leading or not compatible(shape, got):
                raise ConfigError(
                    f"{where}: field {path} has shape {got}, but the element spec says {s.shape}; pass "
                    "output_signature= with None for the dimensions that vary"
                )
            out.append(array)
        return out

    def _pass(self, epoch: int) -> tuple[int, np.ndarray]:
        """``(offset, chunk starts)`` of the pass over ``epoch``: the rest of the resumed epoch, or all of one."""
        resumed_epoch, offset, starts = self.resumed
        return (offset, starts) if epoch == resumed_epoch and offset else (0, self.starts)

    def batch(self, epoch: np.int64, index: np.int64) -> list[np.ndarray]:
        """Batch ``index`` of ``epoch`` (through the exit gate, see :mod:`npyfeed.adapters.tf_calls`)."""
        e, i = int(epoch), int(index)
        return GATE.call(self._guarded, self._batch, e, i, i + 1)

    def chunk(self, epoch: np.int64, chunk: np.int64) -> list[np.ndarray]:
        """Batches ``starts[chunk]`` to ``starts[chunk + 1] - 1`` of ``epoch``, stacked: ``[k, batch, ...]``."""
        e, c = int(epoch), int(chunk)
        starts = self._pass(e)[1]
        return GATE.call(self._guarded, self._chunk, e, int(starts[c]), int(starts[c + 1]))

    def _guarded(self, read: Callable[[int, int, int], list[np.ndarray]], e: int, start: int, stop: int) -> Any:
        """``read(e, start, stop)``, with any failure re-raised naming the batch, the epoch and the files.

        Errors keep their type, with a note naming where (the Loader's, or one added here); tf.data turns them
        into its own by type (``ValueError`` -> ``InvalidArgumentError``, ``OSError`` and others ->
        ``UnknownError``), its message holding the original's type, message and notes. Where the type can be made
        from a message, the error tf.data sees is a new one of that type saying where, caused by the original, so
        the first line of tf.data's message names the batch, the epoch and the files. A ``StopIteration`` must
        not escape as such: tf.data would take it for the end of the epoch and silently drop the rest, so it
        becomes a :class:`WorkerError` caused by it.
        """
        try:
            return read(e, start, stop)
        except Exception as err:
            batches = f"batch {start}" if stop - start == 1 else f"batches {start}-{stop - 1}"
            paths = ", ".join(self.loader.source.paths[:3])
            if isinstance(err, StopIteration | StopAsyncIteration):
                raise WorkerError(
                    f"reading {batches} of epoch {e} ({paths}) failed: {type(err).__name__}: {err}"
                ) from err
            if getattr(err, "batch", None) is None and not isinstance(err, NpyfeedError):
                err.add_note(f"npyfeed: reading {batches} of epoch {e} ({paths}) failed")
            # tf.data keeps the type's name and the last line of the traceback as the first line of its error,
            # and prints the notes only deep in it: the same type again, saying where, when it can be made.
            where = [n for n in getattr(err, "__notes__", ()) if n.startswith("npyfeed: ")][-1:]
            try:
                shown = type(err)(f"{err} ({where[0][len('npyfeed: ') :]})") if where else None
            except Exception:
                shown = None
            if shown is None:
                raise
            raise shown from err

    def _batch(self, e: int, i: int, _stop: int) -> list[np.ndarray]:
        where = f"batch {i} of epoch {e}"
        viewed = self._viewed(e, i, i + 1)
        if viewed is not None:
            return self._checked([v[0] for v in viewed], where, ())
        batch = self.loader.read_batch(e, i, offset=self._pass(e)[0])
        return self._checked(self._leaves(batch, where), where, ())

    def _viewed(self, e: int, start: int, stop: int) -> list[np.ndarray] | None:
        """With views: batches ``start..stop-1`` as views of the files' mappings, ``[k, batch, ...]`` per leaf in
        ``tf.nest.flatten`` order, when their rows are one run of whole batches in file order; else None (copied)."""
        if self.views is None:
            return None
        offset = self._pass(e)[0]
        rows = [self.loader.batch_rows(e, j, offset=offset) for j in range(start, stop)]
        size = rows[0].size
        lo = int(rows[0][0]) if size else 0
        for k, r in enumerate(rows):
            if r.size != size or not size or int(r[0]) != lo + k * size or int(r[-1]) != lo + (k + 1) * size - 1:
                return None  # not one run (a shard's strided batches, a short last batch among full ones)
        hi = lo + size * len(rows)
        columns = [v[lo:hi].reshape(len(rows), size, *v.shape[1:]) for v in self.views]
        return self.flatten(self.loader.source.pack(columns))

    def _chunk(self, e: int, start: int, stop: int) -> list[np.ndarray]:
        where = f"batch {start} of epoch {e}" if stop - start == 1 else f"batches {start}-{stop - 1} of epoch {e}"
        viewed = self._viewed(e, start, stop)
        if viewed is not None:
            return self._checked(viewed, where, (stop - start,))
        batches = self.loader.read_batches(e, start, stop, offset=self._pass(e)[0])
        self._leaves(batches[0], where)  # untransformed batches all have the source's structure
        chunk = [stacked(list(views)) for views in zip(*map(self.flatten, batches), strict=True)]
        return self._checked(chunk, where, (stop - start,))


class Call:
    """The callable ``tf.numpy_function`` holds: a weak reference to a :class:`Reader` method.

    TensorFlow keeps every ``numpy_function`` callable alive for the rest of the process: it appends it to the
    outermost graph, in eager mode the default graph, which is never destroyed. A callable holding the reader
    kept every pipeline's Loader (its open files, mappings and buffers) forever: 200 pipelines built and dropped
    left 400 descriptors open. So TensorFlow keeps only this small object; the dataset holds the reader.
    """

    __slots__ = ("_method", "_reader")

    def __init__(self, reader: Reader, method: str) -> None:
        self._reader = weakref.ref(reader)
        self._method = method

    def __call__(self, epoch: np.int64, index: np.int64) -> list[np.ndarray]:
        reader = self._reader()
        if reader is None:
            raise ConfigError(
                "npyfeed: the Python dataset object of this to_tf_dataset() pipeline was released while its graph "
                "still runs; keep a reference to the dataset (or an iterator) while it is read, or use "
                "to_tf_dataset(native=True) for a graph that runs without its Python objects"
            )
        result: list[np.ndarray] = getattr(reader, self._method)(epoch, index)
        return result


def compatible(spec_shape: tuple[int | None, ...], shape: tuple[int, ...]) -> bool:
    return len(spec_shape) == len(shape) and all(s is None or s == d for s, d in zip(spec_shape, shape, strict=True))


def stacked(views: list[np.ndarray]) -> np.ndarray:
    """``views`` stacked on a new first axis: without a copy when they lie end to end in one buffer, as the batches
    of one ``Loader.read_batches`` call do (each a slice of one 64-byte-aligned array per column).

    The stacked array is a view of the memory's owner (what NumPy's ``base`` collapses to), so the Loader's buffer
    pool sees it referenced, and ``tf.numpy_function`` wraps it without a copy (it copies unaligned arrays).
    """
    first = views[0]
    owner = first.base
    if not (isinstance(owner, np.ndarray) and owner.flags.c_contiguous and first.flags.c_contiguous):
        return np.stack(views)
    start = first.__array_interface__["data"][0]
    offset = start - owner.__array_interface__["data"][0]
    size = first.nbytes
    if offset < 0 or offset + len(views) * size > owner.nbytes:
        return np.stack(views)
    for j, v in enumerate(views):
        if (
            v.base is not owner
            or v.shape != first.shape
            or v.dtype != first.dtype
            or not v.flags.c_contiguous
            or v.__array_interface__["data"][0] != start + j * size
        ):
            return np.stack(views)
    return np.ndarray((len(views), *first.shape), first.dtype, buffer=owner, offset=offset)
