"""Server-side push: the Cargohold server uploads blobs to the destination itself (POST /api/v1/blob-copies).

Real peers: the CNCF reference registry (open and htpasswd) and a second Cargohold server (Bearer tokens)
as destinations. The egress policy is tested both through the API and at the socket level (a name that
resolves to a forbidden address when the connection is made).
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from cargohold.client.control import ControlClient
from cargohold.client.registry import RegistryClient
from cargohold.client.retry import RetryPolicy
from cargohold.client.settings import Connection
from cargohold.images import ImageError, SaveResult, push_image, save_image
from cargohold.images.progress import Progress
from cargohold.oci.digest import Digest
from cargohold.sample import SampleIndex
from cargohold.server.control.egress import EgressDenied, EgressPolicy, EgressTransport, parse_networks
from processes import free_port
from protocol_helpers import push_blob
from refregistry import RefRegistry, refregistry_auth_fixture, refregistry_fixture
from servers import InProcessServer, Server, ServerProcess, running
from test_images_support import multiarch_fixture, skopeo_raw

__all__ = ["multiarch_fixture", "refregistry_auth_fixture", "refregistry_fixture"]

LOOPBACK = {"push_allow_networks": ("127.0.0.0/8",)}


@pytest.fixture
def source(tmp_path: Path) -> Iterator[InProcessServer]:
    """A Cargohold server that may push to loopback registries (the test destinations live there)."""
    with running(InProcessServer(tmp_path / "source", LOOPBACK)) as proc:
        assert isinstance(proc, InProcessServer)
        yield proc


@pytest.fixture
def source_process(tmp_path: Path) -> Iterator[ServerProcess]:
    """``source`` as a process of its own: for tests that change name resolution in the test process, which
    an in-process server would share."""
    with running(ServerProcess(tmp_path / "source", extra_args=["--push-allow-network", "127.0.0.0/8"])) as proc:
        assert isinstance(proc, ServerProcess)
        yield proc


def _connect(server: Server) -> Connection:
    with ControlClient(server.url, server.admin_token) as control:
        project = control.create_project("server-push")
    return Connection(server.url, server.admin_token, "test", str(project.id))


def _saved_build(server: Server, layout_dir: Path) -> tuple[Connection, SaveResult]:
    """A new project on ``server`` with the sample image saved into it."""
    conn = _connect(server)
    return conn, save_image(conn, f"oci:{layout_dir}:v1")


@pytest.fixture
def no_client_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any blob is downloaded by the client: server-side pushes must not need it."""

    def refuse(self: RegistryClient, repository: str, digest: Digest, offset: int) -> Any:
        raise AssertionError(f"the client downloaded blob {digest}; the server should have pushed it")

    monkeypatch.setattr(RegistryClient, "_open_blob_at", refuse)


class _Notes(Progress):
    def __init__(self) -> None:
        self.steps: list[str] = []

    def step(self, message: str) -> None:
        self.steps.append(message)


def test_server_pushes_the_whole_index_and_the_client_downloads_nothing(
    source: InProcessServer,
    multiarch: tuple[Path, SampleIndex],
    refregistry: RefRegistry,
    no_client_downloads: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty-docker-config"))
    layout_dir, sample = multiarch
    conn, saved = _saved_build(source, layout_dir)
    tag = f"{refregistry.host}/team/app:1.0"
    result = push_image(conn, saved.build_id, [tag], transfer="server")
    assert result.digests == {tag: str(sample.index.digest)}
    pushed = result.results[0]
    assert pushed.uploaded > 0 and pushed.server_pushed == pushed.uploaded
    raw, digest = skopeo_raw(f"docker://{tag}")
    assert digest == sample.index.digest
    listed = {m["digest"] for m in json.loads(raw)["manifests"]}
    assert listed == {str(i.manifest.digest) for i in sample.images} | {str(a.digest) for a in sample.attestations}
    for image in sample.images:  # every layer arrived intact (skopeo verifies digests while copying)
        proc = subprocess.run(
            [
                "skopeo",
                "copy",
                "--src-tls-verify=false",
                f"docker://{refregistry.host}/team/app@{image.manifest.digest}",
                f"oci:{tmp_path / ('check-' + image.platform[1])}:x",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
    with source.client() as admin:
        metrics = admin.get("/metrics").text
    uploaded = [
        line for line in metrics.splitlines() if line.startswith('cargohold_server_pushes_total{result="uploaded"}')
    ]
    assert uploaded and float(uploaded[0].split()[-1]) == pushed.uploaded
    pushed_bytes = [line for line in metrics.splitlines() if line.startswith("cargohold_server_push_bytes_total")]
    assert pushed_bytes and float(pushed_bytes[0].split()[-1]) == pushed.uploaded_size


def test_server_push_with_basic_credentials(
    source: InProcessServer,
    multiarch: tuple[Path, SampleIndex],
    refregistry_auth: RefRegistry,
    no_client_downloads: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    layout_dir, sample = multiarch
    conn, saved = _saved_build(source, layout_dir)
    tag = f"{refregistry_auth.host}/secure/app:1"
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    (tmp_path / "docker").mkdir()
    wrong = base64.b64encode(b"ci:wrong-pass").decode()
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {refregistry_auth.host: {"auth": wrong}}}))
    with pytest.raises(ImageError) as caught:
        push_image(conn, saved.build_id, [tag], transfer="server")
    assert "401" in str(caught.value) or "UNAUTHORIZED" in str(caught.value)
    right = base64.b64encode(b"ci:s3cret-pass").decode()
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {refregistry_auth.host: {"auth": right}}}))
    result = push_image(conn, saved.build_id, [tag], transfer="server")
    assert result.results[0].server_pushed == result.results[0].uploaded > 0
    assert skopeo_raw(f"docker://{tag}", creds="ci:s3cret-pass")[1] == sample.index.digest


def test_server_push_to_a_token_registry_hands_over_a_scoped_token_only(
    source: InProcessServer,
    multiarch: tuple[Path, SampleIndex],
    no_client_downloads: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The destination is another Cargohold (Bearer token auth): the server gets a token scoped to the one
    destination repository, never the password the client logged in with."""
    with running(InProcessServer(tmp_path / "destination")) as destination:
        with ControlClient(destination.url, destination.admin_token) as control:
            target_project = str(control.create_project("target").id)
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty-docker-config"))
        monkeypatch.setenv("CARGOHOLD_PUSH_REGISTRY_USERNAME", "x-token")
        monkeypatch.setenv("CARGOHOLD_PUSH_REGISTRY_PASSWORD", destination.admin_token)
        handed: list[str | None] = []
        original = RegistryClient.delegated_authorization

        def spy(self: RegistryClient, repository: str, digest: Digest, **kwargs: Any) -> str | None:
            value = original(self, repository, digest, **kwargs)
            handed.append(value)
            return value

        monkeypatch.setattr(RegistryClient, "delegated_authorization", spy)
        layout_dir, sample = multiarch
        conn, saved = _saved_build(source, layout_dir)
        tag = f"{destination.host}/{target_project}:release"
        result = push_image(conn, saved.build_id, [tag], transfer="server")
        assert result.results[0].server_pushed == result.results[0].uploaded > 0
        assert handed and all(value and value.startswith("Bearer ") for value in handed)
        assert not any(destination.admin_token in (value or "") for value in handed)
        _, digest = skopeo_raw(f"docker://{tag}", creds=f"x-token:{destination.admin_token}")
        assert digest == sample.index.digest


def test_loopback_is_refused_by_default_and_auto_falls_back_to_the_client(
    server: InProcessServer,
    multiarch: tuple[Path, SampleIndex],
    refregistry: RefRegistry,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty-docker-config"))
    layout_dir, sample = multiarch
    conn, saved = _saved_build(server, layout_dir)
    tag = f"{refregistry.host}/team/app:1"
    with pytest.raises(ImageError) as caught:
        push_image(conn, saved.build_id, [tag], transfer="server")
    assert "--push-allow-network" in str(caught.value) and "loopback" in str(caught.value)
    notes = _Notes()
    result = push_image(conn, saved.build_id, [tag], transfer="auto", progress=notes)
    assert result.digests[tag] == str(sample.index.digest)
    assert result.results[0].server_pushed == 0 and result.results[0].uploaded > 0
    assert [n for n in notes.steps if n.startswith("note: blobs stream through this machine")], notes.steps


def test_disabled_server_push_falls_back(
    multiarch: tuple[Path, SampleIndex],
    refregistry: RefRegistry,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty-docker-config"))
    with running(InProcessServer(tmp_path / "disabled", {"server_push": False, **LOOPBACK})) as server:
        layout_dir, sample = multiarch
        conn, saved = _saved_build(server, layout_dir)
        tag = f"{refregistry.host}/team/app:2"
        with pytest.raises(ImageError, match="no-server-push"):
            push_image(conn, saved.build_id, [tag], transfer="server")
        result = push_image(conn, saved.build_id, [tag])
        assert result.digests[tag] == str(sample.index.digest) and result.results[0].server_pushed == 0


def test_unreachable_destination_fails_with_a_sentence(
    source: InProcessServer,
    multiarch: tuple[Path, SampleIndex],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty-docker-config"))
    layout_dir, _ = multiarch
    conn, saved = _saved_build(source, layout_dir)
    conn = dataclasses.replace(conn, retry=RetryPolicy(budget=2))  # the sentence, not a minute of retries
    with pytest.raises(ImageError) as caught:
        push_image(conn, saved.build_id, [f"127.0.0.1:{free_port()}/x/y:1"], transfer="server")
    message = str(caught.value)
    assert "127.0.0.1" in message and "\n" not in message


# -- the API directly --------------------------------------------------------------------------------------


def _body(repository: str, digest: str, url: str, **destination: Any) -> dict[str, Any]:
    return {
        "repository": repository,
        "digest": digest,
        "destination": {"url": url, "repository": "x/y", "authorization": None, **destination},
    }


def test_api_refuses_bad_requests_with_reasons(source: InProcessServer, multiarch: tuple[Path, SampleIndex]) -> None:
    layout_dir, sample = multiarch
    conn, _ = _saved_build(source, layout_dir)
    project = str(conn.project)
    digest = str(sample.images[0].layers[0].digest)
    ok_url = f"http://127.0.0.1:{free_port()}"

    def post(body: object, token: str | None = source.admin_token) -> httpx.Response:
        client = source.client(token) if token else source.anonymous()
        with client:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            return client.post("/api/v1/blob-copies", content=content, headers={"Content-Type": "application/json"})

    def error(response: httpx.Response) -> tuple[int, str, str]:
        item = response.json()["errors"][0]
        return response.status_code, item["code"], item["message"]

    assert post(_body(project, digest, ok_url), token=None).status_code == 401
    assert error(post(b"{not json"))[:2] == (400, "INVALID")
    assert error(post({"repository": project, "digest": digest}))[:2] == (400, "INVALID")
    assert "destination.url" in error(post(_body(project, digest, ok_url + "/v2/")))[2]
    assert "destination.url" in error(post(_body(project, digest, "ftp://127.0.0.1")))[2]
    assert "destination.url" in error(post(_body(project, digest, "http://user:pw@127.0.0.1")))[2]
    assert "authorization" in error(post(_body(project, digest, ok_url, authorization="Bearer a\r\nX-Evil: 1")))[2]
    assert "digest" in error(post(_body(project, "sha256:nothex", ok_url)))[2]
    missing = "sha256:" + "0" * 64
    assert error(post(_body(project, missing, ok_url)))[:2] == (404, "BLOB_UNKNOWN")
    # Loopback is allowed on this server, the cloud metadata address is not.
    status, code, message = error(post(_body(project, digest, "http://169.254.169.254")))
    assert (status, code) == (403, "DESTINATION_NOT_ALLOWED") and "link-local" in message


def test_api_only_copies_blobs_the_caller_may_pull(
    source: InProcessServer, multiarch: tuple[Path, SampleIndex]
) -> None:
    layout_dir, sample = multiarch
    conn, _ = _saved_build(source, layout_dir)
    with ControlClient(source.url, source.admin_token) as control:
        other = str(control.create_project("other").id)
        secret = control.create_token("pull", "other-pull", project_id=other).token
    body = _body(str(conn.project), str(sample.images[0].manifest.digest), f"http://127.0.0.1:{free_port()}")
    with source.client(secret) as client:
        response = client.post("/api/v1/blob-copies", json=body)
    assert response.status_code in (401, 403, 404), response.text
    assert response.json()["errors"][0]["code"] in ("DENIED", "NAME_UNKNOWN", "NOT_FOUND", "UNAUTHORIZED")


# -- the egress policy at the socket --------------------------------------------------------------------------


def test_policy_allows_public_and_listed_networks_only() -> None:
    policy = EgressPolicy(parse_networks(["10.1.0.0/16", "192.0.2.7"]))
    allowed = ["8.8.8.8", "140.82.112.3", "2606:4700::1111", "10.1.2.3", "192.0.2.7"]
    refused = [
        "127.0.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "10.2.0.1",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "fd00::1",
        "fe80::1",
        "224.0.0.1",
        "192.0.2.8",
    ]
    for text in allowed:
        assert policy.allows(ipaddress.ip_address(text)), text
    for text in refused:
        assert not policy.allows(ipaddress.ip_address(text)), text
    with pytest.raises(ValueError, match="not a network"):
        parse_networks(["10.0.0.0/33"])


def test_a_name_resolving_to_a_forbidden_address_is_refused_at_connect_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: whatever a name resolved to before, the connection checks what it resolves to now."""
    real = socket.getaddrinfo

    def rebinding(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "registry.rebind.test":
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with pytest.raises(EgressDenied, match="loopback"):
        EgressPolicy().resolve("registry.rebind.test", 80)
    with httpx.Client(transport=EgressTransport(EgressPolicy())) as client, pytest.raises(httpx.ConnectError) as caught:
        client.get("http://registry.rebind.test:9/v2/")
    assert isinstance(caught.value.__cause__, EgressDenied)
    allowed = EgressPolicy(parse_networks(["127.0.0.0/8"]))
    with httpx.Client(transport=EgressTransport(allowed)) as client, pytest.raises(httpx.ConnectError) as caught:
        client.get(f"http://registry.rebind.test:{free_port()}/v2/")  # allowed, but nothing listens there
    assert not isinstance(caught.value.__cause__, EgressDenied)
    assert isinstance(caught.value.__cause__, httpcore.ConnectError)


class _SlowDestination(BaseHTTPRequestHandler):
    """Accepts an upload session, then reads the PATCH body at ~1 MiB/s and records what arrived."""

    received: list[int]
    closed_at: list[float]

    def do_HEAD(self) -> None:  # the blob is not there yet
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.send_response(202)
        self.send_header("Location", "/v2/x/y/blobs/uploads/session")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PATCH(self) -> None:
        remaining = int(self.headers.get("Content-Length") or 0)
        got = 0
        while remaining > 0:
            chunk = self.rfile.read(min(64 << 10, remaining))
            if not chunk:
                break
            got += len(chunk)
            remaining -= len(chunk)
            self.received.append(got)
            time.sleep(0.05)
        self.closed_at.append(time.monotonic())
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        return None


def test_a_client_that_goes_away_stops_the_server_upload(source: InProcessServer) -> None:
    conn = _connect(source)
    project = str(conn.project)
    big = os.urandom(32 << 20)
    with source.client() as admin:
        digest = push_blob(admin, project, big)
    received: list[int] = []
    closed_at: list[float] = []
    handler = type("Slow", (_SlowDestination,), {"received": received, "closed_at": closed_at})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        body = _body(project, digest, f"http://127.0.0.1:{httpd.server_address[1]}")
        with source.client() as admin, admin.stream("POST", "/api/v1/blob-copies", json=body) as response:
            assert response.status_code == 200
            first = json.loads(next(response.iter_lines()))
            assert "bytes" in first
        left_at = time.monotonic()
        deadline = left_at + 15
        while not closed_at and time.monotonic() < deadline:
            time.sleep(0.1)
        assert closed_at, "the server kept uploading after its client went away"
        assert closed_at[0] - left_at < 10
        assert received[-1] < len(big) // 2, f"{received[-1]} of {len(big)} bytes were sent anyway"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_insecure_registry_pushes_over_plain_http(
    source_process: ServerProcess,
    multiarch: tuple[Path, SampleIndex],
    refregistry: RefRegistry,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A destination by a name that is not loopback: HTTPS unless listed as insecure. The server cannot
    resolve the test-only name, so ``auto`` streams through the client after the server's refusal."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty-docker-config"))
    real = socket.getaddrinfo

    def aliasing(host: str, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == "registry.internal.test" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", aliasing)
    layout_dir, sample = multiarch
    conn, saved = _saved_build(source_process, layout_dir)
    name = f"registry.internal.test:{refregistry.port}"
    with pytest.raises(ImageError) as caught:  # HTTPS to a plain-HTTP registry
        push_image(conn, saved.build_id, [f"{name}/team/app:1"], transfer="client")
    assert f"add --insecure-registry {name}" in str(caught.value)
    monkeypatch.setenv("CARGOHOLD_INSECURE_REGISTRIES", f"other.test,{name}")
    result = push_image(conn, saved.build_id, [f"{name}/team/app:1"])
    assert result.digests[f"{name}/team/app:1"] == str(sample.index.digest)
    assert result.results[0].server_pushed == 0
    assert skopeo_raw(f"docker://{refregistry.host}/team/app:1")[1] == sample.index.digest


def test_tls_mismatches_are_named_and_not_retried() -> None:
    from cargohold.client.retry import is_retryable, tls_problem

    def chained(cause: BaseException) -> httpx.ConnectError:
        try:
            try:
                raise cause
            except BaseException as inner:
                raise httpcore.ConnectError(str(inner)) from inner
        except httpcore.ConnectError as middle:
            try:
                raise httpx.ConnectError(str(middle)) from middle
            except httpx.ConnectError as outer:
                return outer

    untrusted = chained(ssl.SSLCertVerificationError(1, "certificate verify failed"))
    plain = ssl.SSLError(1, "wrong version number")
    plain.reason = "WRONG_VERSION_NUMBER"  # what the ssl module sets for this handshake failure
    refused = chained(ConnectionRefusedError(111, "refused"))
    assert tls_problem(untrusted) == "untrusted" and not is_retryable(untrusted)
    assert tls_problem(chained(plain)) == "plain-http" and not is_retryable(chained(plain))
    assert tls_problem(refused) is None and is_retryable(refused)
