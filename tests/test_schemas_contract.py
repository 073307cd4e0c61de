"""Contract: every answer of the control API (and of the OIDC exchange) parses into its schema in
:mod:`cargohold.schemas`, with no key missing and none left unread, and writes back byte for byte.

One real ``cargohold serve`` (trusting a loopback OIDC issuer) walks through a project's life: projects,
trust, an OIDC exchange, builds saved and failed, save-tags, pull-info, tokens, tags pushed outside builds,
pins, history, usage, storage, an expiry sweep that really evicts, garbage collection, deletions. Each answer
is checked *raw* (straight from httpx, not through the client), so the schemas are checked against the wire.
At the end, every route the server registers is either checked or named below with the reason it is not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.schemas import (
    Build,
    BuildCreated,
    BuildDeletion,
    BuildPage,
    ExpiryReport,
    GcReport,
    History,
    OidcDiscovery,
    OidcExchange,
    Project,
    ProjectList,
    PullInfo,
    ServerStorage,
    Tag,
    TagPage,
    TokenCreated,
    TokenList,
    TokenRevoked,
    TrustList,
    TrustRelationship,
    TrustRemoved,
    Usage,
    Whoami,
)
from cargohold.schemas.wire import Schema, SchemaError
from control_helpers import push_image
from oidc_issuer import REPO, LoopbackOidcIssuer
from servers import ServerProcess

NOT_CONTROL_API = {
    "GET /healthz": "a health probe, not a resource (docs/api.md, Health)",
    "GET /livez": "a liveness probe, not a resource (docs/api.md, Health)",
    "* /token": "the Docker token service: its answer is the distribution token spec's, not ours",
    "POST /api/v1/blob-copies": "an application/x-ndjson progress stream (RegistryClient.push_blob_from_server)",
    "GET /metrics": "Prometheus text",
    "GET /v2/": "the OCI distribution API",
    "GET /v2": "the OCI distribution API",
    "* /v2/{tail}": "the OCI distribution API",
    "GET /": "a redirect to the web dashboard",
}
DASHBOARD = "/ui"
"""Routes under ``/ui`` are the web dashboard's HTML pages (tests/test_dashboard.py), not JSON resources."""
"""Routes outside the control API's JSON resources, and why."""
BUILD_CHANGES = ("/pin", "/unpin", "/extend")
"""``POST /api/v1/builds/{build}/pin|unpin|extend``: each answers the one Build shape."""


@pytest.fixture(scope="module")
def issuer() -> Iterator[LoopbackOidcIssuer]:
    with LoopbackOidcIssuer() as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, issuer: LoopbackOidcIssuer) -> Iterator[ServerProcess]:
    proc = ServerProcess(data_dir=tmp_path_factory.mktemp("contract") / "data")
    proc.extra_args = ["--oidc-issuer", issuer.url]
    issuer.audience = proc.url  # the server's default audience is its public URL
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-4000:]


class Contract:
    """Sends requests, checks each answer against its schema, and remembers which routes it checked."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.checked: set[str] = set()

    def call(
        self,
        schema: type[Schema],
        method: str,
        route: str,
        *,
        token: str | None = None,
        status: int = 200,
        path: dict[str, str] | None = None,
        **request: Any,
    ) -> Any:
        """``method route`` (a route template, filled from ``path``) as ``token`` (admin by default): the answer
        must have ``status``, parse into ``schema`` completely, and write back exactly as received."""
        url = route.format(**(path or {}))
        with self.server.client(token) as http:
            response = http.request(method, url, **request)
        assert response.status_code == status, f"{method} {url}: {response.status_code} {response.text}"
        raw = response.json()
        parsed = schema.from_json(raw)
        assert parsed.unread() == [], f"{method} {route} sends keys {schema.__name__} does not declare"
        assert json.dumps(parsed.to_json()) == json.dumps(raw), f"{method} {route} does not round-trip"
        self.checked.add(f"{method} {route}")
        return parsed


def _server_routes(tmp_path: Path) -> set[str]:
    """``METHOD /template`` of every route a server registers (an app built in-process, never started)."""
    from cargohold.config import ServerSettings
    from cargohold.server.app import create_app

    app = create_app(ServerSettings(data_dir=tmp_path / "routes"))
    routes = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method == "HEAD":
            continue
        routes.add(f"{route.method} {resource.canonical}")
    return routes


def test_every_control_api_answer_matches_its_schema(
    server: ServerProcess, issuer: LoopbackOidcIssuer, tmp_path: Path
) -> None:
    c = Contract(server)
    discovery = c.call(OidcDiscovery, "GET", "/api/v1/oidc", token="")
    assert discovery.audience == server.url and discovery.issuers == [issuer.url]

    # --- projects and trust -----------------------------------------------------------------------------
    project = c.call(
        Project, "POST", "/api/v1/projects", status=201, json={"name": "contract", "retention_seconds": 86400}
    )
    assert project.registry == f"{server.host}/{project.id}"
    p = {"project": project.id}
    assert c.call(Project, "GET", "/api/v1/projects/{project}", path=p).registry is not None
    assert c.call(Project, "PATCH", "/api/v1/projects/{project}", path=p, json={"max_builds": 40}).registry is None
    short = c.call(Project, "POST", "/api/v1/projects", status=201, json={"name": "short", "retention_seconds": 1})
    assert {x.id for x in c.call(ProjectList, "GET", "/api/v1/projects").projects} >= {project.id, short.id}
    trust = c.call(
        TrustRelationship,
        "POST",
        "/api/v1/projects/{project}/trust",
        path=p,
        status=201,
        json={"repository": REPO, "workflow": "ci.yml", "allow_events": ["workflow_run"]},
    )
    assert [t.id for t in c.call(TrustList, "GET", "/api/v1/projects/{project}/trust", path=p).trust_relationships] == [
        trust.id
    ]

    # --- the OIDC exchange and whoami ---------------------------------------------------------------------
    exchanged = c.call(OidcExchange, "POST", "/auth/oidc/github-actions", token="", json={"token": issuer.mint("push")})
    assert exchanged.ok and exchanged.projects == [project.id]
    who = c.call(Whoami, "GET", "/api/v1/whoami", token=exchanged.token)
    assert who.kind == "oidc" and who.permissions[0].project == project.id and who.expires_at is not None
    assert c.call(Whoami, "GET", "/api/v1/whoami").admin_permissions == ["admin"]

    # --- builds ---------------------------------------------------------------------------------------------
    created = c.call(
        BuildCreated, "POST", "/api/v1/projects/{project}/builds", path=p, token=exchanged.token, status=201, json={}
    )
    b = {"build": created.build_id}
    push_image(server, project.id, created.build_id, created.token, tmp_path / "image")
    saved = c.call(Build, "POST", "/api/v1/builds/{build}/save", path=b, json={"save_tags": ["main"]})
    assert saved.status == "saved" and saved.provenance["repository"] == REPO and saved.platforms
    assert c.call(Build, "GET", "/api/v1/builds/{build}", path=b).save_tags == ["main"]
    assert c.call(Build, "POST", "/api/v1/builds/{build}/tags", path=b, json={"tags": ["release"]}).save_tags == [
        "main",
        "release",
    ]
    assert c.call(Build, "DELETE", "/api/v1/builds/{build}/tags/{tag}", path={**b, "tag": "release"}).save_tags == [
        "main"
    ]
    failed_build = c.call(
        BuildCreated,
        "POST",
        "/api/v1/projects/{project}/builds",
        path=p,
        status=201,
        json={"provenance": {"sha": "abc"}},
    )
    failed = c.call(
        Build, "POST", "/api/v1/builds/{build}/fail", path={"build": failed_build.build_id}, json={"reason": "tests"}
    )
    assert failed.status == "failed" and failed.failure == "tests"
    page = c.call(BuildPage, "GET", "/api/v1/projects/{project}/builds", path=p, params={"limit": 1})
    assert len(page.builds) == 1 and page.next == failed_build.build_id
    info = c.call(PullInfo, "GET", "/api/v1/pull-info", params={"ref": f"{project.id}:main"})
    assert info.build_id == created.build_id and info.digest == saved.digest

    # --- tokens ---------------------------------------------------------------------------------------------
    minted = c.call(
        TokenCreated,
        "POST",
        "/api/v1/tokens",
        status=201,
        token=created.token,
        json={"kind": "pull", "name": "reader", "project_id": project.id, "build_id": created.build_id},
    )
    assert minted.parent_id is not None and minted.permissions[0].build_id == created.build_id
    listed = c.call(TokenList, "GET", "/api/v1/tokens", params={"project": project.id, "all": "1"}).tokens
    assert minted.id in {t.id for t in listed}
    revoked = c.call(TokenRevoked, "DELETE", "/api/v1/tokens/{token}", path={"token": minted.id})
    assert revoked.revoked

    # --- tags pushed outside builds --------------------------------------------------------------------------
    for tag in ("1.0", "2.0"):
        push_image(server, f"{project.id}/web", tag, created.token, tmp_path / f"web-{tag}", seed=7)
    tags = c.call(TagPage, "GET", "/api/v1/projects/{project}/tags", path=p, params={"limit": 1})
    assert [t.tag for t in tags.tags] == ["1.0"] and tags.next == f"{project.id}/web:1.0"
    web = {"repository": f"{project.id}/web", "tag": "1.0"}
    assert c.call(Tag, "POST", "/api/v1/projects/{project}/tags/pin", path=p, json=web).pinned
    assert not c.call(Tag, "POST", "/api/v1/projects/{project}/tags/unpin", path=p, json=web).pinned
    assert c.call(Tag, "POST", "/api/v1/projects/{project}/tags/extend", path=p, json={**web, "by": 3600}).expires_at

    # --- pins, history, usage, storage -----------------------------------------------------------------------
    for action in BUILD_CHANGES:
        body = {"by": 3600} if action == "/extend" else {}
        c.call(Build, "POST", f"/api/v1/builds/{{build}}{action}", path=b, json=body)
    events = c.call(History, "GET", "/api/v1/projects/{project}/history", path=p).events
    assert {e.action for e in events} >= {"pin", "unpin", "extend"} and all(e.message for e in events)
    usage = c.call(Usage, "GET", "/api/v1/projects/{project}/usage", path=p)
    assert usage.stored_bytes > 0 and usage.server_storage is not None and usage.server_storage.filesystems
    assert c.call(ServerStorage, "GET", "/api/v1/storage").filesystems

    # --- evictions: a deletion, and an expiry sweep that takes an expired tag and its manifest ---------------
    dry = c.call(BuildDeletion, "DELETE", "/api/v1/builds/{build}", path=b, params={"dry_run": "1"})
    assert dry.dry_run and dry.evicted[0].build_id == created.build_id
    assert c.call(BuildDeletion, "DELETE", "/api/v1/builds/{build}", path=b).evicted[0].tags
    push_image(server, f"{short.id}/web", "1.0", _project_token(c, short.id), tmp_path / "short", seed=9)
    deadline = time.monotonic() + 15
    while True:  # the tag expires one second after its push
        with server.client() as http:
            sweep = http.post("/api/v1/expire", json={"project": short.id, "dry_run": True}).json()
        if sweep["tags"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    report = c.call(ExpiryReport, "POST", "/api/v1/expire", json={"project": short.id})
    assert report.tags and report.manifests and report.manifests[0].count == len(report.manifests[0].digests)
    gc = c.call(GcReport, "POST", "/api/v1/gc", json={"dry_run": True})
    assert gc.dry_run and gc.completed

    removed = c.call(TrustRemoved, "DELETE", "/api/v1/projects/{project}/trust/{trust}", path={**p, "trust": trust.id})
    assert removed.removed and removed.credentials_revoked == 2  # the exchanged token and the build token it minted

    # --- every route is accounted for ----------------------------------------------------------------------
    unaccounted = _server_routes(tmp_path) - c.checked - set(NOT_CONTROL_API)
    unaccounted = {route for route in unaccounted if not route.split(" ", 1)[1].startswith(DASHBOARD)}
    assert unaccounted == set(), "routes without a schema check"


def _project_token(c: Contract, project_id: str) -> str:
    with c.server.client() as http:
        answer = http.post("/api/v1/tokens", json={"kind": "project", "name": "pusher", "project_id": project_id})
    return str(answer.json()["token"])


def test_an_error_answer_is_not_a_resource(server: ServerProcess) -> None:
    """Errors have their own shape ({"errors": [...]}): a schema refuses one rather than reading nonsense."""
    with server.client() as http:
        answer = http.get("/api/v1/builds/nosuchbuild")
    assert answer.status_code == 404
    with pytest.raises(SchemaError, match="has no 'id'"):
        Build.from_json(answer.json())
