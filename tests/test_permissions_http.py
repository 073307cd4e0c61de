"""Scoped permissions over real HTTP: ``delete`` chosen at token creation, what it opens on ``/v2/`` (real
skopeo included), what ``/token`` grants, how deleting a build's image keeps lifecycle bookkeeping straight,
and upload sessions: their opener may always cancel them, and each credential may hold only so many.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cargohold.client.control import ControlError
from cargohold.metadata.db import Database
from cargohold.metadata.store import MetadataStore, TooManyUploads
from cargohold.sample import write_sample_image
from cargohold.schemas import TokenCreated
from control_helpers import api, error_of, http, jwt_parts, push_image
from fixtures_images import require_tools
from protocol_helpers import digest_of, random_blob
from servers import InProcessServer, Server, module_server, running

server = module_server()

MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def _project_with_tokens(server: Server, name: str) -> tuple[str, TokenCreated, TokenCreated]:
    """A project with a default project token (pull,push) and one that may also delete."""
    with api(server) as admin:
        project = admin.create_project(name).id
        plain = admin.create_token("project", "ci", project_id=project)
        deleter = admin.create_token("project", "janitor", project_id=project, permissions=["pull", "push", "delete"])
    return project, plain, deleter


def _upload(client: httpx.Client, project: str) -> httpx.Response:
    return client.post(f"/v2/{project}/blobs/uploads/")


def test_token_permissions_are_chosen_at_creation_within_the_kind(server: Server) -> None:
    project, plain, deleter = _project_with_tokens(server, "perm sets")
    assert [p.to_json() for p in plain.permissions] == [
        {"project": project, "actions": ["pull", "push"], "build_id": None}
    ]
    assert [p.to_json() for p in deleter.permissions] == [
        {"project": project, "actions": ["delete", "pull", "push"], "build_id": None}
    ]
    with api(server) as admin:
        refusals = {
            "no pull": dict(kind="project", project_id=project, permissions=["push"]),
            "unknown": dict(kind="project", project_id=project, permissions=["pull", "own"]),
            "push on a pull token": dict(kind="pull", project_id=project, permissions=["pull", "push"]),
            "admin set on a project token": dict(kind="project", project_id=project, permissions=["admin"]),
            "empty": dict(kind="project", project_id=project, permissions=[]),
        }
        for what, fields in refusals.items():
            with pytest.raises(ControlError) as refused:
                admin.request("POST", "/api/v1/tokens", json={"name": what, **fields})
            assert refused.value.status == 400 and refused.value.code == "INVALID", what
        scraper = admin.create_token("admin", "prometheus", permissions=["metrics"])
    assert scraper.admin_permissions == ["metrics"] and scraper.permissions == []
    with http(server, scraper.token) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/api/v1/projects").json()["projects"] == []
        assert client.post("/api/v1/projects", json={"name": "nope"}).status_code == 403
        assert client.post("/api/v1/tokens", json={"kind": "admin"}).status_code == 403
        assert client.get("/api/v1/whoami").json()["admin_permissions"] == ["metrics"]
    with http(server, deleter.token) as client:
        assert client.get("/metrics").status_code == 403


def test_delete_over_v2_needs_the_delete_permission(server: Server, tmp_path: Path) -> None:
    project, plain, deleter = _project_with_tokens(server, "perm v2")
    image = push_image(server, project, "v1", plain.token, tmp_path / "img")
    loose = random_blob(300)
    with http(server, plain.token) as client:
        location = _upload(client, project).headers["Location"]
        assert client.put(location, params={"digest": digest_of(loose)}, content=loose).status_code == 201
        for path in (f"/v2/{project}/manifests/{image.manifest.digest}", f"/v2/{project}/blobs/{digest_of(loose)}"):
            refused = client.delete(path)
            assert refused.status_code == 403, refused.text
            assert error_of(refused) == ("DENIED", f"the project credential 'ci' may not delete in {project}")
    with http(server, deleter.token) as client:
        assert client.delete(f"/v2/{project}/manifests/{image.manifest.digest}").status_code == 202
        assert client.delete(f"/v2/{project}/blobs/{digest_of(loose)}").status_code == 202
        assert client.get(f"/v2/{project}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT}).status_code == 404
        assert client.head(f"/v2/{project}/blobs/{digest_of(loose)}").status_code == 404


def _granted(server: Server, token: str, scope: str) -> list[dict[str, Any]]:
    with http(server, token) as client:
        response = client.get("/token", params={"service": "cargohold", "scope": scope})
    assert response.status_code == 200, response.text
    return jwt_parts(response.json()["token"])[1]["access"]  # type: ignore[no-any-return]


def test_token_endpoint_grants_delete_only_to_credentials_that_hold_it(server: Server) -> None:
    project, plain, deleter = _project_with_tokens(server, "perm scopes")
    with api(server) as admin:
        reader = admin.create_token("pull", "reader", project_id=project).token

    def actions(token: str, wanted: str) -> list[str]:
        granted = _granted(server, token, f"repository:{project}:{wanted}")
        return granted[0]["actions"] if granted else []

    # distribution clients ask for "delete"; containers/image (skopeo) asks for "*" (every action).
    assert actions(deleter.token, "delete") == ["delete"]
    assert actions(deleter.token, "*") == ["delete", "pull", "push"]
    assert actions(plain.token, "delete") == []
    assert actions(plain.token, "*") == ["pull", "push"]
    assert actions(reader, "*") == ["pull"]
    assert actions(server.admin_token, "*") == ["delete", "pull", "push"]


def _skopeo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120, env=env)


def _statuses(server: Server, since: int, method: str, project: str) -> list[str]:
    """Statuses of the access-log lines for ``method`` on the project's manifests since ``since``.

    The server writes an access line after the response is sent, so the client may exit first: wait
    (briefly) for the line instead of reading the log once.
    """
    pattern = re.compile(rf"method={method} path=/v2/{project}/manifests/\S+ status=(\d+)")
    deadline = time.monotonic() + 5
    while not (found := pattern.findall(server.log()[since:])) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_skopeo_delete_is_denied_without_delete_and_accepted_with_it(server: Server, tmp_path: Path) -> None:
    require_tools("skopeo")
    project, plain, deleter = _project_with_tokens(server, "perm skopeo")
    layout = tmp_path / "layout"
    write_sample_image(layout, layers=1, layer_size=1024, seed=8, ref="img")
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")}
    target = f"docker://{server.host}/{project}:doomed"
    copied = _skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", f"x-token:{plain.token}", f"oci:{layout}:img", target
    )
    assert copied.returncode == 0, copied.stderr

    before = len(server.log())
    denied = _skopeo("delete", "--tls-verify=false", "--creds", f"x-token:{plain.token}", target, env=env)
    assert denied.returncode != 0
    assert _statuses(server, before, "DELETE", project) == ["403"], server.log()[before:]
    assert "denied" in denied.stderr.lower() or "403" in denied.stderr, denied.stderr

    before = len(server.log())
    deleted = _skopeo("delete", "--tls-verify=false", "--creds", f"x-token:{deleter.token}", target, env=env)
    assert deleted.returncode == 0, deleted.stderr
    assert _statuses(server, before, "DELETE", project) == ["202"], server.log()[before:]
    with http(server, deleter.token) as client:
        assert client.get(f"/v2/{project}/manifests/doomed", headers={"Accept": MANIFEST_ACCEPT}).status_code == 404


def _saved_build(server: Server, token: str, project: str, layout: Path, seed: int, tags: list[str]) -> str:
    with api(server, token) as control:
        build = control.create_build(project).build_id
        push_image(server, project, build, token, layout, seed=seed)
        control.save_build(build, save_tags=tags)
    return build


def test_deleting_a_builds_image_over_v2_evicts_the_build_with_an_audit_entry(server: Server, tmp_path: Path) -> None:
    project, plain, deleter = _project_with_tokens(server, "perm builds")
    by_digest = _saved_build(server, plain.token, project, tmp_path / "one", 1, ["main"])
    by_tag = _saved_build(server, plain.token, project, tmp_path / "two", 2, [])
    with api(server, plain.token) as control:
        digest = control.get_build(by_digest).digest

    with http(server, deleter.token) as client:
        # A save-tag is only a name: the build keeps its image and loses its claim on the tag.
        assert client.delete(f"/v2/{project}/manifests/main").status_code == 202
        kept = client.get(f"/api/v1/builds/{by_digest}")
        assert kept.status_code == 200 and kept.json()["save_tags"] == []
        assert (
            client.get(f"/v2/{project}/manifests/{by_digest}", headers={"Accept": MANIFEST_ACCEPT}).status_code == 200
        )

        assert client.delete(f"/v2/{project}/manifests/{digest}").status_code == 202
        assert client.delete(f"/v2/{project}/manifests/{by_tag}").status_code == 202
        for build in (by_digest, by_tag):
            gone = client.get(f"/api/v1/builds/{build}")
            assert gone.status_code == 404
            assert error_of(gone)[1].startswith(f"build {build} was deleted on ")
            assert error_of(gone)[1].endswith("by project:janitor")
            pulled = client.get(f"/v2/{project}/manifests/{build}", headers={"Accept": MANIFEST_ACCEPT})
            assert pulled.status_code == 404 and "was deleted on" in error_of(pulled)[1]
            assert client.get("/api/v1/pull-info", params={"ref": build}).status_code == 404
        events = client.get(f"/api/v1/projects/{project}/history").json()["events"]
    evictions = {e["build_id"]: e for e in events if e["action"] == "evict"}
    assert set(evictions) == {by_digest, by_tag}
    for event in evictions.values():
        assert event["rule"] == "manual" and event["actor"] == "project:janitor"
        assert event["detail"]["via"] == "registry"
    with api(server, plain.token) as control:
        assert [b.id for b in control.list_builds(project).builds] == []


def test_a_push_credential_may_cancel_its_own_upload_sessions(server: Server) -> None:
    project, plain, _deleter = _project_with_tokens(server, "perm uploads")
    with api(server) as admin:
        other = admin.create_token("project", "other ci", project_id=project).token
    with http(server, plain.token) as mine, http(server, other) as theirs:
        own = _upload(mine, project).headers["Location"]
        assert mine.delete(own).status_code == 204
        assert mine.get(own).status_code == 404

        foreign = _upload(theirs, project).headers["Location"]
        refused = mine.delete(foreign)
        assert refused.status_code == 403 and error_of(refused)[0] == "DENIED"
        assert "opened by another credential" in error_of(refused)[1]
        assert theirs.get(foreign).status_code == 204
    with http(server, server.admin_token) as admin_client:
        assert admin_client.delete(foreign).status_code == 204  # delete may cancel anyone's


@pytest.fixture
def capped_server(tmp_path: Path) -> Iterator[Server]:
    with running(InProcessServer(tmp_path / "data", {"max_uploads_per_credential": 3}), check_tracebacks=True) as proc:
        yield proc


def test_open_upload_sessions_are_capped_per_credential(capped_server: Server) -> None:
    with api(capped_server) as admin:
        project = admin.create_project("capped").id
        token = admin.create_token("project", "ci", project_id=project).token
        other = admin.create_token("project", "other", project_id=project).token
    data = random_blob(100)
    with http(capped_server, token) as client, http(capped_server, other) as neighbour:
        sessions = [_upload(client, project).headers["Location"] for _ in range(3)]
        over = _upload(client, project)
        assert over.status_code == 429, over.text
        code, message = error_of(over)
        assert code == "TOOMANYREQUESTS" and "3 upload sessions open" in message
        assert int(over.headers["Retry-After"]) > 0
        monolithic = client.post(f"/v2/{project}/blobs/uploads/", params={"digest": digest_of(data)}, content=data)
        assert monolithic.status_code == 429
        assert _upload(neighbour, project).status_code == 202  # the cap is per credential

        assert client.delete(sessions.pop()).status_code == 204  # cancelled: its slot is free
        sessions.append(_upload(client, project).headers["Location"])
        assert _upload(client, project).status_code == 429
        finished = client.put(sessions.pop(), params={"digest": digest_of(data)}, content=data)
        assert finished.status_code == 201  # completed: its slot is free
        assert _upload(client, project).status_code == 202


def test_expired_upload_sessions_free_their_slot(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'm.db'}")
    database.migrate()
    store = MetadataStore(database)
    ttl = timedelta(hours=24)
    start = datetime(2026, 1, 1, tzinfo=UTC)

    def open_at(moment: datetime, upload_id: str) -> None:
        store.create_upload("p", upload_id, credential_id="c1", max_open=2, active_since=moment - ttl, now=moment)

    open_at(start, "a" * 32)
    open_at(start + timedelta(hours=1), "b" * 32)
    with pytest.raises(TooManyUploads):
        open_at(start + timedelta(hours=2), "c" * 32)
    # A day after the first session was last touched it has expired, purged yet or not.
    open_at(start + ttl + timedelta(seconds=1), "c" * 32)
    with pytest.raises(TooManyUploads):
        open_at(start + ttl + timedelta(seconds=2), "d" * 32)
    store.create_upload("p", "e" * 32, credential_id="c2", max_open=2, active_since=start, now=start)
