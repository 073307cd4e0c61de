"""Shared fixtures: Cargohold servers (``tests/servers.py``), and a session-end check that none leaked.

``server`` is the real application in this process; ``server_process`` a real ``cargohold serve`` child
process. See ``tests/servers.py`` for which to use when.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from servers import (
    http_fixture,
    leaked_threads,
    running_in_process,
    server_fixture,
    server_process_fixture,
    stop_shared_server,
)

__all__ = ["http_fixture", "server_fixture", "server_process_fixture"]


@pytest.fixture(scope="session")
def shared_registry() -> Iterator[None]:
    """Owns the session's shared in-process server (``servers.shared_server``): stops it at session end."""
    yield
    stop_shared_server()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if an in-process server was left running or left its threads behind."""
    problems = []
    if still := running_in_process():
        problems.append(f"in-process servers still running: {[s.url for s in still]}")
    if threads := leaked_threads():
        problems.append(f"threads of stopped in-process servers still alive: {threads}")
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            for problem in problems:
                reporter.write_line(f"LEAK: {problem}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
