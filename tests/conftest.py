"""Shared fixtures: Cargohold servers (``tests/servers.py``), and a session-end check that none leaked.

``server`` is the real application in this process; ``server_process`` a real ``cargohold serve`` child
process. See ``tests/servers.py`` for which to use when.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

# The plugin modules below are imported by this file (through servers) before pytest loads them as plugins:
# registered first, they are assertion-rewritten all the same (and pytest does not warn that it could not).
pytest.register_assert_rewrite("pgcluster", "s3server", "browser")

from s3server import stop_session_s3_server  # noqa: E402
from servers import (  # noqa: E402
    http_fixture,
    leaked_threads,
    running_in_process,
    server_fixture,
    server_process_fixture,
    stop_shared_server,
)

if TYPE_CHECKING:
    from containerd import Containerd

__all__ = ["http_fixture", "server_fixture", "server_process_fixture"]

# Session-scoped servers live in plugins so each starts once per session, not once per module importing it.
pytest_plugins = ["pgcluster", "s3server", "browser"]


@pytest.fixture(scope="session", autouse=True)
def in_process_servers() -> Iterator[None]:
    """At the end of the session (of each worker, under xdist): stop the shared in-process server, then fail
    if any in-process server is still running or left its threads behind (an error in the last teardown)."""
    yield
    stop_shared_server()
    stop_session_s3_server()
    still = [server.url for server in running_in_process()]
    assert not still, f"in-process servers still running at the end of the session: {still}"
    threads = leaked_threads()
    assert not threads, f"threads of stopped in-process servers still alive: {threads}"


@pytest.fixture(scope="session")
def session_dockerd() -> Iterator[str]:
    """One private dockerd for the tests that only need a daemon (the image build, the nginx front);
    yields its DOCKER_HOST. Skips, saying why, where dockerd cannot run (see test_images_docker)."""
    from test_images_docker import private_dockerd

    with private_dockerd() as host:
        yield host


@pytest.fixture(scope="session")
def session_containerd() -> Iterator[Containerd]:
    """One private containerd for the tests that pull through containerd's resolver (tests/containerd.py)."""
    from containerd import private_containerd

    with private_containerd() as daemon:
        yield daemon
