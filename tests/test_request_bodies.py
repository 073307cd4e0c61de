"""Request bodies are read completely, within their size limit, and within the header/idle/total deadlines.

A raw socket client sends bodies in pieces with pauses between them, as a real network does (a JSON body in
two TCP segments must parse), and stops sending altogether (the server must give up after the idle
deadline, answer 408 and close; a stalled upload keeps what arrived and can be resumed). The server here
runs with deadlines of about a second so the tests stay fast.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from protocol_helpers import new_repo, start_upload, with_params
from servers import InProcessServer, running

IDLE = 1.0
TOTAL = 2.5
HEADER = 1.5
DEADLINES = {
    "body_idle_timeout": timedelta(seconds=IDLE),
    "body_timeout": timedelta(seconds=TOTAL),
    "header_timeout": timedelta(seconds=HEADER),
}
SLACK = 4.0
"""How much later than its deadline the server may act on a loaded machine."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    proc = InProcessServer(data_dir=tmp_path_factory.mktemp("bodies") / "data", settings=DEADLINES)
    with running(proc, check_tracebacks=True):
        yield proc


class RawClient:
    """One HTTP/1.1 connection driven byte by byte."""

    def __init__(self, server: InProcessServer, timeout: float = IDLE + TOTAL + SLACK) -> None:
        self.server = server
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)

    def head(
        self, method: str, path: str, length: int | None, headers: dict[str, str] | None = None, auth: bool = True
    ) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.server.port}"]
        if auth:
            basic = base64.b64encode(f"x-token:{self.server.admin_token}".encode()).decode()
            lines.append(f"Authorization: Basic {basic}")
        if length is not None:
            lines.append(f"Content-Length: {length}")
        lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """Read one response (Content-Length framed, as every response here is)."""
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed before a response: {buffer!r}")
            buffer += chunk
        head, _, body = buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(status_line.split()[1]), headers, body

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def _split_send(server: InProcessServer, method: str, path: str, body: bytes, **head: object) -> tuple[int, bytes]:
    client = RawClient(server)
    try:
        client.head(method, path, len(body), **head)  # type: ignore[arg-type]
        middle = len(body) // 2
        client.send(body[:middle])
        time.sleep(0.3)  # the second TCP segment comes later
        client.send(body[middle:])
        status, _headers, response = client.response()
        return status, response
    finally:
        client.close()


# --- complete bodies ---------------------------------------------------------------------------------------


def test_a_json_body_in_two_segments_is_read_completely(server: InProcessServer) -> None:
    body = json.dumps({"kind": "admin", "name": "split-body"}).encode()
    status, response = _split_send(server, "POST", "/api/v1/tokens", body, headers={"Content-Type": "application/json"})
    assert status == 201, response
    assert json.loads(response)["name"] == "split-body"


def test_the_oidc_exchange_reads_a_split_body_completely(server: InProcessServer) -> None:
    # The token itself does not verify (401); before the fix the half-read body was "malformed" (400).
    body = json.dumps({"token": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"}).encode()
    status, response = _split_send(server, "POST", "/auth/oidc/github-actions", body, auth=False)
    assert status == 401, response
    assert json.loads(response)["ok"] is False


def test_blob_copies_read_a_split_body_completely(server: InProcessServer) -> None:
    body = json.dumps({"repository": "Not A Name", "digest": "sha256:" + "0" * 64}).encode()
    status, response = _split_send(server, "POST", "/api/v1/blob-copies", body)
    assert status == 400, response
    assert "repository must be" in json.loads(response)["errors"][0]["message"]


def test_a_token_form_in_two_segments_is_read_completely(server: InProcessServer) -> None:
    form = f"grant_type=password&username=x-token&password={server.admin_token}&service=cargohold".encode()
    status, response = _split_send(
        server, "POST", "/token", form, auth=False, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 200, response
    assert json.loads(response)["token"]


@pytest.mark.parametrize(
    ("path", "size", "auth"),
    [
        ("/api/v1/tokens", 300 * 1024, True),
        ("/token", 2 * 1024**2, False),
        ("/auth/oidc/github-actions", 70_000, False),
    ],
    ids=["control-api", "token-form", "oidc-exchange"],
)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_oversized_body_is_413_in_the_route_s_error_format(
    server: InProcessServer, path: str, size: int, auth: bool, framing: str
) -> None:
    client = RawClient(server)
    try:
        content_type = "application/x-www-form-urlencoded" if path == "/token" else "application/json"
        if framing == "chunked":
            client.head("POST", path, None, {"Transfer-Encoding": "chunked", "Content-Type": content_type}, auth=auth)
            payload = b"a" * size
            client.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
        else:
            client.head("POST", path, size, {"Content-Type": content_type}, auth=auth)
            client.send(b"a" * min(size, 1024))
        status, headers, body = client.response()
    finally:
        client.close()
    assert status == 413, body[:300]
    assert headers["content-type"].startswith("application/json"), headers
    document = json.loads(body)
    if path == "/auth/oidc/github-actions":
        assert document["ok"] is False and "larger than" in document["error"]
    else:
        assert document["errors"][0]["code"] == "SIZE_INVALID"


# --- deadlines -----------------------------------------------------------------------------------------------


def _stalled(server: InProcessServer, method: str, path: str, declared: int, sent: bytes, **head: object) -> tuple:
    client = RawClient(server)
    started = time.monotonic()
    try:
        client.head(method, path, declared, **head)  # type: ignore[arg-type]
        client.send(sent)
        status, headers, body = client.response()
        elapsed = time.monotonic() - started
        closed = client.closed_by_server()
    finally:
        client.close()
    return status, headers, body, elapsed, closed


def test_an_unauthenticated_token_request_that_stalls_is_cut_off(server: InProcessServer) -> None:
    status, _headers, body, elapsed, closed = _stalled(
        server, "POST", "/token", 1000, b"g", auth=False, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 408, body
    assert IDLE * 0.9 <= elapsed < IDLE + SLACK
    assert json.loads(body)["errors"][0]["code"] == "TIMEOUT"
    assert closed, "the connection stays open after a stalled body"


def test_a_body_that_trickles_is_cut_off_by_the_total_deadline(server: InProcessServer) -> None:
    client = RawClient(server)
    started = time.monotonic()
    try:
        client.head("POST", "/api/v1/tokens", 200, {"Content-Type": "application/json"})
        status = None
        for _ in range(200):  # one byte every 0.3 s: never idle for IDLE, but far slower than TOTAL allows
            try:
                client.send(b" ")
            except (BrokenPipeError, ConnectionResetError):
                break
            client.sock.settimeout(0.3)
            try:
                if client.sock.recv(1, socket.MSG_PEEK):
                    break
            except TimeoutError:
                continue
        client.sock.settimeout(SLACK)
        status, _headers, body = client.response()
    finally:
        client.close()
    elapsed = time.monotonic() - started
    assert status == 408, body
    assert TOTAL * 0.9 <= elapsed < TOTAL + SLACK
    assert "within" in json.loads(body)["errors"][0]["message"]


def test_a_request_head_that_never_completes_is_closed(server: InProcessServer) -> None:
    client = RawClient(server)
    started = time.monotonic()
    try:
        client.send(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        assert client.closed_by_server()
    finally:
        client.close()
    assert HEADER * 0.9 <= time.monotonic() - started < HEADER + SLACK


def test_a_stalled_manifest_put_is_cut_off(server: InProcessServer) -> None:
    status, _headers, body, elapsed, closed = _stalled(
        server,
        "PUT",
        f"/v2/{new_repo()}/manifests/v1",
        5000,
        b'{"schemaVersion": 2,',
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert status == 408, body
    assert json.loads(body)["errors"][0]["code"] == "MANIFEST_INVALID"
    assert elapsed < IDLE + SLACK and closed


@pytest.mark.parametrize("method", ["PATCH", "PUT"])
def test_a_stalled_upload_keeps_its_bytes_and_resumes(server: InProcessServer, method: str) -> None:
    data = os.urandom(300_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    repo = new_repo()
    with server.client() as http:
        location = start_upload(http, repo)
        path = location.raw_path.decode()
        if method == "PUT":
            path = str(with_params(location, digest=digest).raw_path.decode())
        status, headers, body, elapsed, closed = _stalled(
            server, method, path, len(data), data[:100_000], headers={"Content-Type": "application/octet-stream"}
        )
        assert status == 408, body
        assert json.loads(body)["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
        assert headers["range"] == "0-99999" and closed
        assert elapsed < IDLE + SLACK
        # The session has the first 100000 bytes: the client resumes from there.
        state = http.get(location)
        assert state.status_code == 204 and state.headers["range"] == "0-99999"
        rest = http.patch(
            location,
            content=data[100_000:],
            headers={"Content-Type": "application/octet-stream", "Content-Range": f"100000-{len(data) - 1}"},
        )
        assert rest.status_code == 202, rest.text
        done = http.put(with_params(location, digest=digest))
        assert done.status_code == 201, done.text
        assert http.get(f"/v2/{repo}/blobs/{digest}").content == data


def test_a_slow_upload_that_keeps_progressing_is_never_cut_off(server: InProcessServer) -> None:
    pieces = [os.urandom(4096) for _ in range(int(TOTAL / 0.2) + 4)]  # takes well over TOTAL, never IDLE
    data = b"".join(pieces)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    repo = new_repo()
    with server.client() as http:
        path = with_params(start_upload(http, repo), digest=digest).raw_path.decode()
        client = RawClient(server)
        started = time.monotonic()
        try:
            client.head("PUT", path, len(data), {"Content-Type": "application/octet-stream"})
            for piece in pieces:
                client.send(piece)
                time.sleep(0.2)
            status, _headers, body = client.response()
        finally:
            client.close()
        assert time.monotonic() - started > TOTAL
        assert status == 201, body
        assert http.get(f"/v2/{repo}/blobs/{digest}").content == data


def test_serve_help_documents_the_deadlines(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "cargohold", "serve", "--help"], capture_output=True, text=True, check=True
    )
    for flag, env in (
        ("--header-timeout", "CARGOHOLD_HEADER_TIMEOUT"),
        ("--body-idle-timeout", "CARGOHOLD_BODY_IDLE_TIMEOUT"),
        ("--body-timeout", "CARGOHOLD_BODY_TIMEOUT"),
    ):
        assert flag in result.stdout and env in result.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "cargohold", "serve", "--data-dir", str(tmp_path), "--body-idle-timeout", "0s"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "longer than zero" in refused.stderr
