"""Which ``storage_options`` key goes where, checked before obstore sees it (a misplaced key panicked inside it).

``storage_options`` holds npyfeed's own keys (``deadline``, ``request_bytes``...), the store's configuration
(S3: ``region``, ``endpoint``...; GCS: ``service_account``...; HTTP(S) URLs take none), and two nested mappings:
``client_options`` (HTTP client: ``allow_http``, ``root_certificate``, ``proxy_url``...) and ``retry_config``
(``max_retries``, ``backoff``, ``retry_timeout``). A key in the wrong place is a :class:`ConfigError` naming it and
where it belongs; an unknown one names the closest known spellings. A store option that is not a string (or a
bool) is refused naming its key and type, never its value: it may be a credential.

The names are obstore's (its ``S3Config``, ``GCSConfig``, ``ClientConfig`` and ``RetryConfig``; a test compares them
with the installed obstore's type stubs). npyfeed's own keys are checked by :class:`ClientOptions`, with the
argument rule (:mod:`npyfeed.arguments`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from npyfeed import arguments
from npyfeed.errors import ConfigError

__all__ = [
    "BACKOFF_KEYS",
    "CLIENT_KEYS",
    "GCS_KEYS",
    "OWN_KEYS",
    "RETRY_KEYS",
    "S3_KEYS",
    "ClientOptions",
    "check_store_options",
    "seconds",
    "suggest",
]

S3_KEYS = frozenset(
    {
        "access_key_id",
        "aws_endpoint_url_s3",
        "bucket",
        "checksum_algorithm",
        "conditional_put",
        "container_credentials_relative_uri",
        "container_credentials_full_uri",
        "container_authorization_token_file",
        "copy_if_not_exists",
        "default_region",
        "disable_tagging",
        "disable_bulk_delete",
        "endpoint",
        "imdsv1_fallback",
        "metadata_endpoint",
        "region",
        "request_payer",
        "role_arn",
        "role_session_name",
        "s3_express",
        "secret_access_key",
        "server_side_encryption",
        "session_token",
        "skip_signature",
        "sse_bucket_key_enabled",
        "sse_customer_key_base64",
        "sse_kms_key_id",
        "sts_endpoint",
        "unsigned_payload",
        "virtual_hosted_style_request",
        "web_identity_token_file",
    }
)
GCS_KEYS = frozenset(
    {
        "service_account",
        "service_account_key",
        "base_url",
        "bearer_token",
        "bucket",
        "application_credentials",
        "skip_signature",
    }
)
CLIENT_KEYS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "default_headers",
        "http1_only",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "http2_only",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "root_certificate",
        "randomize_addresses",
        "read_timeout",
        "timeout",
        "user_agent",
    }
)
RETRY_KEYS = frozenset({"max_retries", "backoff", "retry_timeout"})
BACKOFF_KEYS = frozenset({"init_backoff", "max_backoff", "base"})
_STORES = {"s3": ("S3", S3_KEYS, "aws_"), "gs": ("GCS", GCS_KEYS, "google_")}
_ARTICLE = {"S3": "an S3", "GCS": "a GCS", "HTTP": "an HTTP"}


def suggest(key: str, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest spellings of ``key`` among ``known``, or ``""``."""
    close = difflib.get_close_matches(key.lower(), sorted(known), n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _normal(key: str, prefix: str) -> str:
    lower = key.lower()
    return lower[len(prefix) :] if prefix and lower.startswith(prefix) else lower


def check_store_options(
    scheme: str,
    where: str,
    store: Mapping[str, Any],
    client: Any,
    retry: Any,
    own: Iterable[str],
) -> None:
    """Raise :class:`ConfigError` for a key of ``storage_options`` (``store``: what is left after npyfeed's own keys
    ``own``), ``client_options`` or ``retry_config`` that is not where it belongs for a ``scheme`` store."""
    own = frozenset(own)
    kind, store_keys, prefix = _STORES.get(scheme, ("HTTP", frozenset(), ""))
    for key, value in store.items():
        name = _normal(str(key), prefix)
        if name == "retries":
            raise ConfigError(
                f"{where}: storage_options['retries'] is no longer an option: transient failures are retried until "
                "storage_options['deadline'] (seconds) passes"
            )
        if name in CLIENT_KEYS:
            shown = repr(value) if isinstance(value, bool | int | float) else "..."  # a proxy_url may hold a password
            raise ConfigError(
                f"{where}: storage_options[{key!r}] is an HTTP client option: pass it as "
                f"storage_options={{'client_options': {{{name!r}: {shown}}}}}"
            )
        if name in RETRY_KEYS or name in BACKOFF_KEYS:
            place = "{'retry_config': {...}}" if name in RETRY_KEYS else "{'retry_config': {'backoff': {...}}}"
            raise ConfigError(
                f"{where}: storage_options[{key!r}] is a retry setting: pass it in storage_options={place}"
            )
        if scheme not in _STORES:
            raise ConfigError(
                f"{where}: storage_options[{key!r}]: http(s):// URLs take no store options, only npyfeed's own "
                f"({', '.join(sorted(own - {'client_options', 'retry_config'}))}), 'client_options' and "
                f"'retry_config'{suggest(name, own | CLIENT_KEYS)}"
            )
        for other, (other_kind, other_keys, other_prefix) in _STORES.items():
            if other != scheme and _normal(str(key), other_prefix) in other_keys and name not in store_keys:
                raise ConfigError(
                    f"{where}: storage_options[{key!r}] is {_ARTICLE[other_kind]} option, not one of {kind} "
                    f"({scheme}:// URLs){suggest(name, store_keys)}"
                )
        if name in store_keys and not isinstance(value, str | bool):
            # Never the value itself: a store option may be a credential (secret_access_key, bearer_token...).
            raise ConfigError(
                f"{where}: storage_options[{key!r}] must be a string (or True/False for a switch), got a value of "
                f"type {type(value).__name__}"
            )
    if not isinstance(client, Mapping):
        raise ConfigError(f"{where}: storage_options['client_options'] must be a dict, got a {type(client).__name__}")
    for key in client:
        name = str(key).lower()
        if name in CLIENT_KEYS:
            continue
        if name in own:
            raise ConfigError(
                f"{where}: storage_options['client_options'][{key!r}] is npyfeed's own option: pass it as "
                f"storage_options={{{name!r}: ...}}"
            )
        if _normal(name, prefix) in store_keys:
            raise ConfigError(
                f"{where}: storage_options['client_options'][{key!r}] is {_ARTICLE[kind]} store option, not an HTTP "
                f"client one: pass it as storage_options={{{key!r}: ...}}"
            )
        raise ConfigError(
            f"{where}: storage_options['client_options'][{key!r}] is not an HTTP client option"
            f"{suggest(name, CLIENT_KEYS)}; known: {', '.join(sorted(CLIENT_KEYS))}"
        )
    if retry is None:
        return
    if not isinstance(retry, Mapping):
        raise ConfigError(f"{where}: storage_options['retry_config'] must be a dict, got a {type(retry).__name__}")
    for key in retry:
        if key not in RETRY_KEYS:
            raise ConfigError(
                f"{where}: storage_options['retry_config'][{key!r}] is not a retry setting"
                f"{suggest(str(key), RETRY_KEYS | BACKOFF_KEYS)}; known: {', '.join(sorted(RETRY_KEYS))}"
            )
    backoff = retry.get("backoff")
    if backoff is not None:
        if not isinstance(backoff, Mapping):
            raise ConfigError(
                f"{where}: storage_options['retry_config']['backoff'] must be a dict, got a {type(backoff).__name__}"
            )
        for key in backoff:
            if key not in BACKOFF_KEYS:
                raise ConfigError(
                    f"{where}: storage_options['retry_config']['backoff'][{key!r}] is not a backoff setting"
                    f"{suggest(str(key), BACKOFF_KEYS)}; known: {', '.join(sorted(BACKOFF_KEYS))}"
                )


# npyfeed's own keys in `storage_options`; every other key goes to obstore as store configuration.
OWN_KEYS = (
    "max_concurrency",
    "request_bytes",
    "gap_bytes",
    "prefetch_bytes",
    "timeout",
    "connect_timeout",
    "deadline",
    "client_options",
    "retry_config",
)


@dataclass(frozen=True)
class ClientOptions:
    """How npyfeed talks to a store; set any of these through ``storage_options``."""

    max_concurrency: int = 32
    """Range requests in flight per store and process (tens hide a 20 ms latency at hundreds of MB/s)."""
    request_bytes: int = 2 << 20
    """Largest single range request; bounds the memory in flight to about ``max_concurrency x request_bytes``."""
    gap_bytes: int = 256 << 10
    """Rows closer than this share one request (a request costs about as much as this much transfer)."""
    prefetch_bytes: int = 96 << 20
    """Memory for ranges fetched ahead of use (``will_need``: the blocks of the next block-shuffle windows)."""
    timeout: float = 30.0
    """Seconds one HTTP request may take, connecting to last byte (obstore's ``timeout``); then it is retried
    (until ``deadline``)."""
    connect_timeout: float = 5.0
    """Seconds to open a connection (obstore's ``connect_timeout``)."""
    deadline: float = 120.0
    """Seconds a read may take, from when it began (a Loader's read of a batch: from when the consumer asked at the
    latest) to its last byte, waiting for a request slot and every retry included; then a ``TimeoutError`` naming
    the URL. Transient failures are retried until then. Also bounds a HEAD and each listing page."""

    def __post_init__(self) -> None:
        # npyfeed's argument rule (NumPy ints are ints, bools never; sizes in its grammar: "8MiB"), as in Python so
        # on the command line; a frozen dataclass keeps the parsed values through object.__setattr__.
        def key(name: str) -> str:
            return f"storage_options[{name!r}]"

        parsed: dict[str, Any] = {
            "max_concurrency": arguments.positive_int(key("max_concurrency"), self.max_concurrency),
            "request_bytes": arguments.size(key("request_bytes"), self.request_bytes),
            "gap_bytes": arguments.size(key("gap_bytes"), self.gap_bytes, minimum=0),
            "prefetch_bytes": arguments.size(key("prefetch_bytes"), self.prefetch_bytes),
        }
        for name in ("timeout", "connect_timeout", "deadline"):
            parsed[name] = seconds(key(name), getattr(self, name))
        for name, value in parsed.items():
            object.__setattr__(self, name, value)


def seconds(name: str, value: Any) -> float:
    """A positive, finite number of seconds by the argument rule."""
    try:
        return arguments.number(name, value, minimum=0.0, exclusive=True)
    except ConfigError:
        raise ConfigError(f"{name} must be a positive number of seconds, got {arguments.show(value)}") from None
