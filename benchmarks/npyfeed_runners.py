"""npyfeed's own rows: the numpy path (``npyfeed.Loader``) and the tf.data path (``loader.to_tf_dataset()``).

npyfeed is imported lazily and its API probed, so the suite runs while the library is being written: a missing
piece raises :class:`NotAvailable` and the row reads "n/a (not available: ...)".
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from benchmarks.spec import Batch, Job, NotAvailable, as_pair

__all__ = ["numpy_path", "tf_path"]


def _loader(job: Job) -> Any:
    try:
        import npyfeed
    except Exception as e:  # a half-written package may fail with anything, not just ImportError
        raise NotAvailable(f"not available: import npyfeed failed: {type(e).__name__}: {e}") from e
    loader_cls = getattr(npyfeed, "Loader", None)
    if loader_cls is None:
        raise NotAvailable("not available: npyfeed has no Loader yet")
    files = job.files
    source: Any = files.x if files.y is None else (files.x, files.y)
    kwargs: dict[str, Any] = {"batch_size": job.batch_size, "shuffle": job.shuffle}
    if "seed" in inspect.signature(loader_cls).parameters:
        kwargs["seed"] = job.seed
    return loader_cls(source, **kwargs)


def numpy_path(job: Job) -> Iterator[Batch]:
    """Iterate ``npyfeed.Loader`` directly: numpy batches for JAX, PyTorch or a custom loop."""
    for batch in _loader(job):
        yield as_pair(batch)


def tf_path(job: Job) -> Iterator[Batch]:
    """Iterate ``loader.to_tf_dataset()`` eagerly, as ``model.fit`` would consume it."""
    loader = _loader(job)
    to_tf = getattr(loader, "to_tf_dataset", None)
    if to_tf is None:
        raise NotAvailable("not available: Loader has no to_tf_dataset yet")
    try:
        dataset = to_tf()
    except (ModuleNotFoundError, NotImplementedError) as e:  # the adapter module is still being written
        if isinstance(e, ModuleNotFoundError) and not (e.name or "").startswith("npyfeed"):
            raise
        raise NotAvailable(f"not available: {type(e).__name__}: {e}") from e
    for element in dataset.as_numpy_iterator():
        yield as_pair(element)
