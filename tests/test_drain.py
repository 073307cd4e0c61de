"""Graceful shutdown of a real ``cargohold serve`` (cargohold.server.drain): what SIGTERM does to the
requests in flight, to new connections, to ``/healthz``, to uploads, to garbage collection, and how long it
takes; and the start-up shortcut that skips Alembic on a database that is already up to date.

Only the signalled server needs to be a process: what the next server finds on disk is checked with an
in-process one (``servers.InProcessServer``), and so is an upload cut by its client.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from servers import InProcessServer, Server, ServerProcess, running
from test_lifecycle_support import push_blob, push_image

pytestmark = pytest.mark.slow

MiB = 1 << 20
GARBAGE = 40


def _auth(server: Server) -> dict[str, str]:
    token = base64.b64encode(f"x-token:{server.admin_token}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _connection(server: Server) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _exit_code(server: ServerProcess, timeout: float) -> int:
    assert server.process is not None
    return server.process.wait(timeout=timeout)


def _put_blob(server: Server, repository: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    conn = _connection(server)
    conn.request("POST", f"/v2/{repository}/blobs/uploads/?digest={digest}", body=data, headers=_auth(server))
    response = conn.getresponse()
    assert response.status == 201, response.read()
    conn.close()
    return digest


def _start_upload(server: Server, repository: str) -> str:
    conn = _connection(server)
    conn.request("POST", f"/v2/{repository}/blobs/uploads/", headers={**_auth(server), "Content-Length": "0"})
    response = conn.getresponse()
    response.read()
    assert response.status == 202
    conn.close()
    return response.headers["Location"]


def test_sigterm_finishes_requests_in_flight_refuses_new_ones_and_keeps_cut_uploads_resumable(
    tmp_path: Path,
) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", extra_args=["--shutdown-timeout", "20s"]).start()
    try:
        blob = os.urandom(24 * MiB)
        digest = _put_blob(server, "drain/app", blob)

        # An idle keep-alive connection, as a load balancer's health checker holds one.
        checker = _connection(server)
        checker.request("GET", "/healthz")
        assert checker.getresponse().read() and True

        # A download in flight: the response has started, most of the body is still to come.
        download = _connection(server)
        download.request("GET", f"/v2/drain/app/blobs/{digest}", headers=_auth(server))
        body = download.getresponse()
        first = body.read(MiB)

        # An upload in flight: 3 MiB and a bit of a 10 MiB PATCH sent, then the client waits.
        location = _start_upload(server, "drain/app")
        upload = _connection(server)
        upload.putrequest("PATCH", location)
        for name, value in {**_auth(server), "Content-Length": str(10 * MiB)}.items():
            upload.putheader(name, value)
        upload.endheaders()
        part = blob[: 3 * MiB + 12345]
        upload.send(part)
        upload_id = location.rsplit("/", 1)[1]
        staged = tmp_path / "data" / "uploads" / upload_id
        _wait_until(lambda: staged.stat().st_size >= 2 * MiB, "the first megabytes of the upload to land")

        staged_before = staged.stat().st_size
        signalled = time.monotonic()
        assert server.process is not None
        server.process.terminate()

        # /healthz says "draining" on the connection it already has: the balancer stops routing here.
        _wait_until(lambda: "draining" in server.log(), "the drain to begin")
        checker.request("GET", "/healthz")
        health = checker.getresponse()
        assert (health.status, json.loads(health.read())["status"]) == (503, "draining")
        assert health.headers["Connection"] == "close"
        # New connections are refused.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
        # The download already under way completes, intact.
        rest = body.read()
        assert hashlib.sha256(first + rest).hexdigest() == digest.split(":")[1]
        # The upload was cut at once (it is resumable), not left to hold the shutdown.
        assert _exit_code(server, timeout=15) == 0
        assert time.monotonic() - signalled < 10
        # Nothing written was lost; what had arrived but was not yet written was written at the cut (how
        # much that is depends on scheduling; test_a_cut_upload_keeps_every_byte_that_arrived pins it down).
        kept = staged.stat().st_size
        assert staged_before <= kept <= len(part)
    finally:
        server.stop()

    # The next server continues the upload from the offset the session reports.
    with running(InProcessServer(server.data_dir, admin_token=server.admin_token)) as server:
        conn = _connection(server)
        conn.request("GET", location, headers=_auth(server))
        status = conn.getresponse()
        status.read()
        assert (status.status, status.headers["Range"]) == (204, f"0-{kept - 1}")
        rest_of_blob = blob[kept : 5 * MiB]
        whole = blob[: 5 * MiB]
        finish_digest = "sha256:" + hashlib.sha256(whole).hexdigest()
        headers = {**_auth(server), "Content-Range": f"{kept}-{len(whole) - 1}"}
        conn.request("PATCH", location, body=rest_of_blob, headers=headers)
        patched = conn.getresponse()
        patched.read()
        assert patched.status == 202, patched.status
        conn.request("PUT", f"{location}?digest={finish_digest}", body=b"", headers=_auth(server))
        finished = conn.getresponse()
        assert finished.status == 201, finished.read()


def test_a_cut_upload_keeps_every_byte_that_arrived(tmp_path: Path) -> None:
    """The bytes of a cut-off body that were received but not yet written (less than a write batch) are
    written before the request ends: the drain's cut and a client going away take this path alike, and a
    client that closes its side sends every byte before it (TCP), so the count is exact."""
    with running(InProcessServer(tmp_path / "data")) as server:
        location = _start_upload(server, "drain/cut")
        upload = _connection(server)
        upload.putrequest("PATCH", location)
        for name, value in {**_auth(server), "Content-Length": str(10 * MiB)}.items():
            upload.putheader(name, value)
        upload.endheaders()
        part = os.urandom(3 * MiB + 12345)
        upload.send(part)
        assert upload.sock is not None
        upload.sock.shutdown(socket.SHUT_WR)
        upload.sock.close()
        staged = tmp_path / "data" / "uploads" / location.rsplit("/", 1)[1]
        _wait_until(lambda: "client connection failed during PATCH" in server.log(), "the server to see the cut")
        assert staged.stat().st_size == len(part)
        assert staged.read_bytes() == part


def test_shutdown_deadline_holds_with_a_stalled_client(tmp_path: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", extra_args=["--shutdown-timeout", "2s"]).start()
    try:
        digest = _put_blob(server, "drain/stall", os.urandom(64 * MiB))
        stalled = _connection(server)  # asks for 64 MiB, reads one byte and never more
        stalled.request("GET", f"/v2/drain/stall/blobs/{digest}", headers=_auth(server))
        assert stalled.getresponse().read(1)
        signalled = time.monotonic()
        assert server.process is not None
        server.process.terminate()
        assert _exit_code(server, timeout=10) == 0
        elapsed = time.monotonic() - signalled
        assert 1.0 < elapsed < 3.5, f"exited {elapsed:.1f} s after SIGTERM with a 2 s deadline"
        assert "still running at the deadline; cutting them" in server.log()
    finally:
        server.stop()


def _gc_lease_holder(data_dir: Path) -> str | None:
    with sqlite3.connect(data_dir / "metadata.db", timeout=10) as db:
        row = db.execute("SELECT holder FROM leases WHERE name = 'gc'").fetchone()
    return row[0] if row else None


def test_sigterm_stops_a_gc_pass_between_batches_and_releases_its_lease(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(
        data_dir=data_dir,
        extra_args=["--gc-interval", "0", "--gc-grace", "0s", "--shutdown-timeout", "20s"],
        env={"CARGOHOLD_GC_TEST_DELAY": "1"},  # every content-deletion batch holds its transaction 1 s
    ).start()
    try:
        with server.client() as http:
            kept = push_image(http, "drain/gc", "kept", [b"kept-layer"], "kept")
            assert kept.status_code == 201  # type: ignore[attr-defined]

            for i in range(GARBAGE):  # blobs no manifest references
                push_blob(http, "drain/gc", f"garbage-{i}".encode())
        answer: dict[str, object] = {}

        def collect() -> None:
            with server.client() as http:
                response = http.post("/api/v1/gc", json={}, timeout=60)
                answer.update(status=response.status_code, body=response.json())

        runner = threading.Thread(target=collect)
        runner.start()
        _wait_until(lambda: _gc_lease_holder(data_dir) is not None, "the GC pass to take its lease")
        assert server.process is not None
        server.process.terminate()
        runner.join(timeout=30)
        assert _exit_code(server, timeout=20) == 0
        # The pass in flight answered: it stopped after a whole batch (before its last pass), and said so.
        assert answer["status"] == 200, answer
        report = answer["body"]
        assert isinstance(report, dict)
        assert report["completed"] is False and "shutting down" in str(report["error"])
        assert _gc_lease_holder(data_dir) is None, "the lease is released for the next process"
    finally:
        server.stop()

    with running(InProcessServer(data_dir, admin_token=server.admin_token)) as after, after.client() as http:
        manifest = http.get(
            "/v2/drain/gc/manifests/kept", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
        )
        assert manifest.status_code == 200
        for descriptor in [manifest.json()["config"], *manifest.json()["layers"]]:
            blob = http.get(f"/v2/drain/gc/blobs/{descriptor['digest']}")
            assert blob.status_code == 200
            assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == descriptor["digest"]
        again = http.post("/api/v1/gc", json={}, timeout=60).json()
        assert again["completed"] is True, again


def test_a_restart_on_an_up_to_date_database_does_not_import_alembic(tmp_path: Path) -> None:
    from cargohold.metadata.db import Database, script_heads

    url = f"sqlite:///{tmp_path / 'metadata.db'}"
    Database(url).migrate()
    assert Database(url).at_head()
    probe = (
        "import sys; from cargohold.metadata.db import Database; "
        f"Database({url!r}).migrate(); print('alembic' in sys.modules)"
    )
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "False"
    # A script heads cannot be read from (not plain constants) leaves the decision to Alembic.
    versions = tmp_path / "versions"
    versions.mkdir()
    (versions / "0001_a.py").write_text('revision = "0001"\ndown_revision = None\n')
    (versions / "0002_b.py").write_text('revision = "0002"\ndown_revision = "0001"\n')
    assert script_heads(versions) == {"0002"}
    (versions / "0003_c.py").write_text('revision = compute()\ndown_revision = "0002"\n')
    assert script_heads(versions) is None
