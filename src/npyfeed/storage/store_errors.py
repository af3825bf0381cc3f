"""An object store's failure as npyfeed's error: the built-in type kept (``FileNotFoundError``,
``PermissionError``, ``OSError``, ``ssl.SSLCertVerificationError``), the URL named with its secrets redacted, what
to do said; or :class:`Transient`, a failure worth retrying (5xx, resets, timeouts).

Reads obstore's exceptions and messages (its HTTP status, the TLS layer's verdict, a request to the cloud's metadata
service) without importing obstore: the client passes ``obstore.exceptions`` in.
"""

from __future__ import annotations

import errno
import re
import ssl
from typing import Any

from npyfeed.errors import ConfigError, ObjectChangedError
from npyfeed.storage.urls import redact

__all__ = [
    "Transient",
    "certificate_problem",
    "final_error",
    "first_line",
    "http_status",
    "redacted_cause",
    "store_error",
]


class Transient(Exception):
    """A failure worth retrying (the message says what happened)."""


def final_error(exceptions: Any, scheme: str, e: BaseException, name: str, what: str) -> BaseException:
    """The error to raise for a failure after obstore's own retries (transient ones included)."""
    if isinstance(e, TimeoutError):
        return e  # ours, naming the URL and the deadline
    error = store_error(exceptions, scheme, e, name, what)
    if isinstance(error, Transient):
        return OSError(errno.EIO, f"{name}: {error}")
    return error


def store_error(
    exceptions: Any, scheme: str, e: BaseException, name: str, what: str, *, changed: bool = False
) -> BaseException:
    """Our error for an obstore failure: FileNotFoundError, PermissionError, ObjectChangedError, ConfigError,
    or a :class:`Transient` one worth retrying."""
    exc = exceptions
    text = first_line(e)
    if isinstance(e, exc.PreconditionError) or (changed and isinstance(e, exc.NotFoundError | FileNotFoundError)):
        # obstore raises its NotFoundError or the built-in FileNotFoundError for a 404: either way, deleted.
        if isinstance(e, exc.PreconditionError):
            state = "replaced (a precondition failed: 412)"
        else:
            state = "deleted (the server answered 404 Not Found)"
        return ObjectChangedError(f"{name}: the object was {state} since it was opened: {text}")
    if changed and http_status(str(e)) == 416:
        # The range lies inside the version opened (reads are bounds-checked first): the object got shorter.
        return ObjectChangedError(
            f"{name}: {what}: the object is shorter than when it was opened (the server answered 416 Range Not "
            f"Satisfiable): replaced or truncated since ({text})"
        )
    if isinstance(e, exc.NotFoundError | FileNotFoundError):
        return FileNotFoundError(errno.ENOENT, f"{name}: no such object or bucket ({text})", name)
    if isinstance(e, exc.PermissionDeniedError | exc.UnauthenticatedError | PermissionError):
        return PermissionError(errno.EACCES, f"{name}: {what}: access denied by the store ({text})", name)
    if isinstance(e, exc.UnknownConfigurationKeyError | exc.InvalidPathError):
        return ConfigError(f"{name}: {text}")
    if "non-partial response" in str(e) or (isinstance(e, exc.NotSupportedError) and "Range" in str(e)):
        return OSError(
            errno.EIO,
            f"{name}: the server answered a ranged GET with status 200 instead of 206 Partial Content (either "
            "the whole object, or the asked range under a 200 status, as rclone's S3 server does); the "
            f"object-store client (obstore) reads ranges only from 206 answers ({text})",
        )
    if _METADATA.search(str(e)):
        if scheme == "gs":
            given = "GOOGLE_APPLICATION_CREDENTIALS (a service account file), storage_options 'service_account'"
        else:
            given = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (environment or storage_options)"
        return PermissionError(
            errno.EACCES,
            f"{name}: {what}: no credentials: none were given, so the client asked the cloud's instance "
            f"metadata endpoint, which did not answer (not on a cloud machine?). Set {given}, or "
            f"storage_options={{'skip_signature': True}} for a public bucket ({text})",
            name,
        )
    certificate = certificate_problem(e)
    if certificate:
        return ssl.SSLCertVerificationError(
            errno.EACCES,
            f"{name}: {what}: the server's TLS certificate is not trusted ({certificate}); trust its CA with "
            "storage_options={'client_options': {'root_certificate': <CA PEM file or text>}}, SSL_CERT_FILE, "
            "or for s3:// AWS_CA_BUNDLE (docs/object-storage.md, TLS)",
        )
    status = http_status(str(e))
    if status == 404:  # a listing of a missing bucket says so only by its status
        if changed:
            return ObjectChangedError(f"{name}: the object was deleted since it was opened: {text}")
        return FileNotFoundError(errno.ENOENT, f"{name}: no such object or bucket ({text})", name)
    if status in (401, 403):
        return PermissionError(errno.EACCES, f"{name}: {what}: access denied by the store ({text})", name)
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return OSError(errno.EIO, f"{name}: {what}: the store answered HTTP {status} ({text})")
    return Transient(f"{what}: {text}")


def http_status(message: str) -> int | None:
    marker = "Server returned non-2xx status code: "
    at = message.find(marker)
    if at < 0:
        return None
    digits = message[at + len(marker) : at + len(marker) + 3]
    return int(digits) if digits.isdigit() else None


# rustls's verdict in obstore's error chain (its debug dump: "InvalidCertificate(\n UnknownIssuer,"), or a
# native-tls / OpenSSL one.
_CERTIFICATE = re.compile(
    r"InvalidCertificate\(\s*(\w*)|certificate verify failed[^\n]*|invalid peer certificate[^\n]*"
)


# Requests a client without credentials makes to the cloud's instance metadata service (AWS IMDS v1/v2, GCE).
_METADATA = re.compile(
    r"/latest/api/token|/latest/meta-data|computeMetadata|169\.254\.169\.254|metadata\.google\.internal"
)


def certificate_problem(e: BaseException) -> str:
    """What the TLS layer said about the server's certificate ("invalid certificate: UnknownIssuer"), or ""."""
    match = _CERTIFICATE.search(str(e))
    if match is None:
        return ""
    if match.group(0).startswith("Invalid"):
        return f"invalid certificate: {match.group(1) or 'unknown reason'}"
    return match.group(0).strip()


def first_line(e: BaseException) -> str:
    text = redact(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def redacted_cause(e: BaseException) -> BaseException:
    """``e`` to chain as a cause, or, when its message holds a URL's credentials, a stand-in of the same type (or
    an ``OSError``) with them redacted: a traceback prints every cause."""
    text = redact(e)
    if text == str(e):
        return e
    try:
        copy = type(e)(text)
    except Exception:
        copy = OSError(text)
    if str(copy) != text:
        copy = OSError(text)
    return copy
