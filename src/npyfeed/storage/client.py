"""One connection pool per store (bucket or server), on one asyncio loop per process: ranged GETs with retries.

Built on `obstore <https://developmentseed.org/obstore>`_ (Rust ``object_store``: S3, GCS, HTTP; credentials and
endpoints from the standard environment, ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``GOOGLE_APPLICATION_
CREDENTIALS``...). Reader threads hand a list of byte ranges to :meth:`StoreClient.fetch`, which runs them
concurrently on the process's loop thread, at most ``max_concurrency`` requests in flight per store: latency is
hidden by requests in flight, not by threads.

Every range GET carries the version pinned at open as a precondition (``If-Match: <ETag>``, else
``If-Unmodified-Since``), so a replaced object is refused by a server that honours it (412); every answer's ETag,
Last-Modified and total size are checked against the pin too (:mod:`npyfeed.storage.versions`: some servers
ignore preconditions), and its body for its exact length. Transient failures (5xx, resets, refused connections,
timeouts, bodies cut short by the network) are retried with jittered backoff (at most 1 s apart) until the
deadline, so an outage shorter than it is survived; a range is written to its own slice of the destination on
every attempt, so a retry can never duplicate or drop a row.

Nothing waits forever on a server: each HTTP request is bounded by obstore's ``connect_timeout`` and ``timeout``,
and a read by ``deadline``, counted from when the read began (a Loader's read of batches: see
:mod:`npyfeed.storage.deadlines`), waiting for a request slot included; past it the caller gets a ``TimeoutError``
naming the URL, the bytes, the attempts and the last failure.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import unquote

from npyfeed.errors import ConfigError, ObjectChangedError
from npyfeed.storage.concurrency import Loop, Running, Slots
from npyfeed.storage.deadlines import Stop, current_stop, ends_at
from npyfeed.storage.request_stats import RequestStats
from npyfeed.storage.store_errors import Transient, final_error, first_line, redacted_cause, store_error
from npyfeed.storage.store_options import GCS_KEYS, OWN_KEYS, S3_KEYS, ClientOptions, check_store_options, suggest
from npyfeed.storage.urls import ObjectUrl, redact
from npyfeed.storage.versions import ObjectVersion

__all__ = ["ClientOptions", "RequestStats", "StoreClient", "import_obstore"]

T = TypeVar("T")


def import_obstore() -> Any:
    try:
        import obstore
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading s3://, gs:// or https:// URLs needs obstore: the npyfeed[remote] extra "
            "(pip install '.[remote]' in a checkout of npyfeed)"
        ) from e
    return obstore


class StoreClient:
    """Requests to one store: a bucket (``s3://b``, ``gs://b``) or a server (``https://host``)."""

    def __init__(self, url: ObjectUrl, storage_options: Mapping[str, Any] | None = None) -> None:
        obstore = import_obstore()
        from obstore.store import from_url

        options = dict(storage_options or {})
        own = {k: options.pop(k) for k in OWN_KEYS if k in options}
        shown = redact(url.store_url)
        check_store_options(
            url.scheme, shown, options, own.get("client_options") or {}, own.get("retry_config"), OWN_KEYS
        )
        client_options = dict(own.pop("client_options", None) or {})
        retry_config = own.pop("retry_config", None)
        self.options = ClientOptions(**own)
        self.url = url
        self.stats = RequestStats()
        endpoint = str(options.get("endpoint") or options.get("aws_endpoint") or os.environ.get("AWS_ENDPOINT_URL", ""))
        if url.scheme == "http" or (url.scheme == "s3" and endpoint.startswith("http://")):
            client_options.setdefault("allow_http", True)  # an http:// endpoint is asked for by name
        emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
        if url.scheme == "gs" and emulator:
            # Google's clients' convention: the emulator's address ("host:port" or a URL), and no credentials.
            base = emulator if "://" in emulator else f"http://{emulator}"
            options.setdefault("base_url", base.rstrip("/"))
            options.setdefault("skip_signature", True)
            if base.startswith("http://"):
                client_options.setdefault("allow_http", True)
        root = client_options.get("root_certificate")
        if isinstance(root, os.PathLike) or (isinstance(root, str) and "-----BEGIN" not in root):
            # A path rather than PEM text (obstore takes the text): read the file.
            setting = "storage_options['client_options']['root_certificate']"
            client_options["root_certificate"] = _read_pem(root, setting)
        ca_bundle = os.environ.get("AWS_CA_BUNDLE", "")
        if url.scheme == "s3" and ca_bundle and "root_certificate" not in client_options:
            # The AWS SDKs' variable: a PEM file of CAs to trust for S3 (added to the system's roots here).
            client_options["root_certificate"] = _read_pem(ca_bundle, "AWS_CA_BUNDLE")
        client_options.setdefault("timeout", timedelta(seconds=self.options.timeout))
        client_options.setdefault("connect_timeout", timedelta(seconds=self.options.connect_timeout))
        if retry_config is None:
            # obstore retries connection-level failures itself; a body cut mid-transfer comes back to us.
            retry_config = {
                "max_retries": 3,
                "backoff": {"init_backoff": timedelta(milliseconds=50), "max_backoff": timedelta(seconds=2)},
                "retry_timeout": timedelta(seconds=self.options.deadline),
            }
        self._obstore = obstore
        try:
            make_store: Any = from_url  # its overloads are per store kind; options are checked by obstore itself
            self.store = make_store(url.store_url, client_options=client_options, retry_config=retry_config, **options)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # obstore's PanicException is a BaseException
            hint = ""
            if isinstance(e, obstore.exceptions.UnknownConfigurationKeyError):
                known = {"s3": S3_KEYS, "gs": GCS_KEYS}.get(url.scheme, frozenset())
                hint = "".join(suggest(str(k), known | set(OWN_KEYS)) for k in options if k not in known)
            raise ConfigError(f"{shown}: cannot configure the store: {first_line(e)}{hint}") from redacted_cause(e)
        self._semaphore: Slots | None = None

    # -- running on the loop ------------------------------------------------------------------------------------
    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run the coroutine ``make()`` on the loop thread and wait for it (from any other thread); the coroutine
        bounds its own time (every request in it has a deadline)."""

        async def wrapped() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(wrapped(), Loop.get()).result()

    def submit(self, make: Callable[[], Awaitable[T]]) -> Running[T]:
        """Start the coroutine ``make()`` on the loop thread without waiting for it (read-ahead; see
        :class:`~npyfeed.storage.concurrency.Running`); when called inside a read with a
        :class:`~npyfeed.storage.deadlines.Stop`, setting it cancels the coroutine."""
        return self._start(make)

    def _start(self, make: Callable[[], Awaitable[T]]) -> Running[T]:
        async def wrapped() -> T:
            return await make()

        running = Running(wrapped)
        stop = current_stop()
        if stop is not None:
            handle = stop.on_set(running.cancel)
            running.future.add_done_callback(lambda _: stop.discard(handle))
        return running

    async def _bounded(self, awaitable: Awaitable[T], name: str, what: str) -> T:
        """``await awaitable`` within ``deadline`` seconds, else a ``TimeoutError`` naming ``name``."""
        limit = asyncio.timeout(self.options.deadline)
        try:
            async with limit:
                return await awaitable
        except TimeoutError:
            if not limit.expired():
                raise
            raise self._timeout(name, what) from None

    async def _retrying(
        self,
        attempt: Callable[[], Awaitable[T]],
        name: str,
        what: str,
        end: float,
        *,
        changed: bool = True,
        background: bool = False,
        stop: Stop | None = None,
    ) -> T:
        """``await attempt()`` until it succeeds, retrying transient failures with jittered backoff until the
        monotonic time ``end``; then a ``TimeoutError`` naming ``name``, the attempts and the last failure.
        ``changed``: a missing object was there when opened (it was deleted: ``ObjectChangedError``).

        The request slot is held through retries and backoff (a struggling server gets no more requests meanwhile);
        waiting for a slot counts against ``end`` (the caller is waiting), and reads someone waits for go before
        read-ahead (``background``).
        """
        attempts, last = 0, None
        delay = 0.05
        limit = asyncio.timeout_at(end)
        try:
            async with limit, self._slots().hold(background, end):
                while True:
                    if stop is not None and stop.is_set():
                        # Handed a slot before its cancellation arrived: the consumer left, send nothing.
                        raise asyncio.CancelledError
                    attempts += 1
                    try:
                        return await attempt()
                    except ObjectChangedError:
                        raise
                    except Exception as e:
                        error = store_error(self._obstore.exceptions, self.url.scheme, e, name, what, changed=changed)
                        if not isinstance(error, Transient):
                            raise error from redacted_cause(e)
                        last = error
                    self.stats.retries += 1
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 1.0)
        except TimeoutError:
            if not limit.expired():
                raise
            raise self._timeout(name, what, attempts, last) from None

    def timeout_error(self, key: str, what: str) -> TimeoutError:
        """The ``TimeoutError`` for ``what`` on ``key`` not done by its deadline (for callers that wait on reads
        started earlier, e.g. read-ahead)."""
        return self._timeout(redact(self.url.with_key(key)), what, attempts=-1)

    def _timeout(self, name: str, what: str, attempts: int = 0, last: BaseException | None = None) -> TimeoutError:
        if attempts < 0:
            cause = "still retrying the request that reads them ahead"
        elif attempts:
            cause = f"{attempts} attempt{'s' if attempts > 1 else ''}, last: {last or 'no answer from the server'}"
        else:
            cause = f"waiting for one of the {self.options.max_concurrency} request slots, all busy with this store"
        return TimeoutError(
            errno.ETIMEDOUT,
            f"{name}: {what}: no complete answer within the {self.options.deadline:g} s deadline ({cause}; "
            "storage_options 'timeout' and 'deadline' set the limits)",
        )

    def _slots(self) -> Slots:
        if self._semaphore is None:  # created on the loop thread, the only one that touches it
            self._semaphore = Slots(self.options.max_concurrency)
        return self._semaphore

    def path(self, key: str) -> str:
        """The store path of ``key``: an HTTP URL's path is percent-encoded, and obstore encodes it again."""
        return unquote(key) if self.url.scheme in ("http", "https") else key

    # -- metadata -----------------------------------------------------------------------------------------------
    def head(self, key: str) -> dict[str, Any]:
        """Size, ETag and modification time of ``key``; ``FileNotFoundError`` naming the URL if it is missing."""
        name = redact(self.url.with_key(key))
        end = ends_at(self.options.deadline)

        async def go() -> Any:
            return await self._retrying(
                lambda: self._obstore.head_async(self.store, self.path(key)),
                name,
                "reading its metadata",
                end,
                changed=False,
            )

        return dict(self.run(go))  # failures come mapped to our errors by _retrying

    def list(self, prefix: str) -> list[dict[str, Any]]:
        """Every object under the directory ``prefix`` (recursively), as obstore's metadata dicts."""
        name = redact(f"{self.url.store_url}/{prefix}")

        async def go() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            pages = aiter(self._obstore.list(self.store, prefix or None, chunk_size=1000))
            while True:
                try:  # each page within the deadline: a long listing is many pages
                    chunk = await self._bounded(anext(pages), name, f"listing (after {len(found)} objects)")
                except StopAsyncIteration:
                    return found
                found.extend(dict(m) for m in chunk)

        try:
            return self.run(go)
        except Exception as e:
            raise final_error(
                self._obstore.exceptions, self.url.scheme, e, name, "cannot list the objects"
            ) from redacted_cause(e)

    # -- data ---------------------------------------------------------------------------------------------------
    def fetch(
        self, key: str, version: ObjectVersion, ranges: Sequence[tuple[int, int]], sink: Callable[..., None]
    ) -> None:
        """Fetch the byte ranges ``[start, end)`` of ``key`` concurrently; ``sink(i, data)`` gets range ``i``'s
        bytes (an exact-length buffer) on the loop thread, as each arrives, once the answer proved to be of
        ``version``. Raises the first failure; ends by the caller's deadline
        (:func:`~npyfeed.storage.deadlines.ends_at`), or with ``concurrent.futures.CancelledError`` when the read's
        :class:`~npyfeed.storage.deadlines.Stop` is set."""
        if not ranges:
            return
        end, stop = ends_at(self.options.deadline), current_stop()
        # Cancelled when the read's consumer leaves (its Stop is set): the wait ends once no sink can run any more.
        self._start(lambda: self.fetch_async(key, version, ranges, sink, end, stop=stop)).future.result()

    async def fetch_async(
        self,
        key: str,
        version: ObjectVersion,
        ranges: Sequence[tuple[int, int]],
        sink: Callable[..., None],
        end: float,
        *,
        background: bool = False,
        stop: Stop | None = None,
    ) -> None:
        """:meth:`fetch` on the loop: every range done by the monotonic time ``end``; ``background`` for
        read-ahead (requests someone waits for get free slots first); nothing more is sent once ``stop`` is set."""
        # Once per call, not per range: thousands of small ranges are read per second in a global shuffle.
        name, path, preconditions = redact(self.url.with_key(key)), self.path(key), version.preconditions()
        tasks = [
            asyncio.ensure_future(self._get(name, path, preconditions, version, i, a, b, sink, end, background, stop))
            for i, (a, b) in enumerate(ranges)
        ]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _get(
        self,
        name: str,
        path: str,
        preconditions: dict[str, Any],
        version: ObjectVersion,
        i: int,
        start: int,
        end: int,
        sink: Callable[..., None],
        ends: float,
        background: bool,
        stop: Stop | None,
    ) -> None:
        options: dict[str, Any] = {"range": (start, end), **preconditions}

        async def attempt() -> None:
            began = time.perf_counter()
            self.stats.began()
            try:
                result = await self._obstore.get_async(self.store, path, options=options)
                # Before a byte is used: a server that ignored the precondition still says what it sent.
                version.check(name, result.meta)
                data = await result.bytes_async()
            finally:
                self.stats.ended()
            if len(data) != end - start:
                # A short body of the same version: the object is shorter than it said.
                raise ObjectChangedError(
                    f"{name}: the object ended early: asked for bytes [{start}, {end}), got {len(data)} bytes "
                    "(truncated or replaced since it was opened)"
                )
            self.stats.record(len(data), time.perf_counter() - began)
            sink(i, data)

        what = f"reading bytes [{start}, {end})"
        await self._retrying(attempt, name, what, ends, background=background, stop=stop)


def _read_pem(path: str | os.PathLike[str], setting: str) -> bytes:
    """The CA certificates in the PEM file ``path`` named by ``setting``; ``ConfigError`` if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(
            f"{setting}={os.fspath(path)}: cannot read the CA certificate file ({e.strerror}); expected a PEM file "
            "or PEM text"
        ) from e
