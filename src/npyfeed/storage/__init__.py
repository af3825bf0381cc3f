"""Where bytes live: the :class:`Storage` protocol and its backends (``LocalFile``; object stores plug in here).

``open_storage(name)`` picks the backend for a path (or, once registered, a URL).
"""

from __future__ import annotations

import os

from npyfeed.storage.base import AccessPattern, Storage
from npyfeed.storage.local import LocalFile

__all__ = ["AccessPattern", "LocalFile", "Storage", "open_storage"]


def open_storage(name: str | os.PathLike[str]) -> Storage:
    """The storage backend for ``name``: a local file for a path."""
    return LocalFile(name)
