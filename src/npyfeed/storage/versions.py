"""The version of a remote object pinned at open, sent with every GET and checked against every answer.

A version is what the server says identifies the object's bytes: its size, its ETag when it sends one, else its
Last-Modified time. Each ranged GET carries a precondition (``If-Match: <ETag>``, or ``If-Unmodified-Since``
when there is only a modification time), so a server that honours it refuses a replaced object (412). Servers
that ignore preconditions (s3rver, some gateways) still describe what they sent: every answer's ETag,
Last-Modified and total size (from ``Content-Range``) are compared with the pin before a byte of it is used.

What this cannot see: an object replaced by one of the same size on a server that sends neither validator, or
within the same second on one that sends only Last-Modified (HTTP dates have one-second resolution). Opening such
an object warns once (:class:`~npyfeed.errors.UnversionedObjectWarning`).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from npyfeed.errors import ObjectChangedError, UnversionedObjectWarning

__all__ = ["ObjectVersion"]

# obstore reports a missing Last-Modified header as the Unix epoch.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_warned: set[str] = set()
_warned_lock = threading.Lock()


def _bare(etag: str) -> str:
    """An ETag without its quotes: listings of some stores (fake-gcs-server) give it bare, HEAD and GET quoted."""
    return etag.strip('"')


def _modified(meta: Mapping[str, Any]) -> datetime | None:
    value = meta.get("last_modified")
    return value if isinstance(value, datetime) and value != _EPOCH else None


@dataclass(frozen=True)
class ObjectVersion:
    """Size, ETag and Last-Modified of an object as seen when it was opened (either validator may be None)."""

    size: int
    etag: str | None
    modified: datetime | None

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> ObjectVersion:
        """From obstore's metadata (a HEAD, a listing entry or a GET's ``meta``)."""
        return cls(int(meta["size"]), meta.get("e_tag") or None, _modified(meta))

    @property
    def token(self) -> str:
        """What tells this version from another of the same size (the ETag, else the time, else ``"unversioned"``)."""
        if self.etag:
            return _bare(self.etag)
        return self.modified.isoformat() if self.modified else "unversioned"

    @property
    def detectable(self) -> bool:
        """Whether a replacement of the same size can be noticed at all (the server sends a validator)."""
        return bool(self.etag or self.modified)

    def describe(self) -> str:
        if self.etag:
            return f"{self.size} bytes with ETag {self.etag}"
        if self.modified:
            return f"{self.size} bytes last modified {self.modified:%Y-%m-%d %H:%M:%S} UTC"
        return f"{self.size} bytes"

    def warn_if_undetectable(self, name: str, cached: bool) -> None:
        """Warn once per object and process when the server gives no ETag and no Last-Modified."""
        if self.detectable:
            return
        with _warned_lock:
            if name in _warned:
                return
            _warned.add(name)
        bypass = "; it is not cached either (cache_dir is ignored for it)" if cached else ""
        warnings.warn(
            f"{name}: the server sends no ETag and no Last-Modified, so a change to the object cannot be detected "
            f"unless its size changes{bypass}",
            UnversionedObjectWarning,
            stacklevel=3,
        )

    def preconditions(self) -> dict[str, Any]:
        """obstore ``GetOptions`` that make a server that honours them refuse another version (412)."""
        if self.etag:
            quoted = self.etag if self.etag.endswith('"') else f'"{self.etag}"'  # RFC 9110: an entity-tag is quoted
            return {"if_match": quoted}
        if self.modified:
            return {"if_unmodified_since": self.modified}
        return {}

    def check(self, name: str, meta: Mapping[str, Any]) -> None:
        """Raise :class:`ObjectChangedError` naming ``name`` if ``meta`` (a HEAD or a GET answer) is not this
        version: another total size, another ETag, or (without ETags) another Last-Modified."""
        etag = meta.get("e_tag")
        if etag and etag == self.etag and meta["size"] == self.size:
            return  # the common case, once per GET: the very ETag pinned, and the size
        found = ObjectVersion.from_meta(meta)
        if found.size != self.size:
            what = "size"
        elif self.etag and found.etag and _bare(found.etag) != _bare(self.etag):
            what = "ETag"
        elif not (self.etag and found.etag) and self.modified and found.modified and found.modified != self.modified:
            what = "Last-Modified"
        else:
            return
        raise ObjectChangedError(
            f"{name}: the object changed since it was opened (its {what} differs): the server now describes "
            f"{found.describe()}, expected {self.describe()}"
        )
