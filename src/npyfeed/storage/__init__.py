"""Where bytes live: the :class:`Storage` protocol and its backends (``LocalFile``, ``ObjectFile``).

``open_storage(name)`` picks the backend: a local file for a path or ``file://`` URL, an :class:`ObjectFile` for
``s3://``, ``gs://``, ``http(s)://`` (imported on first use: the object-store client is the optional extra
``npyfeed[remote]``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from npyfeed.storage.base import AccessPattern, Storage
from npyfeed.storage.local import LocalFile
from npyfeed.storage.urls import is_url, local_path

if TYPE_CHECKING:
    from npyfeed.storage.object_store import ObjectFile

__all__ = ["AccessPattern", "LocalFile", "ObjectFile", "Storage", "open_storage"]


def open_storage(
    name: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Storage:
    """The storage backend for ``name``: a local file for a path or ``file://`` URL, else a remote object.

    ``storage_options`` configure the object store (endpoint, credentials, region, npyfeed's request tuning; see
    :class:`npyfeed.storage.store_options.ClientOptions`) and the local cache (``cache_dir``...; see
    :mod:`npyfeed.storage.cache.directory`); ``meta`` is the object's listing entry, when known (saves a
    HEAD request).
    """
    if is_url(name):
        text = os.fspath(name)
        if text.startswith("file://"):
            return LocalFile(local_path(text))
        from npyfeed.storage.object_store import ObjectFile

        return ObjectFile(text, storage_options=storage_options, meta=meta)
    return LocalFile(name)


def __getattr__(name: str) -> Any:
    if name == "ObjectFile":  # lazily: importing npyfeed must not import an object-store client
        from npyfeed.storage.object_store import ObjectFile

        return ObjectFile
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
