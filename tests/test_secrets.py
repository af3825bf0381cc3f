"""Credentials in URLs are never printed: not in messages, reprs, saved states, CLI output or exception chains.

A URL may carry a password (``http://user:password@host/``) or a presigned query string (``?X-Amz-Signature=...``).
Every path that shows a URL goes through :func:`npyfeed.storage.urls.redact`; these tests walk each one with a
secret-bearing URL against a real HTTP server on 127.0.0.1 and look for the secret in everything a user could see.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("obstore")

import npyfeed
from npyfeed.cli import main
from npyfeed.storage.urls import redact
from servers import RangeServer

SECRET = "s3cr3t-Pa55"


def shown(error: BaseException) -> str:
    """Everything a traceback of ``error`` prints: messages, notes, and the causes and contexts it shows."""
    return "".join(traceback.format_exception(error)) + repr(error) + repr(getattr(error, "__notes__", ""))


def chain(error: BaseException | None) -> Iterator[BaseException]:
    while error is not None:
        yield error
        error = error.__cause__ if error.__cause__ is not None or error.__suppress_context__ else error.__context__


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[RangeServer, Path]]:
    np.save(tmp_path / "x.npy", np.arange(4000, dtype=np.int64).reshape(1000, 4))
    with RangeServer(tmp_path) as s:
        yield s, tmp_path


def test_redact() -> None:
    assert redact("https://host/x.npy?X-Amz-Signature=abc&X-Amz-Credential=AK%2F1") == "https://host/x.npy?<redacted>"
    assert redact("http://user:pw@host/") == "http://<redacted>@host/"
    assert (
        redact("failed (GET https://u:p@h:9/k?token=t), retrying")
        == "failed (GET https://<redacted>@h:9/k?<redacted>), retrying"
    )
    assert redact("s3://bucket/x_*.npy and /local/x.npy") == "s3://bucket/x_*.npy and /local/x.npy"


def test_presigned_urls_are_refused_without_their_signature(capsys: pytest.CaptureFixture[str]) -> None:
    """A presigned URL is signed for GET alone, and npyfeed opens an object with a HEAD: refused, saying why and what
    to do instead, never showing the signature (in Python, in the CLI, for a glob)."""
    for url in (
        f"https://127.0.0.1:9/x.npy?X-Amz-Signature={SECRET}&token={SECRET}",
        f"http://127.0.0.1:9/d/x_*.npy?X-Amz-Credential={SECRET}",
        f"https://127.0.0.1:9?sig={SECRET}",
    ):
        with pytest.raises(ValueError) as info:
            npyfeed.open(url)
        message = str(info.value)
        assert message.startswith(redact(url) + ": a query string or fragment in an https:// or http:// object URL")
        for why in ("HEAD request", "signed for one method (GET)", "curl -o x.npy 'URL'", "s3:// or gs:// URL"):
            assert why in message, message
        assert SECRET not in shown(info.value)
        assert main(["inspect", url]) == 1
        out = capsys.readouterr()
        assert SECRET not in out.out + out.err and "HEAD request" in out.err
    for url, store in ((f"s3://b/x.npy?versionId={SECRET}", "s3://"), (f"gs://b/x.npy#{SECRET}", "gs://")):
        with pytest.raises(ValueError, match=f"{store} URLs take no query string or fragment") as info:
            npyfeed.open(url)
        assert SECRET not in shown(info.value)


def test_a_password_in_a_url_is_never_shown(
    server: tuple[RangeServer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    s, root = server
    host = s.url.removeprefix("http://")
    url = f"http://reader:{SECRET}@{host}/x.npy"
    # Opened and described.
    a = npyfeed.open(url)
    loader = npyfeed.Loader(url, 100, shuffle="block", seed=1, block_rows=50)
    seen = [repr(a), str(a.path), repr(loader), json.dumps(loader.get_state()), repr(a.storage)]
    assert all(SECRET not in text for text in seen), seen
    assert "http://<redacted>@" in repr(a)
    # Errors at open: a missing object.
    with pytest.raises(FileNotFoundError) as missing:
        npyfeed.open(f"http://reader:{SECRET}@{host}/nope.npy")
    # Errors during an epoch: the object deleted after the loader opened it.
    errors: list[BaseException] = [missing.value]
    (root / "x.npy").unlink()
    with pytest.raises(OSError) as mid:
        for _ in loader:
            pass
    errors.append(mid.value)
    for error in errors:
        assert all(SECRET not in str(e) for e in chain(error))
        assert SECRET not in shown(error), shown(error)
    # The command line: a valid object, then a missing one, as text and JSON.
    np.save(root / "x.npy", np.zeros((3, 2), np.float32))
    assert main(["inspect", url]) == 0
    assert main(["inspect", f"http://reader:{SECRET}@{host}/nope.npy"]) == 1
    assert main(["inspect", "--json", url, f"http://reader:{SECRET}@{host}/nope.npy?sig={SECRET}"]) == 1
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err, out
    assert "http://<redacted>@" in out.out
