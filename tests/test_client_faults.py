"""Fault injection between the client and the reference registry: dropped connections, 503s and 429s.

A small threaded HTTP proxy on loopback forwards to the registry and misbehaves on cue. Its byte
counters prove that interrupted transfers resume where they stopped instead of starting over.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from cargohold.client.copy import LayoutStore, RegistryRepo, copy_image
from cargohold.client.errors import RegistryError
from cargohold.client.registry import RegistryClient, bytes_source
from cargohold.client.retry import RetryPolicy
from cargohold.oci.digest import Digest
from cargohold.oci.layout import OCILayout
from cargohold.sample import write_sample_index
from refregistry import RefRegistry, refregistry_fixture  # noqa: F401 - fixtures

pytestmark = pytest.mark.tools
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass
class Fault:
    """Fire once on the first request whose method matches and whose path contains ``path``."""

    method: str
    path: str
    status: int | None = None
    """Answer with this status instead of forwarding."""
    headers: dict[str, str] = field(default_factory=dict)
    drop_response_after: int | None = None
    """Forward, but cut the connection after this many response-body bytes."""
    drop_request_after: int | None = None
    """Forward only this many request-body bytes upstream, then cut both connections."""
    fired: bool = False


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    request_bytes: int = 0
    response_bytes: int = 0
    status: int | None = None


class FaultProxy:
    """``ThreadingHTTPServer`` on 127.0.0.1 forwarding to ``upstream`` with scripted faults."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.http = httpx.Client(base_url=upstream, timeout=60)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_any(self) -> None:
                proxy.handle(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.http.close()

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if not fault.fired and fault.method == method and fault.path in path:
                    fault.fired = True
                    return fault
        return None

    @staticmethod
    def _cut(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        handler.wfile.flush()
        # SO_LINGER 0: an abortive close (RST), like a load balancer dropping the flow.
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        handler.connection.close()

    def _body(self, handler: BaseHTTPRequestHandler, seen: Seen, limit: int | None) -> Iterator[bytes]:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(handler.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    handler.rfile.readline()
                    return
                data = handler.rfile.read(size)
                handler.rfile.readline()
                seen.request_bytes += len(data)
                yield data
        remaining = int(handler.headers.get("Content-Length") or 0)
        while remaining:
            want = min(remaining, 1 << 16)
            if limit is not None:
                want = min(want, limit - seen.request_bytes)
                if want <= 0:
                    raise ConnectionAbortedError("fault: request dropped")
            data = handler.rfile.read(want)
            if not data:
                return
            remaining -= len(data)
            seen.request_bytes += len(data)
            yield data

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        method, path = handler.command, handler.path
        seen = Seen(method, path, dict(handler.headers.items()))
        with self.lock:
            self.seen.append(seen)
        fault = self._fault_for(method, path)
        if fault is not None and fault.status is not None:
            for _ in self._body(handler, seen, None):
                pass
            body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}'
            handler.send_response(fault.status)
            for k, v in {**fault.headers, "Content-Length": str(len(body)), "Content-Type": "application/json"}.items():
                handler.send_header(k, v)
            handler.end_headers()
            handler.wfile.write(body)
            seen.status = fault.status
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"}
        headers["Host"] = self.host
        has_body = "Content-Length" in handler.headers or "Transfer-Encoding" in handler.headers
        limit = fault.drop_request_after if fault else None
        content = self._body(handler, seen, limit) if has_body else None
        try:
            request = self.http.build_request(method, path, headers=headers, content=content)
            response = self.http.send(request, stream=True)
        except (httpx.HTTPError, ConnectionAbortedError):
            self._cut(handler)
            return
        try:
            seen.status = response.status_code
            handler.send_response(response.status_code)
            length = response.headers.get("Content-Length")
            buffered = length is None and method != "HEAD"
            body_bytes = response.read() if buffered else b""
            for k, v in response.headers.items():
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    handler.send_header(k, v)
            handler.send_header("Content-Length", length if length is not None else str(len(body_bytes)))
            handler.end_headers()
            if buffered:
                handler.wfile.write(body_bytes)
                seen.response_bytes += len(body_bytes)
            elif method != "HEAD":
                cut_at = fault.drop_response_after if fault else None
                for chunk in response.iter_raw(1 << 16):
                    if cut_at is not None and seen.response_bytes + len(chunk) >= cut_at:
                        handler.wfile.write(chunk[: cut_at - seen.response_bytes])
                        seen.response_bytes = cut_at
                        self._cut(handler)
                        return
                    handler.wfile.write(chunk)
                    seen.response_bytes += len(chunk)
        finally:
            response.close()


@pytest.fixture
def proxy(refregistry: RefRegistry) -> Iterator[FaultProxy]:
    with FaultProxy(refregistry.url) as p:
        yield p


FAST = RetryPolicy(attempts=5, initial=0.01, maximum=0.05)


def test_download_resumes_after_dropped_connection(proxy: FaultProxy) -> None:
    data = os.urandom(8 << 20)
    digest = Digest.of(data)
    with RegistryClient(proxy.host, retry=FAST) as client:
        client.upload_blob("faults/dl", digest, len(data), bytes_source(data))
        proxy.faults.append(Fault("GET", f"/blobs/{digest}", drop_response_after=3 << 20))
        got = bytearray()
        progress: list[int] = []
        assert client.download_blob("faults/dl", digest, got.extend, size=len(data), progress=progress.append) == len(
            data
        )
    assert bytes(got) == data and sum(progress) == len(data)
    gets = [s for s in proxy.seen if s.method == "GET" and f"/blobs/{digest}" in s.path]
    assert len(gets) == 2
    assert gets[0].response_bytes == 3 << 20
    # Bytes in flight when the connection was reset are lost (how many depends on the loopback socket buffers,
    # over 1 MiB on a loaded machine), but the client resumes from what it had: none of it is re-fetched
    # (``got`` above would hold duplicates) and nothing beyond what was sent is assumed.
    resumed_at = int(gets[1].headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= (3 << 20)
    # The proof of resume: only the missing bytes were served the second time.
    assert gets[1].response_bytes == len(data) - resumed_at


def test_upload_resumes_or_restarts_after_dropped_connection(proxy: FaultProxy) -> None:
    data = os.urandom(6 << 20)
    digest = Digest.of(data)
    cut = 2 << 20
    proxy.faults.append(Fault("PATCH", "/blobs/uploads/", drop_request_after=cut))
    progress: list[int] = []
    with RegistryClient(proxy.host, retry=FAST) as client:
        assert (
            client.upload_blob("faults/ul", digest, len(data), bytes_source(data), progress=progress.append)
            == "uploaded"
        )
        assert client.blob_exists("faults/ul", digest) == len(data)
        out = bytearray()
        client.download_blob("faults/ul", digest, out.extend)
    assert bytes(out) == data
    assert sum(progress) == len(data), "progress must end at exactly the blob size despite the rewind"
    patches = [s for s in proxy.seen if s.method == "PATCH"]
    status_checks = [s for s in proxy.seen if s.method == "GET" and "/blobs/uploads/" in s.path]
    assert patches[0].request_bytes <= cut
    assert len(status_checks) == 1, "after the drop the client must ask the session how much it holds"
    resumed = patches[1]
    if "Content-Range" in resumed.headers:
        start = int(resumed.headers["Content-Range"].split("-")[0])
        assert start > 0
        assert resumed.request_bytes == len(data) - start
    else:
        # The 2.8 reference registry forgets a session whose PATCH broke off (status GET -> 404), so the
        # client checks that the blob did not land after all (HEAD), then opens a fresh session and sends
        # everything once more - exactly once.
        assert status_checks[0].status == 404
        assert [s.method for s in proxy.seen[:5]] == ["POST", "PATCH", "GET", "HEAD", "POST"]
        assert resumed.request_bytes == len(data)
        assert len(patches) == 2


def test_503_and_429_are_retried_with_retry_after(proxy: FaultProxy) -> None:
    data = os.urandom(2 << 20)
    digest = Digest.of(data)
    proxy.faults += [
        Fault("POST", "/blobs/uploads/", status=503),
        Fault("PATCH", "/blobs/uploads/", status=429, headers={"Retry-After": "1"}),
        Fault("PUT", "/manifests/", status=502),
        Fault("HEAD", "/blobs/", status=503),
    ]
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=4, initial=0.01, maximum=0.02, sleep=lambda s: (sleeps.append(s), time.sleep(s)))
    with RegistryClient(proxy.host, retry=policy) as client:
        assert client.upload_blob("faults/retry", digest, len(data), bytes_source(data)) == "uploaded"
        assert client.blob_exists("faults/retry", digest) == len(data)
        from test_client_registry import push_image

        push_image(client, "faults/retry", "v1", b"x")
    assert all(f.fired for f in proxy.faults)
    assert 1.0 in sleeps, "Retry-After: 1 must be honoured"


def test_retries_are_bounded(proxy: FaultProxy) -> None:
    proxy.faults += [Fault("GET", "/v2/", status=503) for _ in range(3)]
    with (
        RegistryClient(proxy.host, retry=RetryPolicy(attempts=3, initial=0.001, maximum=0.002)) as client,
        pytest.raises(RegistryError) as info,
    ):
        client.ping()
    assert info.value.status == 503 and "UNAVAILABLE" in info.value.codes
    assert len([s for s in proxy.seen if s.path == "/v2/"]) == 3


def test_pull_to_layout_resumes_a_dropped_layer(proxy: FaultProxy, tmp_path: Path) -> None:
    """`pull --output oci:DIR` path: a layer download cut halfway resumes with Range, lands verified."""
    info = write_sample_index(tmp_path / "src", platforms=[("linux", "amd64")], layers=1, layer_size=4 << 20, ref="v1")
    layer = info.images[0].layers[0]
    with RegistryClient(proxy.host, retry=FAST) as client:
        copy_image(LayoutStore(OCILayout.open(tmp_path / "src")), "v1", RegistryRepo(client, "faults/pull"), ["v1"])
        proxy.faults.append(Fault("GET", f"/blobs/{layer.digest}", drop_response_after=1 << 20))
        out = OCILayout.create(tmp_path / "out")
        copy_image(RegistryRepo(client, "faults/pull"), "v1", LayoutStore(out), ["v1"])
    original = OCILayout.open(tmp_path / "src").blob_path(layer.digest).read_bytes()
    assert out.blob_path(layer.digest).read_bytes() == original
    gets = [s for s in proxy.seen if s.method == "GET" and f"/blobs/{layer.digest}" in s.path]
    assert len(gets) == 2 and "Range" in gets[1].headers
    assert gets[0].response_bytes + gets[1].response_bytes <= layer.size + (1 << 20)
