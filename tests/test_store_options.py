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
