"""npyfeed's exceptions, rooted in built-ins so ``except ValueError`` keeps working.

::

    NpyfeedError(Exception)              anything npyfeed refuses or fails at
    ├── NpyFormatError(ValueError)       a file is not a valid, safe, fixed-size .npy array
    ├── ColumnMismatchError(ValueError)  aligned inputs disagree (row counts, row shapes of shards)
    ├── ConfigError(ValueError)          an argument out of range (batch size, shard, split, state)
    ├── FileChangedError(OSError)        a file was truncated, replaced or deleted while it was being read
    │   └── ObjectChangedError(NpyFormatError)  the same for a remote object (its size, ETag or date changed)
    └── WorkerError(RuntimeError)        a read or transform raised StopIteration (which would end an epoch)

    NpyfeedWarning(Warning)              something works, but not as well as it could: EVERY warning npyfeed gives
    ├── BatchOrderWarning(UserWarning)   batches asked for out of order (Keras ``fit(shuffle=True)``): read-ahead lost
    ├── CacheWarning(RuntimeWarning)     the local chunk cache is bypassed for some rows, or thrashes
    ├── RemoteShuffleWarning(UserWarning)  a global shuffle over an object store: the request rate it implies
    └── UnversionedObjectWarning(UserWarning)  a server gives no ETag or Last-Modified: changes go unnoticed

Every message names the file (when there is one), the field, the value found and what was expected; URLs show
without their credentials. A batch that fails during an epoch raises the original error, its type kept (an
``OSError``, ``TimeoutError``, ``PermissionError``, ``ZeroDivisionError`` from a transform...), with a note (PEP 678)
naming the batch, its epoch and the files, and ``epoch`` and ``batch`` attributes. Warnings are silenced with the
standard filters: ``warnings.filterwarnings("ignore", category=NpyfeedWarning)`` for all of them, or one category.
Each also derives from the built-in category it would otherwise be (``UserWarning`` or ``RuntimeWarning``), so
filters by built-in category keep working.

Not exported here: ``InterpreterExiting(NpyfeedError, RuntimeError)`` of the tf adapter, raised only inside
``tf.numpy_function`` calls that arrive after the interpreter began to exit. TensorFlow turns any exception there
into its own error type and nothing consumes those batches, so no user can catch it: it stays with the adapter.
"""

from __future__ import annotations

__all__ = [
    "BatchOrderWarning",
    "CacheWarning",
    "ColumnMismatchError",
    "ConfigError",
    "FileChangedError",
    "NpyFormatError",
    "NpyfeedError",
    "NpyfeedWarning",
    "ObjectChangedError",
    "RemoteShuffleWarning",
    "UnversionedObjectWarning",
    "WorkerError",
]


class NpyfeedError(Exception):
    """Base class of every error npyfeed raises on purpose."""


class NpyFormatError(NpyfeedError, ValueError):
    """A file is not a valid ``.npy`` array npyfeed can read safely (bad header, pickles, truncated data)."""


class ColumnMismatchError(NpyfeedError, ValueError):
    """Arrays meant to be read together disagree: different row counts, or shards of different row shapes."""


class ConfigError(NpyfeedError, ValueError):
    """An argument is out of range or inconsistent (batch size, shard index, split, saved state)."""


class FileChangedError(NpyfeedError, OSError):
    """A file is no longer the version that was opened: truncated, rewritten, replaced or deleted under a reader.

    Raised instead of returning bytes of another version (or dying of ``SIGBUS`` on a truncated mapping).
    """


class ObjectChangedError(FileChangedError, NpyFormatError):
    """A remote object is no longer the version opened: a GET was refused by its precondition (412), or answered
    with another ETag, Last-Modified or total size, or the object got shorter (416). Both an ``OSError`` and an
    :class:`NpyFormatError` (``ValueError``).
    """


class WorkerError(NpyfeedError, RuntimeError):
    """A read or transform raised ``StopIteration``: raised as it is, every iterator (and tf.data) would take it for
    the end of the epoch and drop the rest silently. The original is ``__cause__``. Every other failure of a batch
    keeps its own type."""


class NpyfeedWarning(Warning):
    """Base class of npyfeed's warnings: the work goes on, but a setting costs more than it should."""


class BatchOrderWarning(NpyfeedWarning, UserWarning):
    """Batches were asked for out of order (Keras' ``model.fit(shuffle=True)``, its default): the loader's batch
    order and read-ahead are lost. Given once per dataset; pass ``shuffle=False``, the loader already shuffles."""


class CacheWarning(NpyfeedWarning, RuntimeWarning):
    """The local chunk cache (``storage_options["cache_dir"]``) reads some rows from the store instead: a chunk
    cannot be written there (disk full, something not the cache's in the way, its space lock held by a process that
    does not let go), or it thrashes (a global shuffle of data larger than ``cache_size``). Given once per cache
    and process; the rows are right either way."""


class RemoteShuffleWarning(NpyfeedWarning, UserWarning):
    """``shuffle=True`` (global) over an object store: rows scattered over the object cost about a request each.

    Given once per Loader, with the requests per batch and per epoch it implies against ``shuffle="block"``.
    """


class UnversionedObjectWarning(NpyfeedWarning, UserWarning):
    """An object's server sends neither an ETag nor a Last-Modified time: a replacement of the same size cannot be
    detected (one of another size still is). Given once per object and process, when it is opened."""
