"""Attacks on authentication and authorisation, over real HTTP against a real server.

Every refusal is checked for its status, its OCI error code and that its message helps without leaking
(another project's repository looks exactly like one that does not exist). One server is shared by the
module; each attacking client gets its own loopback source address (see ``control_helpers``) so the
deliberate failures do not rate-limit the rest of the module. The rate-limit and bootstrap tests start
servers of their own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cargohold.clock import utc_now
from cargohold.server.auth.policy import CACHE_SECONDS, TokenAccess, TokenAuthenticator
from control_helpers import api, b64url, error_of, fresh_address, http, jwt_parts, push_image
from servers import InProcessServer, Server, ServerProcess, module_server, running

server = module_server()

MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def authenticator_of(server: Server) -> TokenAuthenticator:
    """The in-process server's authenticator, whose clocks a test moves instead of waiting."""
    assert isinstance(server, InProcessServer)
    access = server.state.access
    assert isinstance(access, TokenAccess)
    return access.authenticator


@dataclass
class World:
    """Two projects, each with a project token and a saved build holding a real image."""

    a: str
    b: str
    token_a: str
    token_b: str
    build_a: str
    build_a2: str
    build_b: str
    digest_a: str
    digest_a2: str
    digest_b: str
    blob_a: str
    blob_a2: str
    blob_b: str


@pytest.fixture(scope="module")
def world(server: Server, tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("images")
    with api(server) as admin:
        a = admin.create_project("alpha").id
        b = admin.create_project("bravo").id
        token_a = admin.create_token("project", "alpha ci", project_id=a).token
        token_b = admin.create_token("project", "bravo ci", project_id=b).token
    images = {}
    builds = {}
    for key, project, token, seed in (("a", a, token_a, 1), ("a2", a, token_a, 2), ("b", b, token_b, 3)):
        with api(server, token) as control:
            build = control.create_build(project).build_id
            images[key] = push_image(server, project, build, token, root / key, seed=seed)
            control.save_build(build)
        builds[key] = build
    return World(
        a,
        b,
        token_a,
        token_b,
        builds["a"],
        builds["a2"],
        builds["b"],
        str(images["a"].manifest.digest),
        str(images["a2"].manifest.digest),
        str(images["b"].manifest.digest),
        str(images["a"].layers[0].digest),
        str(images["a2"].layers[0].digest),
        str(images["b"].layers[0].digest),
    )


def _assert_unknown(response: httpx.Response, repository: str) -> None:
    assert response.status_code == 404, response.text
    if response.request.method != "HEAD":
        code, message = error_of(response)
        assert code == "NAME_UNKNOWN"
        assert message == f"repository {repository} is not known to this registry"


def test_other_projects_are_invisible_to_a_project_token(server: Server, world: World) -> None:
    """Project A's token learns nothing about B: every route answers as if B did not exist."""
    b = world.b
    with http(server, world.token_a) as client:
        attempts = {
            "tag": client.get(f"/v2/{b}/manifests/{world.build_b}", headers={"Accept": MANIFEST_ACCEPT}),
            "digest": client.get(f"/v2/{b}/manifests/{world.digest_b}", headers={"Accept": MANIFEST_ACCEPT}),
            "head": client.head(f"/v2/{b}/manifests/{world.build_b}"),
            "blob": client.get(f"/v2/{b}/blobs/{world.blob_b}"),
            "tags": client.get(f"/v2/{b}/tags/list"),
            "referrers": client.get(f"/v2/{b}/referrers/{world.digest_b}"),
            "upload": client.post(f"/v2/{b}/blobs/uploads/"),
            "put": client.put(f"/v2/{b}/manifests/evil", content=b"{}", headers={"Content-Type": MANIFEST_ACCEPT}),
            "delete": client.delete(f"/v2/{b}/manifests/{world.digest_b}"),
        }
        for what, response in attempts.items():
            try:
                _assert_unknown(response, b)
            except AssertionError as exc:
                raise AssertionError(f"{what}: {exc}") from None
        # The same answer for a repository that really does not exist: nothing distinguishes B.
        ghost = client.get("/v2/zzzznotaproject/tags/list")
        _assert_unknown(ghost, "zzzznotaproject")

        for path in (
            f"/api/v1/projects/{b}",
            f"/api/v1/projects/{b}/builds",
            f"/api/v1/builds/{world.build_b}",
            f"/api/v1/pull-info?ref={world.build_b}",
            f"/api/v1/pull-info?ref={b}:latest",
        ):
            response = client.get(path)
            assert response.status_code == 404, (path, response.text)
            code, message = error_of(response)
            assert code == "NOT_FOUND" and "does not exist" in message and "bravo" not in message
        assert error_of(client.get(f"/api/v1/projects/{b}")) == ("NOT_FOUND", f"project {b} does not exist")
        assert error_of(client.get("/api/v1/projects/nosuchproject")) == (
            "NOT_FOUND",
            "project nosuchproject does not exist",
        )
        created = client.post(f"/api/v1/projects/{b}/builds", json={})
        assert created.status_code == 404 and error_of(created)[0] == "NOT_FOUND"
        token = client.post("/api/v1/tokens", json={"kind": "pull", "project_id": b})
        assert token.status_code == 404 and error_of(token)[0] == "NOT_FOUND"
        listed = client.get("/api/v1/projects").json()["projects"]
        assert [p["id"] for p in listed] == [world.a]


def test_cross_project_mount_does_not_leak_blobs(server: Server, world: World) -> None:
    """``POST /v2/B/blobs/uploads/?mount=<A's blob>&from=A`` by a B token must not mount A's blob."""
    with http(server, world.token_b) as client:
        assert client.head(f"/v2/{world.b}/blobs/{world.blob_a}").status_code == 404
        response = client.post(f"/v2/{world.b}/blobs/uploads/", params={"mount": world.blob_a, "from": world.a})
        assert response.status_code != 201, "a B token mounted a blob from project A"
        assert response.status_code == 202, response.text  # the spec's fallback: an ordinary upload session
        assert client.head(f"/v2/{world.b}/blobs/{world.blob_a}").status_code == 404
        assert client.get(f"/v2/{world.b}/blobs/{world.blob_a}").status_code == 404
    with http(server, server.admin_token) as admin:
        assert admin.head(f"/v2/{world.b}/blobs/{world.blob_a}").status_code == 404


def test_pull_token_cannot_push_or_delete(server: Server, world: World) -> None:
    with api(server) as admin:
        pull = admin.create_token("pull", "reader", project_id=world.a)
    assert pull.token.startswith("chl_")
    with http(server, pull.token) as client:
        assert client.get(f"/v2/{world.a}/tags/list").status_code == 200
        assert client.get(f"/v2/{world.a}/blobs/{world.blob_a}").status_code == 200
        refusals = [
            client.post(f"/v2/{world.a}/blobs/uploads/"),
            client.post(f"/v2/{world.a}/blobs/uploads/", params={"mount": world.blob_a2, "from": world.a}),
            client.put(f"/v2/{world.a}/manifests/hijack", content=b"{}", headers={"Content-Type": MANIFEST_ACCEPT}),
            client.delete(f"/v2/{world.a}/manifests/{world.digest_a}"),
            client.delete(f"/v2/{world.a}/blobs/{world.blob_a}"),
        ]
        for response in refusals:
            assert response.status_code == 403, (response.request.method, response.request.url, response.text)
            code, message = error_of(response)
            assert code == "DENIED"
            assert f"may not push in {world.a}" in message or f"may not delete in {world.a}" in message
        assert (
            client.get(f"/v2/{world.a}/manifests/{world.digest_a}", headers={"Accept": MANIFEST_ACCEPT}).status_code
            == 200
        )


def test_build_scoped_pull_token_sees_only_its_build(server: Server, world: World) -> None:
    with api(server, world.token_a) as control:
        scoped = control.create_token("pull", "one build", project_id=world.a, build_id=world.build_a)
    assert [p.to_json() for p in scoped.permissions] == [
        {"project": world.a, "actions": ["pull"], "build_id": world.build_a}
    ]
    with http(server, scoped.token) as client:
        assert (
            client.get(f"/v2/{world.a}/manifests/{world.build_a}", headers={"Accept": MANIFEST_ACCEPT}).status_code
            == 200
        )
        assert (
            client.get(f"/v2/{world.a}/manifests/{world.digest_a}", headers={"Accept": MANIFEST_ACCEPT}).status_code
            == 200
        )
        assert client.get(f"/v2/{world.a}/blobs/{world.blob_a}").status_code == 200
        for path in (
            f"/v2/{world.a}/manifests/{world.build_a2}",
            f"/v2/{world.a}/manifests/{world.digest_a2}",
            f"/v2/{world.a}/blobs/{world.blob_a2}",
            f"/v2/{world.a}/tags/list",
        ):
            response = client.get(path, headers={"Accept": MANIFEST_ACCEPT})
            assert response.status_code == 403, (path, response.text)
            assert error_of(response) == ("DENIED", f"this pull credential is limited to build {world.build_a}")
        assert client.get(f"/api/v1/builds/{world.build_a2}").status_code == 404
        # pull-info never widens a build-scoped caller.
        assert client.get(f"/api/v1/pull-info?ref={world.build_a2}").status_code == 404


def test_revoked_token_is_refused_within_the_cache_window(
    server: Server, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    with api(server) as admin:
        created = admin.create_token("project", "soon revoked", project_id=world.a)
    with http(server, created.token) as client:
        assert client.get(f"/v2/{world.a}/tags/list").status_code == 200  # now cached by the server
        with api(server) as admin:
            assert admin.revoke_token(created.id).to_json() == {
                "id": created.id,
                "revoked": True,
                "descendants_revoked": 0,
            }
        cache_now = authenticator_of(server).cache_clock()
        monkeypatch.setattr(authenticator_of(server), "cache_clock", lambda: cache_now + CACHE_SECONDS + 0.1)
        response = client.get(f"/v2/{world.a}/tags/list")
        assert response.status_code == 401, "a revoked token still worked after the 5 s cache window"
        code, message = error_of(response)
        assert code == "UNAUTHORIZED" and "was revoked" in message
        api_response = client.get("/api/v1/whoami")
        assert api_response.status_code == 401 and "was revoked" in error_of(api_response)[1]
    with api(server) as admin:
        listed = {t.id: t for t in admin.list_tokens(world.a, include_inactive=True)}
        assert listed[created.id].revoked_at is not None
        assert created.id not in {t.id for t in admin.list_tokens(world.a)}


def test_expired_token_is_refused(server: Server, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    with api(server) as admin:
        created = admin.create_token("pull", "brief", project_id=world.a, expires_in=1)
    monkeypatch.setattr(authenticator_of(server), "clock", lambda: utc_now() + timedelta(seconds=2))
    with http(server, created.token) as client:
        response = client.get(f"/v2/{world.a}/tags/list")
    assert response.status_code == 401
    code, message = error_of(response)
    assert code == "UNAUTHORIZED" and "expired at" in message


def test_no_credential_gets_the_exact_challenge(server: Server, world: World) -> None:
    realm = f'Bearer realm="{server.url}/token",service="cargohold"'
    with http(server) as client:
        root = client.get("/v2/")
        assert root.status_code == 401 and root.headers["WWW-Authenticate"] == realm
        pull = client.get(f"/v2/{world.a}/tags/list")
        assert pull.status_code == 401
        assert pull.headers["WWW-Authenticate"] == f'{realm},scope="repository:{world.a}:pull"'
        assert error_of(pull)[0] == "UNAUTHORIZED"
        push = client.post(f"/v2/{world.a}/blobs/uploads/")
        assert push.headers["WWW-Authenticate"] == f'{realm},scope="repository:{world.a}:pull,push"'
        api_call = client.get("/api/v1/projects")
        assert api_call.status_code == 401 and api_call.headers["WWW-Authenticate"] == realm
        token = client.get("/token", params={"service": "cargohold", "scope": f"repository:{world.a}:pull"})
        assert token.status_code == 401 and token.headers["WWW-Authenticate"] == 'Basic realm="cargohold"'


def _registry_token(server: Server, secret: str, *scopes: str) -> dict[str, Any]:
    with http(server, secret) as client:
        response = client.get("/token", params=[("service", "cargohold"), *(("scope", s) for s in scopes)])
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_token_endpoint_intersects_scopes(server: Server, world: World) -> None:
    with api(server) as admin:
        pull = admin.create_token("pull", "reader", project_id=world.a).token

    narrowed = _registry_token(server, pull, f"repository:{world.a}:pull,push")
    _, claims, _ = jwt_parts(narrowed["token"])
    assert claims["access"] == [{"type": "repository", "name": world.a, "actions": ["pull"]}]

    foreign = _registry_token(server, world.token_a, f"repository:{world.b}:pull")
    assert jwt_parts(foreign["token"])[1]["access"] == []
    catalog = _registry_token(server, world.token_a, "registry:catalog:*")
    assert jwt_parts(catalog["token"])[1]["access"] == []
    admin_catalog = _registry_token(server, server.admin_token, "registry:catalog:*")
    assert jwt_parts(admin_catalog["token"])[1]["access"] == [{"type": "registry", "name": "catalog", "actions": ["*"]}]

    # The issued JWT works as Bearer for what it grants and nothing more.
    with http(server, narrowed["token"], bearer=True) as client:
        assert client.get(f"/v2/{world.a}/tags/list").status_code == 200
        upgrade = client.post(f"/v2/{world.a}/blobs/uploads/")
        assert upgrade.status_code in (401, 403)
    with http(server, foreign["token"], bearer=True) as client:
        _assert_unknown(client.get(f"/v2/{world.b}/tags/list"), world.b)

    head, body, signature = narrowed["token"].split(".")
    claims["access"] = [{"type": "repository", "name": world.b, "actions": ["pull", "push"]}]
    forged_body = b64url(json.dumps(claims).encode())
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    for tampered in (f"{head}.{forged_body}.{signature}", f"{head}.{body}.{flipped}"):
        with http(server, tampered, bearer=True) as client:
            response = client.get(f"/v2/{world.b}/tags/list")
        assert response.status_code == 401, response.text
        assert error_of(response)[0] == "UNAUTHORIZED"

    with http(server, world.token_a) as client:
        bad_service = client.get("/token", params={"service": "elsewhere", "scope": f"repository:{world.a}:pull"})
        assert bad_service.status_code == 400


def test_repeated_bad_credentials_are_rate_limited(server: Server) -> None:
    """Failures are counted per client address, so this client is blocked and the rest of the module is not."""
    address = fresh_address()
    bogus = "chp_" + "A" * 36
    statuses = []
    with http(server, bogus, address=address) as client:
        for _ in range(15):
            response = client.get("/v2/")
            statuses.append(response.status_code)
            if response.status_code == 429:
                break
    assert statuses[0] == 401 and statuses[-1] == 429, statuses
    assert len(statuses) <= 12
    code, message = error_of(response)
    assert code == "TOOMANYREQUESTS" and "too many failed authentications" in message
    assert int(response.headers["Retry-After"]) >= 1
    # Blocked means blocked, even with a good token, and on /token too; other clients are unaffected.
    with http(server, server.admin_token, address=address) as client:
        assert client.get("/v2/").status_code == 429
        blocked = client.get("/token", params={"service": "cargohold"})
        assert blocked.status_code == 429 and "Retry-After" in blocked.headers
    with http(server, server.admin_token) as other:
        assert other.get("/v2/").status_code == 200


def test_bootstrap_admin_token_is_printed_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``cargohold serve`` with ``CARGOHOLD_ADMIN_TOKEN`` set but empty, on an empty data dir, prints a first admin
    token; the next start on that data dir (in-process: what it finds there is what matters) prints none."""
    proc = ServerProcess(data_dir=tmp_path / "data", env={"CARGOHOLD_ADMIN_TOKEN": ""})
    proc.start()
    try:
        tokens = re.findall(r"\bcha_[0-9A-Za-z]{36}\b", proc.log())
        assert len(tokens) == 1, proc.log()
        assert proc.log().count("created the first admin token") == 2  # the banner and the log line
        with http(proc, tokens[0]) as client:
            who = client.get("/api/v1/whoami").json()
            assert who["kind"] == "admin" and who["name"] == "first admin"
            assert client.post("/api/v1/projects", json={"name": "after bootstrap"}).status_code == 201
        with http(proc, proc.admin_token) as client:  # the env token was not set, so this is just a guess
            assert client.get("/api/v1/whoami").status_code == 401
    finally:
        proc.stop()
    capsys.readouterr()
    again = InProcessServer(proc.data_dir, admin_token=None)
    with running(again), http(again, tokens[0]) as client:
        assert client.get("/api/v1/whoami").status_code == 200
    assert "cha_" not in capsys.readouterr().out  # the banner goes to standard output
    assert "created the first admin token" not in again.log()


def test_build_scoped_token_reads_only_its_builds_history_and_no_usage(server: Server, world: World) -> None:
    """Issue 11, finding 7: a pull token for one build read the whole project's audit history and usage."""
    with api(server, world.token_a) as control:
        scoped = control.create_token("pull", "one build", project_id=world.a, build_id=world.build_a).token
        for build in (world.build_a, world.build_a2):
            control.pin_build(build)
            control.unpin_build(build)
    history = f"/api/v1/projects/{world.a}/history"
    with http(server, world.token_a) as member:
        assert {e["build_id"] for e in member.get(history).json()["events"]} >= {world.build_a, world.build_a2}
        assert member.get(f"/api/v1/projects/{world.a}/usage").status_code == 200
    with http(server, scoped) as client:
        events = client.get(history).json()["events"]
        assert events and {e["build_id"] for e in events} == {world.build_a}
        assert {e["build_id"] for e in client.get(history, params={"build": world.build_a}).json()["events"]} == {
            world.build_a
        }
        other = client.get(history, params={"build": world.build_a2})
        assert other.status_code == 404 and error_of(other) == ("NOT_FOUND", f"build {world.build_a2} does not exist")
        usage = client.get(f"/api/v1/projects/{world.a}/usage")
        assert usage.status_code == 403 and error_of(usage)[0] == "DENIED"
        assert f"limited to build {world.build_a}" in error_of(usage)[1]


@pytest.mark.parametrize("value", ["-1", "0", "abc", "1e3", "2.5", " 5", "²"])
def test_limit_parameters_are_validated(server: Server, world: World, value: str) -> None:
    """``limit=-1`` (or anything but a positive whole number) is a 400 with one sentence, never "no limit"."""
    with http(server, world.token_a) as client:
        for path, maximum in (
            (f"/api/v1/projects/{world.a}/history", 1000),
            (f"/api/v1/projects/{world.a}/builds", 500),
        ):
            response = client.get(path, params={"limit": value})
            assert response.status_code == 400, (path, value, response.text)
            code, message = error_of(response)
            assert code == "INVALID" and message.startswith(f"limit must be a whole number from 1 to {maximum}")
        if value != "0":  # n=0 is a valid (empty) page in the distribution API
            listed = client.get(f"/v2/{world.a}/tags/list", params={"n": value})
            assert listed.status_code == 400 and "n must be a whole number" in error_of(listed)[1]


def test_huge_limits_are_clamped(server: Server, world: World) -> None:
    """Any number of digits means "the largest page" (the reference registry answers ``n`` of 5,000 digits so)."""
    with http(server, world.token_a) as client:
        for path in (f"/api/v1/projects/{world.a}/history", f"/api/v1/projects/{world.a}/builds"):
            assert client.get(path, params={"limit": "1" + "0" * 25}).status_code == 200, path
            assert client.get(path, params={"limit": "9" * 5000}).status_code == 200, path
        assert client.get(f"/v2/{world.a}/tags/list", params={"n": "9" * 20}).status_code == 200
        assert client.get(f"/v2/{world.a}/tags/list", params={"n": "9" * 5000}).status_code == 200


def test_another_projects_evicted_build_is_a_plain_not_found(server: Server, world: World, tmp_path: Path) -> None:
    """Only credentials that may see a project learn who deleted its builds, and when."""
    gone = {}
    for key, project, token in (("b", world.b, world.token_b), ("a", world.a, world.token_a)):
        with api(server, token) as control:
            build = control.create_build(project).build_id
            push_image(server, project, build, token, tmp_path / key, seed=40)
            control.save_build(build)
        with api(server) as admin:
            admin.delete_build(build)
        gone[key] = build
    with api(server, world.token_a) as control:
        scoped = control.create_token("pull", "one build", project_id=world.a, build_id=world.build_a).token

    def answers(token: str, build: str) -> list[str]:
        with http(server, token) as client:
            responses = [
                client.get(f"/api/v1/builds/{build}"),
                client.get("/api/v1/pull-info", params={"ref": build}),
                client.post(f"/api/v1/builds/{build}/pin"),
            ]
        assert all(r.status_code == 404 and error_of(r)[0] == "NOT_FOUND" for r in responses), [
            r.text for r in responses
        ]
        return [error_of(r)[1] for r in responses]

    explained = f"build {gone['b']} was deleted on "
    assert all(message.startswith(explained) for message in answers(world.token_b, gone["b"]))
    assert answers(world.token_a, gone["b"]) == [f"build {gone['b']} does not exist"] * 3
    # Within its own project, a credential limited to another build learns nothing about this one either.
    assert all(
        message.startswith(f"build {gone['a']} was deleted on ") for message in answers(world.token_a, gone["a"])
    )
    assert answers(scoped, gone["a"]) == [f"build {gone['a']} does not exist"] * 3
