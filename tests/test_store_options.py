"""``storage_options`` keys in the wrong place are a ConfigError naming the right spelling, never a panic in obstore;
a client without credentials says so. Servers are on 127.0.0.1 (a range server, moto for S3)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import npyfeed
from npyfeed.errors import ConfigError
from npyfeed.storage import store_options
from servers import RangeServer, environment, free_port

obstore = pytest.importorskip("obstore")


def stub_keys(module: str, cls: str) -> set[str]:
    """The keys of the TypedDict ``cls`` in the installed obstore's type stub ``module``."""
    path = Path(obstore.__file__).parent / "_store" / module
    tree = ast.parse(path.read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
    return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}


def test_the_known_keys_are_the_installed_obstores() -> None:
    assert stub_keys("_aws.pyi", "S3Config") == store_options.S3_KEYS
    assert stub_keys("_gcs.pyi", "GCSConfig") == store_options.GCS_KEYS
    assert stub_keys("_client.pyi", "ClientConfig") == store_options.CLIENT_KEYS
    assert stub_keys("_retry.pyi", "RetryConfig") == store_options.RETRY_KEYS
    assert stub_keys("_retry.pyi", "BackoffConfig") == store_options.BACKOFF_KEYS


@pytest.fixture
def http(tmp_path: Path) -> Iterator[str]:
    np.save(tmp_path / "x.npy", np.arange(12).reshape(4, 3))
    with RangeServer(tmp_path) as server:
        yield f"{server.url}/x.npy"


CASES: list[tuple[str, dict[str, Any], str]] = [
    # (scheme, storage_options, what the message must say)
    (
        "s3",
        {"allow_http": True},
        r"storage_options\['allow_http'\] is an HTTP client option: pass it as "
        r"storage_options=\{'client_options': \{'allow_http': True\}\}",
    ),
    ("gs", {"allow_http": True}, r"'client_options': \{'allow_http': True\}"),
    ("http", {"allow_http": True}, r"'client_options': \{'allow_http': True\}"),
    ("s3", {"AWS_ALLOW_HTTP": True}, r"'client_options': \{'allow_http': True\}"),
    (
        "s3",
        {"client_options": {"region": "eu-west-1"}},
        r"\['region'\] is an S3 store option, not an HTTP client "
        r"one: pass it as storage_options=\{'region': \.\.\.\}",
    ),
    ("s3", {"client_options": {"deadline": 5}}, r"is npyfeed's own option: pass it as storage_options=\{'deadline'"),
    ("gs", {"client_options": {"alow_http": True}}, r"is not an HTTP client option \(did you mean 'allow_http'\?\)"),
    ("s3", {"max_retries": 3}, r"is a retry setting: pass it in storage_options=\{'retry_config'"),
    ("s3", {"retry_config": {"max_retry": 3}}, r"not a retry setting \(did you mean 'max_retries'\?\)"),
    ("s3", {"retry_config": {"backoff": {"init": 1}}}, r"\['backoff'\]\['init'\] is not a backoff setting"),
    ("s3", {"service_account": "key.json"}, r"is a GCS option, not one of S3"),
    ("gs", {"region": "eu"}, r"is an S3 option, not one of GCS"),
    ("http", {"region": "eu"}, r"http\(s\):// URLs take no store options"),
    ("s3", {"regoin": "eu"}, r"'regoin' is not valid for store 'S3'\. \(did you mean 'region'\?\)"),
    ("s3", {"retries": 3}, r"\['retries'\] is no longer an option: transient failures are retried until"),
    ("s3", {"client_options": ["allow_http"]}, r"\['client_options'\] must be a dict"),
]


@pytest.mark.parametrize(("scheme", "options", "message"), CASES)
def test_a_misplaced_or_unknown_option_names_its_spelling(
    http: str, scheme: str, options: dict[str, Any], message: str
) -> None:
    url = {"s3": "s3://bucket/x.npy", "gs": "gs://bucket/x.npy", "http": http}[scheme]
    with environment({"AWS_REGION": "us-east-1"}), pytest.raises(ConfigError, match=message):
        npyfeed.open(url, storage_options=options)


def test_client_options_are_the_spelling_that_works(http: str) -> None:
    a = npyfeed.open(http, storage_options={"client_options": {"allow_http": True, "user_agent": "npyfeed-test"}})
    assert a[3].tolist() == [9, 10, 11]


def test_no_credentials_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials anywhere: the client asks the instance metadata endpoint (here a closed port on 127.0.0.1)."""
    closed = f"http://127.0.0.1:{free_port()}"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    options = {"metadata_endpoint": closed, "deadline": 5.0}
    message = r".*no credentials: .*AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY .*'skip_signature': True"
    with pytest.raises(PermissionError, match=re.escape("s3://bucket/x.npy") + message):
        npyfeed.open("s3://bucket/x.npy", storage_options=options)


# -- one argument rule for storage_options ------------------------------------------------------------------------
def test_sizes_and_counts_follow_the_argument_rule(http: str) -> None:
    """npyfeed's own storage options take what its other arguments take: NumPy ints, sizes in the one grammar."""
    from npyfeed.cli.main import _storage_option
    from npyfeed.storage.clients import get_client
    from npyfeed.storage.urls import parse_url

    options = {"request_bytes": "8MiB", "gap_bytes": "0", "prefetch_bytes": "1MB", "max_concurrency": np.int32(4)}
    client = get_client(parse_url(http), {**options, "timeout": np.float32(2.5), "deadline": 7})
    assert (client.options.request_bytes, client.options.gap_bytes, client.options.prefetch_bytes) == (
        8 << 20,
        0,
        10**6,
    )
    assert (client.options.max_concurrency, client.options.timeout, client.options.deadline) == (4, 2.5, 7.0)
    assert type(client.options.max_concurrency) is int
    a = npyfeed.open(http, storage_options={"request_bytes": "16B", "gap_bytes": "0B"})
    assert a[1:4].tolist() == [[3, 4, 5], [6, 7, 8], [9, 10, 11]]  # read in requests of 16 bytes
    # The command line gives the same values as Python does.
    assert _storage_option("request_bytes=8MiB") == ("request_bytes", 8 << 20)
    assert _storage_option("cache_size=2GB") == ("cache_size", "2GB")  # parsed by the cache, in the same grammar
    assert _storage_option("timeout=2.5") == ("timeout", 2.5)
    assert _storage_option("max_concurrency=64") == ("max_concurrency", 64)
    assert _storage_option("access_key_id=0123") == ("access_key_id", "0123")  # a store key stays a string


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"request_bytes": "8 parsecs"},
            "storage_options['request_bytes'] must be an int of bytes or a string such as",
        ),
        ({"request_bytes": 0}, "storage_options['request_bytes'] must be a size of at least 1 bytes, got 0 (int)"),
        ({"request_bytes": True}, "storage_options['request_bytes'] must be an int of bytes or a string"),
        ({"gap_bytes": "0.5B"}, "storage_options['gap_bytes'] must be a whole number of bytes"),
        ({"gap_bytes": -1}, "storage_options['gap_bytes'] must be a size of at least 0 bytes, got -1 (int)"),
        ({"prefetch_bytes": 1.5}, "storage_options['prefetch_bytes'] must be an int of bytes"),
        ({"max_concurrency": 2.0}, "storage_options['max_concurrency'] must be a positive int, got 2.0 (float)"),
        ({"max_concurrency": np.bool_(True)}, "storage_options['max_concurrency'] must be a positive int, got "),
        ({"timeout": 0}, "storage_options['timeout'] must be a positive number of seconds, got 0 (int)"),
        ({"deadline": "60s"}, "storage_options['deadline'] must be a positive number of seconds, got '60s' (str)"),
        (
            {"connect_timeout": True},
            "storage_options['connect_timeout'] must be a positive number of seconds, got True",
        ),
        ({"deadline": float("inf")}, "storage_options['deadline'] must be a positive number of seconds, got inf"),
        ({"cache_dir": "TMP", "cache_size": "2 parsecs"}, "storage_options['cache_size'] must be an int of bytes"),
        ({"cache_dir": "TMP", "cache_chunk_bytes": False}, "storage_options['cache_chunk_bytes'] must be an int"),
    ],
)
def test_a_bad_storage_option_names_itself_its_value_and_what_was_expected(
    http: str, tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    options = {k: str(tmp_path / "cache") if v == "TMP" else v for k, v in options.items()}
    with pytest.raises(ConfigError, match=re.escape(message)):
        npyfeed.open(http, storage_options=options)


SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"secret_access_key": [SECRET]},
            "storage_options['secret_access_key'] must be a string (or True/False for a ",
        ),
        ({"aws_session_token": {"t": SECRET}}, "storage_options['aws_session_token'] must be a string"),
        ({"proxy_url": f"http://me:{SECRET}@127.0.0.1:1"}, "pass it as storage_options={'client_options': {'proxy_"),
        ({"client_options": [SECRET]}, "storage_options['client_options'] must be a dict, got a list"),
        ({"retry_config": SECRET}, "storage_options['retry_config'] must be a dict, got a str"),
        ({"retry_config": {"backoff": (SECRET,)}}, "storage_options['retry_config']['backoff'] must be a dict, got"),
    ],
)
def test_a_bad_storage_option_never_shows_a_secret(options: dict[str, Any], message: str) -> None:
    with environment({"AWS_REGION": "us-east-1"}), pytest.raises(ConfigError, match=re.escape(message)) as caught:
        npyfeed.open("s3://bucket/x.npy", storage_options=options)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.__cause__) and SECRET not in repr(caught.value.__context__)
