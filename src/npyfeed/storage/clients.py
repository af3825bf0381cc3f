"""The process's object-store clients: one :class:`~npyfeed.storage.client.StoreClient` (one connection pool) per
store, ``storage_options`` and store environment, shared by every object read from it; refused in a process forked
from one that already made requests, where obstore's runtime would hang."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from npyfeed.errors import ConfigError
from npyfeed.storage.client import StoreClient
from npyfeed.storage.urls import ObjectUrl, redact

__all__ = ["get_client"]


_clients: dict[tuple[int, str, str, str], StoreClient] = {}
_clients_lock = threading.Lock()
# Environment variables a store's configuration is read from (endpoint, region, credentials, trusted CAs): a client
# made under other values is another client, or a job that changes AWS_ENDPOINT_URL would keep talking to the old one.
_ENV_PREFIXES = ("AWS_", "GOOGLE_", "STORAGE_EMULATOR_HOST", "SSL_CERT_")


# The process that made the first client, and with it started obstore's runtime (its tokio threads).
_runtime_pid: int | None = None


def get_client(url: ObjectUrl, storage_options: Mapping[str, Any] | None = None) -> StoreClient:
    """The process's client for ``url``'s store with these options and this environment (clients are shared: one
    pool per store).

    Raises ConfigError in a process forked from one that already made requests: obstore's runtime does not
    survive ``fork`` (tokio-rs/tokio#4301; its threads stay in the parent), and any request would wait forever.
    """
    global _runtime_pid
    if _runtime_pid is not None and _runtime_pid != os.getpid():
        raise ConfigError(
            f"{redact(url)}: this process (pid {os.getpid()}) was forked from one that had already made requests to "
            f"object storage (pid {_runtime_pid}); the object-store client (obstore's runtime) does not survive fork, "
            "so a request here would hang. Start workers with 'spawn' or 'forkserver' instead: "
            "torch.utils.data.DataLoader(..., multiprocessing_context='spawn'), multiprocessing.get_context('spawn'); "
            "npyfeed's loaders and arrays pickle and reconnect in the worker"
        )
    env = repr(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)))
    key = (os.getpid(), url.store_url, repr(sorted((storage_options or {}).items())), env)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = StoreClient(url, storage_options)
            _runtime_pid = os.getpid()
        return client
