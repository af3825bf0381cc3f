"""A range-serving HTTP server over a directory, fast enough for multi-GB objects: S3 path-style reads on loopback.

``RangeServer(root)`` answers ``GET``/``HEAD /<bucket>/<key>`` (or any path under ``root``) with a single
``Range``, ``ETag`` and ``If-Match``, sending the body with ``sendfile`` (no copy through Python). So it serves
plain HTTP URLs and, path-style, obstore's S3 reads (``AWS_ENDPOINT_URL`` pointing at it, any credentials: it does
not check signatures). moto's server, by contrast, reads the whole object for every ranged GET (~130 ms per range
of a 64 MiB object), which rules it out for multi-GB benchmarks. Used by ``tests/`` and ``benchmarks.object_store``.

- ``honour_range=False`` answers every GET with the whole file (a server npyfeed must refuse);
- ``etag=False`` / ``last_modified=False`` leave those headers out (servers that send no ETag, like Go's
  ``http.ServeContent``, or no validator at all), and ``If-Match`` is then not honoured; ``partial_status=200``
  answers a range with ``200`` and a correct ``Content-Range`` (rclone's S3 server does);
  ``headers_seen`` keeps the conditional headers of every request;
- ``delay`` (seconds) is added before every answer: a store's per-request latency, without a proxy copying the
  bytes (on loopback a copying proxy would measure its own CPU, not the latency).

As a process (the benchmark runs it apart from the client, so the two do not share a GIL and its CPU time can be
measured)::

    python -m benchmarks.s3_server ROOT [--delay-ms 20]   # prints its URL, serves until stdin closes

which :class:`ServerProcess` starts and stops for the benchmarks; :func:`s3_environment` is what makes a client
read ``s3://BUCKET/KEY`` from it (set in a child's environment, or in this process with :func:`environment`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["RangeServer", "ServerProcess", "environment", "main", "s3_environment"]

ROOT = Path(__file__).resolve().parent.parent


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: without it a small body sent after the headers waits for the client's delayed ACK (40 ms a
    # request on Linux), so every small ranged GET looked like a distant server.
    disable_nagle_algorithm = True
    server: _RangeHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _file(self) -> Path | None:
        path = self.path.split("?", 1)[0]
        target = (self.server.root / path.lstrip("/")).resolve()
        if self.server.root not in target.parents or not target.is_file():
            return None
        return target

    def _send_error(self, status: int, reason: str) -> None:
        body = f"<?xml version='1.0'?><Error><Code>{reason}</Code><Message>{reason}</Message></Error>".encode()
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            with contextlib.suppress(ConnectionError):  # the client may hang up on an error (it has the status)
                self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.server.requests += 1
        if self.server.delay:
            time.sleep(self.server.delay)
        target = self._file()
        if target is None:
            self._send_error(404, "NoSuchKey")
            return
        info = target.stat()
        etag = '"' + hashlib.md5(f"{info.st_ino}-{info.st_size}-{info.st_mtime_ns}".encode()).hexdigest() + '"'
        self.server.headers_seen.append(
            {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("if-") or k.lower() == "range"}
        )
        match = self.headers.get("If-Match")
        if self.server.etag and match is not None and match not in ("*", etag):
            self._send_error(412, "PreconditionFailed")
            return
        start, end = 0, info.st_size
        ranged = self.headers.get("Range")
        if ranged and self.server.honour_range and self.command == "GET":
            spec = ranged.removeprefix("bytes=")
            first, _, last = spec.partition("-")
            if first:
                start, end = int(first), min(info.st_size, int(last) + 1 if last else info.st_size)
            else:
                start, end = max(0, info.st_size - int(last)), info.st_size
            if start >= info.st_size or start >= end:
                self._send_error(416, "InvalidRange")
                return
            self.send_response(self.server.partial_status)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{info.st_size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Content-Type", "application/octet-stream")
        if self.server.etag:
            self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes" if self.server.honour_range else "none")
        if self.server.last_modified:
            self.send_header("Last-Modified", self.date_time_string(int(info.st_mtime)))
        self.end_headers()
        if self.command == "HEAD":
            return
        with target.open("rb") as f, contextlib.suppress(ConnectionError):
            self.wfile.flush()
            self.connection.sendfile(f, start, end - start)  # a client that hangs up early is not an error


class _RangeHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a client opens tens of connections at once
    root: Path
    honour_range: bool
    delay: float
    requests: int
    etag: bool
    last_modified: bool
    partial_status: int
    headers_seen: list[dict[str, str]]


class RangeServer:
    """Serve the files under ``root`` over HTTP on 127.0.0.1 (``url`` is the base), honouring ``Range``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        honour_range: bool = True,
        delay: float = 0.0,
        port: int = 0,
        etag: bool = True,
        last_modified: bool = True,
        partial_status: int = 206,
    ) -> None:
        self._server = _RangeHTTPServer(("127.0.0.1", port), _RangeHandler)
        self._server.root = Path(root).resolve()
        self._server.honour_range = honour_range
        self._server.delay = delay
        self._server.requests = 0
        self._server.etag = etag
        self._server.last_modified = last_modified
        self._server.partial_status = partial_status
        self._server.headers_seen = []
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def headers_seen(self) -> list[dict[str, str]]:
        """``range`` and ``if-*`` headers of every request so far, in order (names in lower case)."""
        return self._server.headers_seen

    @property
    def requests(self) -> int:
        """Requests answered so far (HEADs and errors included)."""
        return self._server.requests

    def start(self) -> RangeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess:
    """``python -m benchmarks.s3_server ROOT`` in its own process, ``delay_ms`` before every answer; ``url`` is
    its base, ``proc`` the process (its CPU time is measured apart from the client's)."""

    def __init__(self, root: str | os.PathLike[str], delay_ms: float = 0.0) -> None:
        cmd = [sys.executable, "-m", "benchmarks.s3_server", str(root), "--delay-ms", str(delay_ms)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the server did not start: {self.url!r}")

    @property
    def env(self) -> dict[str, str]:
        """The environment of a client that reads ``s3://`` from this server."""
        return s3_environment(self.url)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # it serves until its stdin closes
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def s3_environment(url: str) -> dict[str, str]:
    """The standard ``AWS_*`` variables that send a client's ``s3://`` reads to the server at ``url`` (plain HTTP,
    path-style; the server checks no signature, so any credentials do)."""
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "benchmark",
        "AWS_SECRET_ACCESS_KEY": "benchmark",
        "AWS_REGION": "us-east-1",
    }


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block, restoring the old values after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a directory on 127.0.0.1 with HTTP Range (S3 path-style).")
    parser.add_argument("root", type=Path)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="latency added to every request")
    args = parser.parse_args(argv)
    with RangeServer(args.root, delay=args.delay_ms / 1e3) as server:
        print(server.url, flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin (or dies)


if __name__ == "__main__":
    main()
