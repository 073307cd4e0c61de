"""Storage faults below the blob store: ENOSPC and EIO mid-write, mid-commit, during GC and while serving.

The server is the real ``cargohold serve`` (HTTP, SQLite, files); ``tests/faulty_serve.py`` swaps in a blob
store that does every operation for real but fails with the errno a test plans, where the kernel would.
After every fault the consistency check runs: every build the registry lists pulls complete, each digest
verified. And each fault is answered once, logged in one line, without a traceback, and leaves no staged
bytes behind.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from cargohold.client.control import ControlClient, ControlError
from cargohold.client.credentials import Credentials
from cargohold.client.errors import RegistryError as ClientRegistryError
from cargohold.client.registry import RegistryClient, bytes_source
from cargohold.client.retry import RetryPolicy
from cargohold.client.settings import Connection
from cargohold.images import save_image
from cargohold.oci.digest import Digest
from cargohold.sample import write_sample_image
from servers import ServerProcess
from space_helpers import LogWindow, assert_every_build_pulls, saved_builds

MiB = 1 << 20
PLAN_ENV = "CARGOHOLD_TEST_FAULT_PLAN"


@dataclass
class FaultyServer(ServerProcess):
    """``cargohold serve`` through tests/faulty_serve.py, with a fault plan file."""

    plan: Path = field(default_factory=lambda: Path("/nonexistent"))

    def start(self, timeout: float = 60.0) -> FaultyServer:
        launcher = Path(__file__).with_name("faulty_serve.py")
        cmd = [
            sys.executable,
            str(launcher),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]
        self.launch(
            cmd,
            log_path=self.data_dir.parent / f"server-{self.port}.log",
            health_url=f"{self.url}/healthz",
            # One process: the fault plan counts the faults it fired in this process's memory.
            env={
                "CARGOHOLD_ADMIN_TOKEN": self.admin_token,
                "CARGOHOLD_WORKERS": "1",
                PLAN_ENV: str(self.plan),
                **self.env,
            },
            timeout=timeout,
        )
        return self

    def inject(self, op: str, code: int, *, after: int = 0, match: str = "", times: int = 1) -> None:
        self.plan.write_text(json.dumps({"op": op, "errno": code, "after": after, "match": match, "times": times}))

    def fired(self) -> int:
        return int(json.loads(self.plan.read_text() or "{}").get("fired", 0))

    def clear(self) -> None:
        self.plan.write_text("{}")


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyServer]:
    root = tmp_path_factory.mktemp("faults")
    plan = root / "plan.json"
    plan.write_text("{}")
    # GC only on demand and without a grace window, so a test decides when blobs go.
    server = FaultyServer(data_dir=root / "data", plan=plan, extra_args=["--gc-interval", "0", "--gc-grace", "0s"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def conn(faulty: FaultyServer, tmp_path_factory: pytest.TempPathFactory) -> Connection:
    """A project with two saved builds, which every consistency check pulls."""
    with ControlClient(faulty.url, faulty.admin_token) as control:
        project = control.create_project("faults")
    connection = Connection(faulty.url, faulty.admin_token, "test", str(project.id))
    images = tmp_path_factory.mktemp("images")
    for seed in (1, 2):
        write_sample_image(images / str(seed), layers=2, layer_size=MiB, seed=seed, ref="v1")
        save_image(connection, f"oci:{images / str(seed)}:v1")
    return connection


@pytest.fixture(autouse=True)
def clean_plan(faulty: FaultyServer) -> Iterator[None]:
    faulty.clear()
    yield
    faulty.clear()


def _client(server: ServerProcess) -> httpx.Client:
    return server.client()


def _staged(server: ServerProcess) -> list[str]:
    return sorted(os.listdir(server.data_dir / "uploads"))


def _blob(size: int, seed: int) -> tuple[bytes, Digest]:
    data = (seed.to_bytes(4, "big") * (size // 4 + 1))[:size]
    data = os.urandom(64) + data[64:]
    return data, Digest.of(data)


def _start(http: httpx.Client, repo: str) -> str:
    response = http.post(f"/v2/{repo}/blobs/uploads/")
    assert response.status_code == 202, response.text
    return response.headers["Location"]


def _error(response: httpx.Response) -> dict[str, object]:
    errors = response.json()["errors"]
    assert len(errors) == 1
    return errors[0]  # type: ignore[no-any-return]


def _check_consistent(conn: Connection, tmp_path: Path, window: LogWindow) -> None:
    assert len(assert_every_build_pulls(conn, tmp_path)) == len(saved_builds(conn)) >= 2
    assert "Traceback" not in window.text()


@pytest.mark.parametrize(("code", "status", "oci_code"), [(errno.ENOSPC, 507, "DENIED"), (errno.EIO, 500, "UNKNOWN")])
def test_fault_mid_write_discards_the_upload(
    faulty: FaultyServer, conn: Connection, tmp_path: Path, code: int, status: int, oci_code: str
) -> None:
    window = LogWindow(faulty)
    repo = str(conn.project)
    data, digest = _blob(6 * MiB, code)
    faulty.inject("write", code, after=3 * MiB)
    with _client(faulty) as http:
        location = _start(http, repo)
        upload_id = location.rsplit("/", 1)[1]
        response = http.patch(location, content=data, headers={"Content-Type": "application/octet-stream"})
        assert response.status_code == status, response.text
        error = _error(response)
        assert error["code"] == oci_code
        if code == errno.ENOSPC:
            assert str(error["message"]).startswith("Cargohold's storage is full")
            assert "No space left on device (ENOSPC)" in str(error["message"])
        else:
            assert "storage I/O error (Input/output error (EIO))" in str(error["message"])
        assert faulty.fired() == 1
        # The session and its 3 MiB of staged bytes are gone at once, not when the upload TTL passes.
        assert upload_id not in _staged(faulty)
        assert http.get(location).status_code == 404
        assert http.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
    lines = window.lines(upload_id)
    assert len(lines) == 1 and ("ENOSPC" in lines[0] or "EIO" in lines[0]), lines
    _check_consistent(conn, tmp_path, window)


def test_a_transient_eio_is_retried_by_the_client(faulty: FaultyServer, conn: Connection, tmp_path: Path) -> None:
    """The client library retries a 500 from a fresh session (the failed one was discarded) and succeeds."""
    window = LogWindow(faulty)
    data, digest = _blob(3 * MiB, 7)
    faulty.inject("write", errno.EIO, after=MiB)
    credentials = Credentials("x-token", faulty.admin_token, source="test")
    with RegistryClient(faulty.url, credentials=credentials, retry=RetryPolicy(sleep=lambda _: None)) as client:
        assert client.upload_blob(str(conn.project), digest, len(data), bytes_source(data)) == "uploaded"
        assert faulty.fired() == 1
        received = bytearray()
        client.download_blob(str(conn.project), digest, received.extend)
    assert bytes(received) == data
    assert _staged(faulty) == []
    assert len(window.lines("EIO")) == 1
    _check_consistent(conn, tmp_path, window)


def test_enospc_is_not_retried_and_says_what_an_admin_can_do(faulty: FaultyServer, conn: Connection) -> None:
    data, digest = _blob(3 * MiB, 8)
    faulty.inject("write", errno.ENOSPC, after=MiB, times=5)
    credentials = Credentials("x-token", faulty.admin_token, source="test")
    with (
        RegistryClient(faulty.url, credentials=credentials, retry=RetryPolicy(sleep=lambda _: None)) as client,
        pytest.raises(ClientRegistryError) as raised,
    ):
        client.upload_blob(str(conn.project), digest, len(data), bytes_source(data))
    assert faulty.fired() == 1, "a full disk must not be retried"
    assert raised.value.status == 507 and raised.value.storage_full
    message = str(raised.value)
    assert "Cargohold's storage is full" in message and "cargohold gc" in message and "cargohold usage" in message


@pytest.mark.parametrize(
    ("op", "code", "status"),
    [
        ("persist", errno.EIO, 500),
        ("persist", errno.ENOSPC, 507),
        ("commit", errno.ENOSPC, 507),
        ("commit", errno.EIO, 500),
        ("commit-after", errno.EIO, 500),
    ],
)
def test_fault_mid_commit_leaves_nothing_half_done(
    faulty: FaultyServer, conn: Connection, tmp_path: Path, op: str, code: int, status: int
) -> None:
    window = LogWindow(faulty)
    repo = str(conn.project)
    data, digest = _blob(2 * MiB, code * 10 + len(op))
    faulty.inject(op, code, match="" if op == "persist" else digest.hex)
    with _client(faulty) as http:
        location = _start(http, repo)
        assert http.patch(location, content=data).status_code == 202
        response = http.put(location, params={"digest": str(digest)})
        assert response.status_code == status, response.text
        assert faulty.fired() == 1
        assert _staged(faulty) == []
        # Nothing is linked: the rows were rolled back together with (or before) the rename.
        assert http.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
        if op == "commit-after":
            # The renamed file is an orphan now; garbage collection removes it (grace is 0 here).
            assert (faulty.data_dir / "blobs" / "sha256" / digest.hex[:2] / digest.hex).exists()
            assert http.post("/api/v1/gc", json={}).json()["orphan_files"] >= 1
            assert not (faulty.data_dir / "blobs" / "sha256" / digest.hex[:2] / digest.hex).exists()
        # Uploading again works and reads back exactly.
        location = _start(http, repo)
        assert http.put(location, params={"digest": str(digest)}, content=data).status_code == 201
        assert http.get(f"/v2/{repo}/blobs/{digest}").content == data
    assert len(window.lines("failed", "EIO" if code == errno.EIO else "ENOSPC")) == 1
    _check_consistent(conn, tmp_path, window)


@pytest.mark.parametrize(("code", "status"), [(errno.EIO, 500), (errno.ENOSPC, 507)])
def test_fault_during_gc_loses_nothing_referenced(
    faulty: FaultyServer, conn: Connection, tmp_path: Path, code: int, status: int
) -> None:
    """A delete failing inside GC rolls its batch back; the next GC finishes; saved builds stay complete.

    (Copy-on-write filesystems such as btrfs and ZFS can refuse an unlink with ENOSPC when full.)
    """
    window = LogWindow(faulty)
    images = tmp_path / "doomed"
    write_sample_image(images, layers=2, layer_size=MiB // 2, seed=100 + code, ref="v1")
    doomed = save_image(conn, f"oci:{images}:v1")
    with _client(faulty) as http:
        assert http.delete(f"/api/v1/builds/{doomed.build_id}").status_code == 200
        faulty.inject("delete", code)
        response = http.post("/api/v1/gc", json={})
        assert response.status_code == status, response.text
        assert faulty.fired() == 1
        assert "POST /api/v1/gc" in str(_error(response)["message"])
        report = http.post("/api/v1/gc", json={}).json()
        assert report["completed"] and report["blobs_deleted"] >= 1
    assert len(window.lines("POST /api/v1/gc failed")) == 1
    _check_consistent(conn, tmp_path, window)


def test_eio_reading_a_blob_is_answered_and_logged_with_its_digest(
    faulty: FaultyServer, conn: Connection, tmp_path: Path
) -> None:
    window = LogWindow(faulty)
    repo = str(conn.project)
    data, digest = _blob(2 * MiB, 99)
    with _client(faulty) as http:
        location = _start(http, repo)
        assert http.put(location, params={"digest": str(digest)}, content=data).status_code == 201

        faulty.inject("locate", errno.EIO, match=digest.hex)
        response = http.get(f"/v2/{repo}/blobs/{digest}")
        assert response.status_code == 500
        assert _error(response)["code"] == "UNKNOWN" and str(digest) in str(_error(response)["message"])

        # Half-way through sendfile: the status line is out, so the connection is cut short; the client
        # sees a short body, never a complete-looking wrong one.
        faulty.inject("sendfile", errno.EIO, match=digest.hex)
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(f"/v2/{repo}/blobs/{digest}")
        assert faulty.fired() == 1
    with _client(faulty) as http:  # the process and other requests are fine
        assert http.get(f"/v2/{repo}/blobs/{digest}").content == data
    assert len(window.lines(str(digest), "EIO")) == 2
    _check_consistent(conn, tmp_path, window)


def test_a_vanished_staging_file_ends_the_session(faulty: FaultyServer, conn: Connection, tmp_path: Path) -> None:
    window = LogWindow(faulty)
    repo = str(conn.project)
    with _client(faulty) as http:
        location = _start(http, repo)
        upload_id = location.rsplit("/", 1)[1]
        assert http.patch(location, content=b"x" * 1000).status_code == 202
        (faulty.data_dir / "uploads" / upload_id).unlink()  # someone cleaning up by hand
        response = http.patch(location, content=b"y" * 1000, headers={"Content-Range": "1000-1999"})
        assert response.status_code == 404 and _error(response)["code"] == "BLOB_UPLOAD_UNKNOWN"
        assert http.get(location).status_code == 404
    assert len(window.lines(upload_id, "vanished")) == 1
    _check_consistent(conn, tmp_path, window)


def test_eio_reading_a_config_while_saving(faulty: FaultyServer, conn: Connection, tmp_path: Path) -> None:
    """The server reads the image config to record the build's platforms. A transient I/O error there is
    answered 500 and retried by the client; a lasting one fails the save with the storage error."""
    window = LogWindow(faulty)
    layout = tmp_path / "image"
    image = write_sample_image(layout, layers=1, layer_size=64 * 1024, seed=55, ref="v1")
    faulty.inject("read", errno.EIO, match=image.config.digest.hex)
    saved = save_image(conn, f"oci:{layout}:v1")
    assert faulty.fired() == 1 and saved.platforms == ["linux/amd64"]

    # A lasting one: the same image tagged for a new build, saved with a client that does not wait to retry.
    repo = str(conn.project)
    with ControlClient(faulty.url, faulty.admin_token, retry=RetryPolicy(sleep=lambda _: None)) as control:
        build = str(control.create_build(repo).build_id)
        with _client(faulty) as http:
            manifest = http.get(f"/v2/{repo}/manifests/{saved.build_id}", headers={"Accept": image.manifest.media_type})
            put = http.put(
                f"/v2/{repo}/manifests/{build}",
                content=manifest.content,
                headers={"Content-Type": image.manifest.media_type},
            )
            assert put.status_code == 201
        faulty.inject("read", errno.EIO, match=image.config.digest.hex, times=100)
        with pytest.raises(ControlError) as raised:
            control.save_build(build)
        assert raised.value.status == 500
        assert "storage I/O error (Input/output error (EIO))" in str(raised.value)
        assert control.get_build(build).status == "pending"
    lines = window.lines("/save failed: storage I/O error", "EIO")
    assert len(lines) == 1 + faulty.fired(), lines  # one line per answered request, no traceback
    _check_consistent(conn, tmp_path, window)
