"""URLs npyfeed reads in place: ``s3://bucket/key``, ``gs://bucket/key``, ``https://host/path`` and ``file:///path``.

Pure string handling (no client imported): telling a URL from a path, splitting it into the store it names and
the key inside that store, matching glob patterns (``s3://bucket/train/x_*.npy``) segment by segment, so a
``*`` never crosses a ``/`` (what :mod:`glob` does for local paths), and :func:`redact`, the one function every
message, repr, state and log line passes URLs through so that credentials in them are never printed.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["REMOTE_SCHEMES", "ObjectUrl", "has_glob", "is_url", "local_path", "match_key", "parse_url", "redact"]

REMOTE_SCHEMES = ("s3", "gs", "http", "https")
_GLOB_CHARS = frozenset("*?[")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_ALIASES = {"s3a": "s3", "gcs": "gs"}
# A URL inside any text: scheme, authority (userinfo@host:port), path, then a query or fragment. The query ends at
# whitespace, a quote or a closing bracket, so redacting one in a message keeps the text around it.
_URL_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^\s/?#'\"<>]*)([^\s?#'\"<>]*)([?#][^\s'\"<>)\]]*)?")
REDACTED = "<redacted>"


@dataclass(frozen=True)
class ObjectUrl:
    """One object (or glob pattern) in a store: ``s3://bucket/dir/x.npy`` is ``("s3", "bucket", "dir/x.npy")``."""

    scheme: str
    """``s3``, ``gs``, ``http`` or ``https``."""
    authority: str
    """The bucket (``s3``, ``gs``) or ``host[:port]`` (``http``, ``https``)."""
    key: str
    """The path inside the store, without a leading ``/``."""

    @property
    def store_url(self) -> str:
        """The URL of the store itself (bucket or server root)."""
        return f"{self.scheme}://{self.authority}"

    def __str__(self) -> str:
        return f"{self.store_url}/{self.key}"

    def with_key(self, key: str) -> ObjectUrl:
        return ObjectUrl(self.scheme, self.authority, key)

    @property
    def list_prefix(self) -> str:
        """The longest directory prefix of ``key`` before its first glob character (what to list)."""
        head = self.key
        for i, char in enumerate(self.key):
            if char in _GLOB_CHARS:
                head = self.key[:i]
                break
        return head.rsplit("/", 1)[0] if "/" in head else ""


def is_url(name: object) -> bool:
    """True for a string with a ``scheme://`` prefix (a local path never has one)."""
    return isinstance(name, str) and _SCHEME.match(name) is not None


def redact(text: object) -> str:
    """``text`` with the credentials of every URL in it replaced by ``<redacted>``: the query string and fragment
    (presigned ``X-Amz-Signature=...``, ``?token=...``) and the userinfo (``user:password@``).

    >>> redact("https://host/x.npy?X-Amz-Signature=abc")
    'https://host/x.npy?<redacted>'
    >>> redact("cannot read 'http://user:pw@host:8080/d/x.npy': HTTP 404")
    "cannot read 'http://<redacted>@host:8080/d/x.npy': HTTP 404"
    """

    def one(match: re.Match[str]) -> str:
        scheme, authority, path, query = match.groups()
        if "@" in authority:
            authority = f"{REDACTED}@{authority.rpartition('@')[2]}"
        return f"{scheme}{authority}{path}{query[0] + REDACTED if query else ''}"

    return _URL_IN_TEXT.sub(one, str(text))


def has_glob(text: str) -> bool:
    return bool(_GLOB_CHARS & set(text))


def local_path(url: str) -> str:
    """The local path of a ``file://`` URL (``file:///data/x.npy`` -> ``/data/x.npy``)."""
    if not url.startswith("file://"):
        raise ValueError(f"{redact(url)}: not a file:// URL")
    rest = url[len("file://") :]
    if rest and not rest.startswith("/"):
        host, _, path = rest.partition("/")
        if host not in ("", "localhost"):
            raise ValueError(f"{redact(url)}: file:// URLs name a local path (file:///path), not host {host!r}")
        rest = "/" + path
    return unquote(rest)


def parse_url(url: str | os.PathLike[str]) -> ObjectUrl:
    """Split a remote URL into scheme, bucket or host, and key; raises ``ValueError`` naming what is wrong."""
    text = os.fspath(url)
    match = _SCHEME.match(text)
    if match is None:
        raise ValueError(f"{redact(text)}: not a URL (expected scheme://...)")
    shown = redact(text)
    scheme = _ALIASES.get(match.group(1).lower(), match.group(1).lower())
    if scheme not in REMOTE_SCHEMES:
        raise ValueError(
            f"{shown}: unsupported URL scheme {match.group(1)!r}: expected one of s3://, gs://, https://, http:// "
            "or file://"
        )
    authority, _, key = text[match.end() :].partition("/")
    if not authority:
        what = "bucket" if scheme in ("s3", "gs") else "host"
        raise ValueError(f"{shown}: the URL names no {what}")
    if "?" in key or "#" in key or "?" in authority or "#" in authority:
        raise ValueError(f"{shown}: {_NO_QUERY[scheme]}")
    return ObjectUrl(scheme, authority, key)


_PRESIGNED = (
    "a query string or fragment in an https:// or http:// object URL (a presigned URL's X-Amz-Signature=..., a "
    "?token=...) is not supported: npyfeed asks for an object's size and version with a HEAD request and reads it in "
    "many ranged GETs, and a presigned URL is signed for one method (GET), so its HEAD is refused. Download the "
    "object first (curl -o x.npy 'URL') and read the local file, or read it by its s3:// or gs:// URL with "
    "credentials (the standard environment or storage_options) or, for a public bucket, "
    "storage_options={'skip_signature': True}"
)
_NO_QUERY = {
    "s3": "s3:// URLs take no query string or fragment (object versions such as ?versionId= are not supported): "
    "name the object as s3://bucket/key",
    "gs": "gs:// URLs take no query string or fragment (generations such as ?generation= are not supported): "
    "name the object as gs://bucket/key",
    "http": _PRESIGNED,
    "https": _PRESIGNED,
}


def match_key(pattern: str, key: str) -> bool:
    """Whether ``key`` matches the glob ``pattern`` with ``/`` as a separator no wildcard crosses."""
    parts, names = pattern.split("/"), key.split("/")
    return len(parts) == len(names) and all(
        fnmatch.fnmatchcase(name, part) for part, name in zip(parts, names, strict=True)
    )
