"""``cargohold serve --workers N``: real worker processes share the port, drain together, run background jobs
once, and a worker that cannot run stops the server; what two workers share goes through the database.

The cross-worker request tests use two applications on one data directory (each with its own caches and
upload trackers, as two workers have): with SO_REUSEPORT the kernel, not the test, picks the worker of a
connection, so a real pair could not be told which worker handles which request.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from cargohold.server.auth.policy import CACHE_SECONDS
from control_helpers import api, http, new_project
from protocol_helpers import get_manifest, new_repo, push_blob, push_image, random_blob
from servers import InProcessServer, ServerProcess, new_admin_token, running, two_apps_on_one_data_dir


def _workers_of(server: ServerProcess) -> list[psutil.Process]:
    assert server.process is not None
    return psutil.Process(server.process.pid).children()


def _wait_for(condition: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_workers_share_the_port_reload_on_sighup_and_all_drain_on_sigterm(tmp_path: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", extra_args=["--workers", "2"])
    with running(server):
        workers = _workers_of(server)
        assert len(workers) == 2
        repo = new_repo("workers")
        with server.client() as client:
            pushed = push_image(client, repo, "v1")
        # New connections, spread by the kernel: every one is answered, by both workers between them.
        for _ in range(40):
            response = httpx.get(
                f"{server.url}/v2/{repo}/manifests/v1",
                auth=("x-token", server.admin_token),
                headers={"Accept": pushed.media_type},
            )
            assert response.status_code == 200 and response.headers["Docker-Content-Digest"] == pushed.digest
        access = [line for line in server.log().splitlines() if f"/v2/{repo}/manifests/v1" in line]
        assert {re.search(r"worker=(\d)", line).group(1) for line in access} == {"0", "1"}  # type: ignore[union-attr]

        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)  # systemctl reload: every worker reloads (here: nothing to)
        _wait_for(lambda: server.log().count("SIGHUP: nothing to reload") == 2, "SIGHUP in both workers")
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        log = server.log()
        assert log.count("SIGTERM received: draining (at most") == 2, log
        assert "stopped (2 workers)" in log
        assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers)


def test_background_jobs_run_in_one_worker_only(tmp_path: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", extra_args=["--workers", "2", "--gc-interval", "0.1s"])
    with running(server):
        _wait_for(lambda: server.log().count("garbage collection finished") >= 4, "four garbage collections")
        passes = [line for line in server.log().splitlines() if "garbage collection finished" in line]
        assert all(line.endswith("worker=0") for line in passes), passes


def test_a_worker_that_dies_at_once_stops_the_server_with_an_error(tmp_path: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", extra_args=["--workers", "2"])
    with running(server):
        workers = _workers_of(server)
        os.kill(workers[-1].pid, signal.SIGKILL)
        assert server.process is not None
        assert server.process.wait(timeout=30) == 1
        assert "stopping the server" in server.log()
        _wait_for(lambda: not workers[0].is_running() or workers[0].status() == psutil.STATUS_ZOMBIE, "worker 0")


SUPERVISOR_SCRIPT = """
import sys
from pathlib import Path
from cargohold.config import ServerSettings
from cargohold.edge.logs import configure_logging
from cargohold.server.workers import Supervisor

configure_logging("info")
settings = ServerSettings(host="127.0.0.1", port=int(sys.argv[1]), data_dir=Path(sys.argv[2]), admin_token=sys.argv[3])
Supervisor(settings, 2, min_lifetime=0.5).run()
"""


def test_a_worker_that_dies_later_is_restarted(tmp_path: Path) -> None:
    """The real supervisor with a shorter "dies at once" limit than serve's 10 s, so the test need not wait."""
    from processes import ManagedProcess, free_port

    class Supervised(ManagedProcess):
        name = "supervisor"
        process = None
        log_path = None

    port, token = free_port(), new_admin_token()
    server = Supervised()
    server.launch(
        [sys.executable, "-c", SUPERVISOR_SCRIPT, str(port), str(tmp_path / "data"), token],
        log_path=tmp_path / "supervisor.log",
        health_url=f"http://127.0.0.1:{port}/healthz",
    )
    try:
        assert server.process is not None
        _wait_for(lambda: len(psutil.Process(server.process.pid).children()) == 2, "two workers")  # type: ignore[union-attr]
        time.sleep(0.6)  # older than min_lifetime
        victim = psutil.Process(server.process.pid).children()[-1]
        victim.kill()
        _wait_for(lambda: "restarting it" in server.log(), "the restart")

        def replaced() -> bool:
            pids = {child.pid for child in psutil.Process(server.process.pid).children()}  # type: ignore[union-attr]
            return len(pids) == 2 and victim.pid not in pids

        _wait_for(replaced, "a new worker")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()


@pytest.fixture(name="pair")
def pair_fixture(tmp_path: Path) -> Iterator[tuple[InProcessServer, InProcessServer]]:
    with two_apps_on_one_data_dir(tmp_path / "data") as pair:
        yield pair


def test_an_upload_may_move_between_workers(pair: tuple[InProcessServer, InProcessServer]) -> None:
    a, b = pair
    repo = new_repo("workers")
    data = random_blob(3 * 1024 * 1024 + 17)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    with a.client() as on_a, b.client() as on_b:
        opened = on_a.post(f"/v2/{repo}/blobs/uploads/")
        assert opened.status_code == 202
        location = opened.headers["Location"]
        first = on_a.patch(location, content=data[:1_000_000], headers={"Content-Type": "application/octet-stream"})
        assert first.status_code == 202, first.text
        # The next chunk on the other worker, which has never seen this session's running hash.
        second = on_b.patch(
            location,
            content=data[1_000_000:2_000_000],
            headers={"Content-Type": "application/octet-stream", "Content-Range": "1000000-1999999"},
        )
        assert second.status_code == 202, second.text
        status = on_a.get(location)
        assert status.headers["Range"] == "0-1999999"
        done = on_a.put(location, params={"digest": digest}, content=data[2_000_000:])
        assert done.status_code == 201, done.text
        fetched = on_b.get(f"/v2/{repo}/blobs/{digest}")
        assert fetched.status_code == 200 and fetched.content == data
        assert push_blob(on_b, repo, b"another") is not None  # and the other worker goes on uploading


def test_a_revoked_credential_is_refused_by_every_worker_within_the_cache_window(
    pair: tuple[InProcessServer, InProcessServer],
) -> None:
    a, b = pair
    project = new_project(a, "revoked")
    with api(a) as admin:
        created = admin.create_token("project", "soon revoked", project_id=project.id)
    repo = f"{project.id}/app"
    with http(a, created.token) as client:
        registry_token = client.get("/token", params={"service": "cargohold", "scope": f"repository:{repo}:pull"})
        assert registry_token.status_code == 200
    with http(a, registry_token.json()["token"], bearer=True) as bearer:
        assert bearer.get(f"/v2/{repo}/tags/list").status_code == 404  # authorised (nothing pushed): now cached
        with api(b) as admin_on_b:
            admin_on_b.revoke_token(created.id)
        # Worker a still has the credential cached for at most CACHE_SECONDS; then it asks the database.
        authenticator = a.state.auth.authenticator  # type: ignore[union-attr]
        real_clock = authenticator.cache_clock
        authenticator.cache_clock = lambda: real_clock() + CACHE_SECONDS
        try:
            refused = bearer.get(f"/v2/{repo}/tags/list")
        finally:
            authenticator.cache_clock = real_clock
        assert refused.status_code == 401 and "revoked" in refused.json()["errors"][0]["message"]


def test_two_workers_write_one_sqlite_database_at_once(pair: tuple[InProcessServer, InProcessServer]) -> None:
    """WAL and the busy timeout: concurrent pushes through both workers all land."""
    from concurrent.futures import ThreadPoolExecutor

    a, b = pair
    repo = new_repo("workers")

    def push(n: int) -> str:
        server = a if n % 2 else b
        with server.client() as client:
            return push_image(client, repo, f"t{n}").digest

    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(push, range(16)))
    with a.client() as client:
        for n, digest in enumerate(digests):
            response = get_manifest(client, repo, f"t{n}")
            assert response.status_code == 200 and response.headers["Docker-Content-Digest"] == digest
