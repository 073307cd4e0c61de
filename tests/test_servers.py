"""The in-process test server (tests/servers.py) behaves like ``cargohold serve`` where the tests rely on it,
and leaves nothing behind: every other test trusts this."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from servers import InProcessServer, ServerProcess, leaked_threads, open_fds, running

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def _new_threads(before: set[int | None]) -> list[str]:
    """Threads started since ``before`` was taken that are still alive (other modules' shared servers run on)."""
    return sorted(t.name for t in threading.enumerate() if t.ident not in before)


def test_starting_and_stopping_leaks_no_thread_and_no_file_descriptor(tmp_path: Path) -> None:
    threads_before = {thread.ident for thread in threading.enumerate()}
    # A first server warms up what is opened once per process and kept (imports, the CA bundle), so the
    # comparison below counts only what a server should give back.
    with running(InProcessServer(tmp_path / "warm-up")) as warm, warm.client() as http:
        assert http.get("/v2/").status_code == 200
    fds_before = open_fds()
    for round_ in range(3):
        server = InProcessServer(tmp_path / f"data-{round_}")
        with running(server):
            with server.client() as http:  # enough to spin up thread pools, the database and the access log
                created = http.post("/api/v1/projects", json={"name": f"leak {round_}"})
                assert created.status_code == 201, created.text
                assert http.post("/api/v1/gc", json={}).status_code == 200
            assert set(leaked_threads()) & set(_new_threads(threads_before)), "a running server has its threads"
    assert _new_threads(threads_before) == []
    assert open_fds() <= fds_before, f"file descriptors left open: {sorted(open_fds() - fds_before)}"


def test_a_restart_keeps_the_port_the_data_and_the_log(tmp_path: Path) -> None:
    server = InProcessServer(tmp_path / "data")
    with running(server), server.client() as http:
        project = http.post("/api/v1/projects", json={"name": "survives"}).json()["id"]
    port = server.port
    with pytest.raises(httpx.ConnectError):  # stopped means nothing listens any more
        httpx.get(f"{server.url}/healthz", timeout=5)
    with running(server), server.client() as http:
        assert server.port == port
        assert http.get(f"/api/v1/projects/{project}").status_code == 200
    assert server.log().count("created project") == 1
    assert server.log().count("path=/healthz") == 0  # the refused probe never reached a server


def test_the_log_is_the_servers_own_in_its_line_format(tmp_path: Path) -> None:
    """Two servers at once: each log holds its own access lines and nothing of the other's (or of the test's
    own logging), every line in ``cargohold serve``'s format."""
    with running(InProcessServer(tmp_path / "a")) as first, running(InProcessServer(tmp_path / "b")) as second:
        with first.client() as http:
            assert http.get("/v2/first/tags/list").status_code == 404
        with second.client() as http:
            assert http.get("/v2/second/tags/list").status_code == 404
        __import__("logging").getLogger("cargohold.test").warning("logged by the test, not by a server")
    assert "path=/v2/first/tags/list status=404" in first.log()
    assert "/v2/second/" not in first.log()
    assert "path=/v2/second/tags/list status=404" in second.log()
    assert "/v2/first/" not in second.log()
    for server in (first, second):
        assert "logged by the test" not in server.log()
        lines = server.log().splitlines()
        assert lines and all(LOG_LINE.match(line) for line in lines), lines


def test_a_start_up_failure_is_raised_and_leaves_nothing_running(tmp_path: Path) -> None:
    occupied = tmp_path / "data"
    occupied.write_text("a file where the data directory should be")
    broken = InProcessServer(occupied)
    threads_before = {thread.ident for thread in threading.enumerate()}
    with pytest.raises(OSError):
        broken.start()
    assert not broken.running and _new_threads(threads_before) == []
    broken.stop()  # harmless


def _access_line(registry: InProcessServer | ServerProcess, path: str) -> str:
    """The access-log line of a request to ``path`` (logged just after the response went out, so waited for),
    without what differs between two runs: the time, the duration and the request ID."""
    deadline = time.monotonic() + 10
    while not (lines := [line for line in registry.log().splitlines() if f" path={path} " in line]):
        assert time.monotonic() < deadline, registry.log()[-4000:]
        time.sleep(0.01)
    assert len(lines) == 1, lines
    fields = lines[0].split(" ", 2)[2]  # drop the date and the time
    return " ".join(part for part in fields.split() if not part.startswith(("ms=", "id=")))


def test_both_kinds_log_a_request_alike(server: InProcessServer, server_process: ServerProcess) -> None:
    """What tests grep for in ``log()`` reads the same whether the server is in-process or a process."""
    lines = []
    for registry in (server, server_process):
        with registry.client() as http:
            assert http.get("/v2/parity/app/tags/list").status_code == 404
            assert http.get("/v2/parity/app/manifests/nope").status_code == 404
        lines.append(_access_line(registry, "/v2/parity/app/manifests/nope"))
    assert lines[0] == lines[1]
    assert lines[0].startswith("INFO cargohold.access: method=GET path=/v2/parity/app/manifests/nope status=404 ")
