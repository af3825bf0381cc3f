"""A remote object replaced while it is read, on real servers with different validators and preconditions.

Servers (each on a free port of 127.0.0.1, started once per module, moto once per session, and stopped after):

| server | ETag | Last-Modified | honours |
|---|---|---|---|
| moto (S3) | MD5 | yes | If-Match |
| s3rver (S3, npm) | MD5 | yes | nothing (answers the new bytes) |
| nginx over HTTP, over HTTPS (test CA) | mtime-size | yes | If-Match, If-Unmodified-Since |
| nginx with ``etag off`` | - | yes | If-Unmodified-Since |
| RangeServer, Last-Modified only | - | yes | nothing |
| RangeServer, no validator | - | - | nothing |

For each, an object of 8,192 rows is replaced (same size, bigger, smaller) before the first batch or mid-epoch, in
every order, with and without the chunk cache. Row ``r`` of version ``v`` holds ``v * 10**6 + r`` in every
column, so a delivered row tells which version it came from: no row of the new version may ever be delivered; the
change must raise :class:`ObjectChangedError` naming the URL wherever a fetch comes after it and the server
gives a way to see it (all but a same-size replacement on a server with no validator, which warns when opened).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import ssl
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("obstore")

import npyfeed
from npyfeed.errors import ConfigError, ObjectChangedError, UnversionedObjectWarning
from servers import Nginx, RangeServer, S3rver, TestCA, environment

BUCKET = "npyfeed-versions"
# int64, 512 KiB: at least four reads (a read holds at most 64 batches), and with prefetch=1 a read starts only when
# the consumer is done with the one before: a change after the second batch comes before most of the epoch's fetches.
ROWS, COLUMNS = 8192, 8
BATCH = 32
CHANGES = {"same size": ROWS, "bigger": ROWS + 512, "smaller": ROWS - 512}
ORDERS: dict[str, Any] = {"sequential": False, "shuffle": True, "block": "block"}
# Small requests, chunks and read-ahead, so most of an epoch is fetched after the replacement.
OPTIONS = {"request_bytes": 8192, "prefetch_bytes": 65536, "deadline": 30}
CACHE = {"cache_chunk_bytes": 65536}


def body(version: int, rows: int = ROWS) -> bytes:
    array = np.repeat((version * 10**6 + np.arange(rows, dtype=np.int64))[:, None], COLUMNS, axis=1)
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@dataclass
class Store:
    """One server under test: ``put(key, data)`` uploads or replaces an object and returns its URL."""

    name: str
    put: Callable[[str, bytes], str]
    env: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    validators: bool = True
    """Whether it sends an ETag or a Last-Modified (without, a same-size replacement cannot be detected)."""


def file_put(root: Path, base: str) -> Callable[[str, bytes], str]:
    """Write ``key`` under ``root`` atomically, each version 10 s later than the one before (a second apart at
    least: Last-Modified and nginx's ETag have one-second resolution)."""
    clock = [time.time() - 3600]

    def put(key: str, data: bytes) -> str:
        target = root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(target.name + ".tmp")
        temporary.write_bytes(data)
        clock[0] += 10
        os.utime(temporary, (clock[0], clock[0]))
        temporary.replace(target)
        return f"{base}/{key}"

    return put


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


KINDS = ["moto", "s3rver", "nginx-http", "nginx-https", "nginx-no-etag", "last-modified-only", "no-validator"]


@pytest.fixture(scope="module", params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA) -> Iterator[Store]:
    kind: str = request.param
    root = tmp_path_factory.mktemp(kind)
    if kind in ("moto", "s3rver"):
        with contextlib.ExitStack() as stack:
            # moto: the session's one server (conftest.py); s3rver: this module's.
            server: Any = request.getfixturevalue("moto_server") if kind == "moto" else None
            server = server or stack.enter_context(S3rver(root))
            stack.enter_context(environment(server.env))
            client = server.client()
            client.create_bucket(Bucket=BUCKET)

            def s3_put(key: str, data: bytes) -> str:
                client.put_object(Bucket=BUCKET, Key=key, Body=data)
                return f"s3://{BUCKET}/{key}"

            yield Store(kind, s3_put)
    elif kind.startswith("nginx"):
        tls = test_ca if kind == "nginx-https" else None
        with Nginx(root / "www", root / "nginx", tls=tls, etag=kind != "nginx-no-etag") as nginx:
            options = {"client_options": {"root_certificate": test_ca.ca_pem}} if tls else {}
            yield Store(kind, file_put(root / "www", nginx.url), options=options)
    else:
        etag_less = {"last_modified": kind == "last-modified-only", "etag": False}
        with RangeServer(root, **etag_less) as server:
            yield Store(kind, file_put(root, server.url), validators=kind == "last-modified-only")


def changed_error(error: BaseException | None) -> ObjectChangedError | None:
    """The ObjectChangedError raised, or the one a wrapper (a WorkerError) carries as its cause."""
    while error is not None:
        if isinstance(error, ObjectChangedError):
            return error
        error = error.__cause__ or error.__context__
    return None


def check_rows(batches: list[np.ndarray], url: str, *, complete: bool) -> None:
    """Every delivered row is one whole row of version 1, none twice; ``complete``: all of them."""
    rows = np.concatenate(batches) if batches else np.empty((0, COLUMNS), np.int64)
    assert (rows == rows[:, :1]).all(), url
    values = rows[:, 0]
    versions = values // 10**6
    assert (versions == 1).all(), f"{url}: {int((versions != 1).sum())} rows of the new version delivered"
    assert np.unique(values).size == values.size, url
    if complete:
        assert np.array_equal(np.sort(values), 10**6 + np.arange(ROWS)), url


def replaced(
    store: Store, tmp_path: Path, *, change: str, when: str, order: str, cached: bool, iterate: Callable[..., Any]
) -> tuple[BaseException | None, str]:
    """Open an object, replace it (``when``: "before" the first batch, or "mid"-epoch after two batches), read
    the rest of the epoch; check the rows and return the error and the URL."""
    # A key of its own per case and iteration: objects (and their one-time warnings) are never shared between tests.
    via = getattr(iterate, "__name__", "iter")
    key = f"{via}/{'cached' if cached else 'direct'}/{order}/{change}/{when}.npy".replace(" ", "_")
    url = store.put(key, body(1))
    options = {**OPTIONS, **store.options, **({"cache_dir": str(tmp_path / "cache"), **CACHE} if cached else {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", npyfeed.RemoteShuffleWarning)  # small requests, on purpose
        geometry = {"block_rows": 256, "window_blocks": 2} if order == "block" else {}
        warned = (
            pytest.warns(UnversionedObjectWarning, match=re.escape(url) + ".*cannot be detected")
            if not store.validators
            else contextlib.nullcontext()
        )
        with warned:
            loader = npyfeed.Loader(
                url, BATCH, shuffle=ORDERS[order], seed=3, prefetch=1, storage_options=options, **geometry
            )
        batches: list[np.ndarray] = []
        error: BaseException | None = None
        batches_iter = iterate(loader)
        try:
            if when == "mid":
                batches.extend(np.asarray(next(batches_iter)) for _ in range(2))
            store.put(key, body(2, CHANGES[change]))
            batches.extend(np.asarray(batch) for batch in batches_iter)
        except Exception as e:
            error = e
    if store.validators or change != "same size":
        check_rows(batches, url, complete=error is None)
    return error, url


@pytest.mark.parametrize("cached", [False, True], ids=["direct", "cached"])
def test_replaced_object_never_mixes_versions(store: Store, tmp_path: Path, cached: bool) -> None:
    results = []
    for change in CHANGES:
        for when in ("before", "mid"):
            for order in ORDERS:
                error, url = replaced(
                    store, tmp_path, change=change, when=when, order=order, cached=cached, iterate=iter
                )
                found = changed_error(error)
                if error is not None and found is None:
                    raise error
                detectable = store.validators or change != "same size"
                # A cached global shuffle fetches every chunk for its first batch: the rest of the epoch is the old
                # version from the cache, which is right (no row of the new one), and nothing is left to notice.
                must_detect = detectable and not (cached and order == "shuffle" and when == "mid")
                if must_detect:
                    assert found is not None, f"{store.name}: {change}, {when}, {order}: the change went unnoticed"
                if found is not None:
                    assert url in str(found) and ("changed" in str(found) or "replaced" in str(found)), found
                results.append((change, when, order, found is not None))
    assert len(results) == 18


def test_replaced_object_through_torch(store: Store, tmp_path: Path) -> None:
    """The same guarantee through a framework adapter (torch's IterableDataset), mid-epoch, block shuffle."""
    pytest.importorskip("torch")

    def through_torch(loader: npyfeed.Loader) -> Iterator[Any]:
        return (batch.numpy() for batch in loader.to_torch())

    error, url = replaced(
        store, tmp_path, change="bigger", when="mid", order="block", cached=False, iterate=through_torch
    )
    found = changed_error(error)
    assert found is not None and url in str(found), error


@pytest.mark.parametrize(
    ("validators", "precondition"),
    [({}, "if-match"), ({"etag": False}, "if-unmodified-since"), ({"etag": False, "last_modified": False}, None)],
)
def test_preconditions_sent(tmp_path: Path, validators: dict[str, bool], precondition: str | None) -> None:
    """Every ranged GET carries the pinned version: If-Match with an ETag, If-Unmodified-Since with only a date."""
    with RangeServer(tmp_path, **validators) as server:
        url = file_put(tmp_path, server.url)("x.npy", body(1))
        warned = pytest.warns(UnversionedObjectWarning) if precondition is None else contextlib.nullcontext()
        with warned:
            array = npyfeed.open(url, storage_options=OPTIONS)
        assert array[100:200, 0].tolist() == list(10**6 + np.arange(100, 200))
        gets = [h for h in server.headers_seen if "range" in h]
    assert len(gets) >= 2  # the header, the rows
    for headers in gets:
        sent = {name for name in headers if name.startswith("if-")}
        assert sent == ({precondition} if precondition else set()), headers


def test_one_warning_per_object(tmp_path: Path) -> None:
    """A server with no ETag and no Last-Modified: one UnversionedObjectWarning per object, not per open; a
    cache_dir does not cache it (it could not tell versions apart)."""
    with RangeServer(tmp_path, etag=False, last_modified=False) as server:
        put = file_put(tmp_path, server.url)
        url = put("w/x.npy", body(1))
        options = {"cache_dir": str(tmp_path / "cache")}
        with pytest.warns(UnversionedObjectWarning, match="not cached either") as record:
            first = npyfeed.open(url, storage_options=options)
        assert len(record) == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            second = npyfeed.open(url, storage_options=options)
        assert first.storage.cache is None and second.storage.cache is None
        assert second[5, 0] == 10**6 + 5


# -- TLS ------------------------------------------------------------------------------------------------------------
def test_tls_untrusted_certificate_is_refused_as_such(tmp_path: Path, test_ca: TestCA) -> None:
    put = file_put(tmp_path / "www", "")
    put("x.npy", body(1))
    with Nginx(tmp_path / "www", tmp_path / "nginx", tls=test_ca) as nginx:
        url = f"{nginx.url}/x.npy"
        began = time.monotonic()
        with pytest.raises(ssl.SSLCertVerificationError, match="TLS certificate is not trusted") as info:
            npyfeed.open(url)
        assert time.monotonic() - began < 10  # not retried until the deadline
        assert url in str(info.value) and "UnknownIssuer" in str(info.value) and "root_certificate" in str(info.value)
        assert isinstance(info.value, OSError)
        # Trusted through the documented settings: the option (PEM text), or SSL_CERT_FILE.
        options = {"client_options": {"root_certificate": test_ca.ca_pem}}
        assert npyfeed.open(url, storage_options=options)[7, 0] == 10**6 + 7
        for path in (test_ca.ca_file, str(test_ca.ca_file)):  # or the PEM file's path
            assert npyfeed.open(url, storage_options={"client_options": {"root_certificate": path}})[6, 0] == 10**6 + 6
        missing = {"client_options": {"root_certificate": str(tmp_path / "nope.pem")}}
        with pytest.raises(ConfigError, match=r"root_certificate'\]=.*nope\.pem: cannot read the CA certificate file"):
            npyfeed.open(url, storage_options=missing)
        with environment({"SSL_CERT_FILE": str(test_ca.ca_file)}):
            assert npyfeed.open(url)[8, 0] == 10**6 + 8


def test_tls_aws_ca_bundle_for_s3(tmp_path: Path, test_ca: TestCA) -> None:
    """``AWS_CA_BUNDLE`` (the AWS SDKs' setting) is trusted for s3:// (s3rver over HTTPS here)."""
    with S3rver(tmp_path / "s3", tls=test_ca) as server:
        client = server.client(verify=str(test_ca.ca_file))
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="x.npy", Body=body(1))
        url = f"s3://{BUCKET}/x.npy"
        with environment(server.env), pytest.raises(ssl.SSLCertVerificationError, match="AWS_CA_BUNDLE"):
            npyfeed.open(url)
        with environment({**server.env, "AWS_CA_BUNDLE": str(test_ca.ca_file)}):
            assert npyfeed.open(url)[9, 0] == 10**6 + 9
        with (
            environment({**server.env, "AWS_CA_BUNDLE": str(tmp_path / "missing.pem")}),
            pytest.raises(ConfigError, match=r"AWS_CA_BUNDLE=.*missing\.pem: cannot read the CA certificate file"),
        ):
            npyfeed.open(url)


# -- how servers answer ranges and paths ------------------------------------------------------------------------------
def test_http_path_is_encoded_once(tmp_path: Path) -> None:
    put = file_put(tmp_path / "www", "")
    put("sp ace.npy", body(1))
    with Nginx(tmp_path / "www", tmp_path / "nginx") as nginx:
        assert npyfeed.open(f"{nginx.url}/sp%20ace.npy")[3, 0] == 10**6 + 3


def test_range_answered_with_200_is_named(tmp_path: Path) -> None:
    """A server that answers a range with 200 and a correct Content-Range (rclone's S3 server): obstore reads
    ranges only from 206 answers, and the message says exactly that."""
    file_put(tmp_path, "")("x.npy", body(1))
    with (
        RangeServer(tmp_path, partial_status=200) as server,
        pytest.raises(OSError, match=r"status 200 instead of 206.*reads ranges only from 206 answers"),
    ):
        npyfeed.open(f"{server.url}/x.npy")
