"""``ControlClient`` returns typed objects (cargohold.schemas), and the CLI's ``--json`` still prints exactly what
the server answered: same keys, same values, same order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

import cargohold.cli.admin  # registers the commands on the app
import cargohold.cli.lifecycle  # noqa: F401  (the same)
from cargohold.client.control import ControlClient, ControlError
from cargohold.client.retry import RetryPolicy
from cargohold.schemas import Build, BuildPage, Project
from control_helpers import api
from servers import ServerProcess, module_server
from test_cli_lifecycle import config, ok, save_build

__all__ = ["config"]

server = module_server()


def raw(server: ServerProcess, path: str, **params: Any) -> Any:
    with server.client() as http:
        answer = http.get(path, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_methods_return_the_typed_answer(server: ServerProcess) -> None:
    with api(server) as admin:
        project = admin.create_project("typed", retention_seconds=3600)
        assert isinstance(project, Project) and project.retention_seconds == 3600
        build_id = save_build(server, project.id, "typed", ["main"])
        build = admin.get_build(build_id)
        assert isinstance(build, Build) and build.save_tags == ["main"] and build.saved_at is not None
        page = admin.list_builds(project.id)
        assert isinstance(page, BuildPage) and [b.id for b in page.builds] == [build_id]
        assert build.to_json() == raw(server, f"/api/v1/builds/{build_id}")


def test_pin_unpin_and_extend_answer_the_whole_build(server: ServerProcess) -> None:
    """Today's server answers these with 7 keys; the client still returns the one Build shape."""
    with api(server) as admin:
        project = admin.create_project("pins").id
        build_id = save_build(server, project, "pins")
        pinned = admin.pin_build(build_id)
        assert pinned.pinned and pinned.reference.endswith(f":{build_id}") and pinned.total_size
        extended = admin.extend_build(build_id, by_seconds=3600)
        unpinned = admin.unpin_build(build_id)
    assert not unpinned.pinned and unpinned.expires_at == extended.expires_at is not None
    assert unpinned.to_json() == raw(server, f"/api/v1/builds/{build_id}")


def _answering(body: bytes, status: int = 200) -> ControlClient:
    """A client whose every request is answered with ``body``: a server of another kind, or a broken proxy."""
    transport = httpx.MockTransport(lambda request: httpx.Response(status, content=body))
    return ControlClient("http://cargohold.test", "t", transport=transport, retry=RetryPolicy(attempts=1))


def test_an_answer_without_its_schemas_shape_is_a_one_sentence_error() -> None:
    with _answering(json.dumps({"id": "b1", "status": "saved"}).encode()) as client, pytest.raises(ControlError) as bad:
        client.get_build("b1")
    assert bad.value.code == "INVALID_RESPONSE"
    assert str(bad.value).startswith("http://cargohold.test answered GET /api/v1/builds/b1 with something this ")
    assert "Build has no 'project_id'" in str(bad.value)
    with _answering(b"<html>proxy error</html>") as client, pytest.raises(ControlError, match="not JSON"):
        client.whoami()


def test_json_output_is_the_servers_answer_byte_for_byte(server: ServerProcess, config: Path) -> None:
    project = ok(server, "projects", "create", "json fidelity", "--retention", "7d", "--json")
    project_id = json.loads(project)["id"]
    build_id = save_build(server, project_id, "fidelity", ["main"])
    cases = {
        ("projects", "show", project_id): f"/api/v1/projects/{project_id}",
        ("builds", "show", build_id): f"/api/v1/builds/{build_id}",
        ("builds", "list", "--project", project_id): f"/api/v1/projects/{project_id}/builds",
        ("builds", "history", "--project", project_id, "--limit", "100"): f"/api/v1/projects/{project_id}/history",
        ("tokens", "list"): "/api/v1/tokens",
    }
    for command, path in cases.items():
        printed = json.loads(ok(server, *command, "--json"))
        assert json.dumps(printed) == json.dumps(raw(server, path)), command
    # Usage moves while we look (byte-hours accrue, free space changes): the same keys in the same order.
    printed = json.loads(ok(server, "usage", "--project", project_id, "--json"))
    answer = raw(server, f"/api/v1/projects/{project_id}/usage")
    assert list(printed) == list(answer) and list(printed["server_storage"]) == list(answer["server_storage"])
