"""The storage protocol: where the bytes of one object (a local file, an object in a bucket) live.

A backend knows nothing about ``.npy``: it has a name for messages, a size, and reads byte ranges into buffers
the caller owns. :class:`npyfeed.NpyArray` parses the header from the first bytes (see
:func:`npyfeed.format.parse_header`) and then asks for rows as fixed-size records at byte offsets, so a local
file and a remote object are validated and read the same way.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np

__all__ = ["AccessPattern", "Storage"]

AccessPattern = Literal["normal", "sequential", "random", "sparse"]
"""How a source is read next; ``"sparse"``: at random, and of each range hinted only a share of the records (a
shard of a block shuffle), so an object's read-ahead merges hinted ranges closer than ``gap_bytes``."""


@runtime_checkable
class Storage(Protocol):
    """Random access to the bytes of one object, pinned to the version that was opened.

    >>> import os, tempfile
    >>> from npyfeed.storage import LocalFile
    >>> path = os.path.join(tempfile.mkdtemp(), "b.bin")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(bytes(range(16)))
    >>> with LocalFile(path) as s:
    ...     out = np.empty(6, np.uint8)
    ...     s.gather(1, 3, np.array([0, 4], np.int64), out)
    ...     s.size, out.tolist()
    (16, [1, 2, 3, 13, 14, 15])
    """

    @property
    def name(self) -> str:
        """The path or URL, for messages."""
        ...

    @property
    def size(self) -> int:
        """Bytes in the object when it was opened."""
        ...

    @property
    def version(self) -> Hashable:
        """What identifies the version opened: ``(st_dev, st_ino, st_size, st_mtime_ns)`` locally, size and ETag (else
        Last-Modified) remotely."""
        ...

    def read_into(self, offset: int, out: np.ndarray) -> None:
        """Fill ``out`` (a contiguous uint8 array) with the bytes at ``[offset, offset + out.size)``.

        Raises :class:`npyfeed.NpyfeedError` naming the object if it no longer holds them.
        """
        ...

    def gather(self, base: int, record_bytes: int, indices: np.ndarray, out: np.ndarray) -> None:
        """Copy the records at ``base + i * record_bytes`` for each ``i`` of ``indices`` (int64, any order) into
        ``out`` (a contiguous uint8 array of ``indices.size * record_bytes`` bytes), in the order of ``indices``.

        Bytes are copied as they are (padding included). Ascending runs are the fast case: callers sort.
        """
        ...

    def check(self) -> None:
        """Raise :class:`npyfeed.FileChangedError` if the object is no longer the version opened."""
        ...

    def will_need(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Hint: these ``[start, stop)`` byte ranges are read soon (start fetching; never waits)."""
        ...

    def advise(self, pattern: AccessPattern) -> None:
        """Hint: how the object is read next (tunes read-ahead where the backend has any)."""
        ...

    def close(self) -> None:
        """Release descriptors, mappings or connections; idempotent."""
        ...
