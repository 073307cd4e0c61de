"""Token lineage: no credential outlives, or survives the revocation of, the credential that minted it.

The attacks of issue 11 over real HTTP against a real server with a loopback OIDC issuer: a 1-hour
OIDC-exchanged token minting a 1-year pull token, build tokens creating builds without end, a build-scoped
pull token renewing itself through pull-info, and children that kept working after their parent was revoked
or its trust relationship deleted. Below them, the store-level rules: the parent check and the revocation
cascade share write transactions, so lineage holds with mints and revocations racing; and a database from
before lineage upgrades to roots with their kind's default permissions.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config

from cargohold.client.control import ControlError
from cargohold.metadata.control import ControlStore, CredentialRecord, ParentInactive, new_id
from cargohold.metadata.db import MIGRATIONS_DIR, Database
from cargohold.server.auth.credentials import CredentialKind, Permission, hash_token, new_credential
from cargohold.server.auth.policy import credential_record, principal_of
from control_helpers import api, error_of, http, push_image
from oidc_issuer import REPO, LoopbackOidcIssuer
from servers import InProcessServer, running

YEAR = 365 * 86400


@pytest.fixture(scope="module")
def issuer() -> Iterator[LoopbackOidcIssuer]:
    with LoopbackOidcIssuer() as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, issuer: LoopbackOidcIssuer) -> Iterator[InProcessServer]:
    proc = InProcessServer(
        data_dir=tmp_path_factory.mktemp("lineage") / "data", settings={"oidc_issuers": (issuer.url,)}
    )
    issuer.audience = proc.url
    with running(proc, check_tracebacks=True):
        yield proc


def _oidc_jwt(issuer: LoopbackOidcIssuer, repo: str) -> str:
    """A push-event token from ``repo`` (every claim naming the issuer's default repository rewritten)."""
    base = issuer.claims("push")
    return issuer.mint(
        "push",
        repository=repo,
        repository_owner=repo.split("/")[0],
        sub=base["sub"].replace(REPO, repo),
        workflow_ref=base["workflow_ref"].replace(REPO, repo),
        job_workflow_ref=base["job_workflow_ref"].replace(REPO, repo),
    )


def _trusted(server: InProcessServer, repo: str, **trust: Any) -> tuple[str, str]:
    """A project trusting ``repo``; returns (project id, trust relationship id)."""
    with api(server) as admin:
        project = admin.create_project(f"lineage {repo}").id
        relationship = admin.add_trust(project, repository=repo, **trust)
    return project, relationship.id


def _exchange(server: InProcessServer, issuer: LoopbackOidcIssuer, repo: str) -> dict[str, Any]:
    with http(server) as client:
        response = client.post("/auth/oidc/github-actions", json={"token": _oidc_jwt(issuer, repo)})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _refused_as_revoked(server: InProcessServer, token: str, project: str) -> None:
    """The token no longer works on the control API nor on /v2/ (directly or through a registry JWT)."""
    with http(server, token) as client:
        who = client.get("/api/v1/whoami")
        assert who.status_code == 401 and "was revoked" in error_of(who)[1], who.text
        assert client.get(f"/v2/{project}/tags/list").status_code == 401
        assert (
            client.get("/token", params={"service": "cargohold", "scope": f"repository:{project}:pull"}).status_code
            == 401
        )


# --- the attacks of the issue, over HTTP ---------------------------------------------------------------------


def test_one_hour_oidc_token_cannot_mint_a_year_long_pull_token(
    server: InProcessServer, issuer: LoopbackOidcIssuer
) -> None:
    project, _ = _trusted(server, "octo-org/lineage-year")
    exchanged = _exchange(server, issuer, "octo-org/lineage-year")
    oidc_expiry = _at(exchanged["expires_at"])
    assert oidc_expiry - datetime.now(UTC) < timedelta(hours=1, minutes=1)
    with http(server, exchanged["token"]) as client:
        me = client.get("/api/v1/whoami").json()
        response = client.post(
            "/api/v1/tokens", json={"kind": "pull", "project_id": project, "expires_in": YEAR, "name": "forever"}
        )
    assert response.status_code == 201, response.text
    minted = response.json()
    assert _at(minted["expires_at"]) == oidc_expiry, "the pull token outlives the OIDC token that minted it"
    assert minted["expiry_capped"] is True and minted["parent_id"] == me["credential_id"]


def test_build_tokens_creating_builds_never_outlive_the_first_credential(
    server: InProcessServer, issuer: LoopbackOidcIssuer
) -> None:
    project, _ = _trusted(server, "octo-org/lineage-chain")
    exchanged = _exchange(server, issuer, "octo-org/lineage-chain")
    oidc_expiry = _at(exchanged["expires_at"])
    token = exchanged["token"]
    for _generation in range(4):
        with api(server, token) as control:
            build = control.create_build(project)
        # A build token is meant to live 6 hours, but never longer than what created the build.
        assert build.token_expires_at <= oidc_expiry
        token = build.token
    with http(server, token) as client:
        assert client.get("/api/v1/whoami").json()["expires_at"] == exchanged["expires_at"]


def test_build_scoped_pull_token_cannot_renew_itself_through_pull_info(server: InProcessServer, tmp_path: Path) -> None:
    with api(server) as admin:
        project = admin.create_project("lineage pull-info").id
        owner = admin.create_token("project", "ci", project_id=project).token
    with api(server, owner) as control:
        build = control.create_build(project).build_id
        push_image(server, project, build, owner, tmp_path / "img")
        control.save_build(build)
        scoped = control.create_token("pull", "short", project_id=project, build_id=build, expires_in=2)
    scoped_expiry = scoped.expires_at
    assert scoped_expiry is not None
    token = scoped.token
    for _round in range(3):
        with api(server, token) as reader:
            renewed = reader.pull_info(build)
        assert renewed.token_expires_at <= scoped_expiry, "pull-info extended a build-scoped token"
        token = renewed.token
    # Once the first token expires, every token it led to is dead too.
    deadline = time.monotonic() + 10
    with http(server, token) as client:
        while (response := client.get("/api/v1/whoami")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert response.status_code == 401 and "expired at" in error_of(response)[1]


def test_revoking_a_token_revokes_everything_minted_from_it(server: InProcessServer, tmp_path: Path) -> None:
    with api(server) as admin:
        project = admin.create_project("lineage revoke").id
        parent = admin.create_token("project", "ci", project_id=project)
    with api(server, parent.token) as control:
        build = control.create_build(project)
        push_image(server, project, build.build_id, build.token, tmp_path / "img")
        control.save_build(build.build_id)
        reader = control.create_token("pull", "reader", project_id=project)
    with api(server, reader.token) as control:
        grandchild = control.pull_info(build.build_id)
    children = {"build token": build.token, "pull token": reader.token, "pull-info token": grandchild.token}
    for token in children.values():
        with http(server, token) as client:
            assert client.get("/api/v1/whoami").status_code == 200

    with api(server) as admin:
        result = admin.revoke_token(parent.id)
    for what, token in {"parent": parent.token, **children}.items():
        try:
            _refused_as_revoked(server, token, project)
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}") from None
    assert result.to_json() == {"id": parent.id, "revoked": True, "descendants_revoked": 3}
    with api(server) as admin:
        listed = {t.id: t for t in admin.list_tokens(project, include_inactive=True)}
    assert listed[reader.id].parent_id == parent.id and listed[reader.id].revoked_at is not None


def test_deleting_a_trust_relationship_revokes_what_was_exchanged_through_it(
    server: InProcessServer, issuer: LoopbackOidcIssuer
) -> None:
    project, trust_id = _trusted(server, "octo-org/lineage-trust")
    exchanged = _exchange(server, issuer, "octo-org/lineage-trust")["token"]
    raw_jwt = _oidc_jwt(issuer, "octo-org/lineage-trust")  # used directly as a password: exchanged on first sight
    with api(server, exchanged) as control:
        build_token = control.create_build(project).token
        pull_token = control.create_token("pull", "reader", project_id=project, expires_in=YEAR).token
    with http(server, raw_jwt) as client:
        assert client.get(f"/v2/{project}/tags/list").status_code in (200, 404)  # authenticated either way
    with api(server) as admin:
        removed = admin.remove_trust(project, trust_id)
    for token in (exchanged, build_token, pull_token):
        _refused_as_revoked(server, token, project)
    with http(server, raw_jwt) as client:
        response = client.get(f"/v2/{project}/tags/list")
    assert response.status_code == 401 and "was revoked" in error_of(response)[1]
    assert removed.to_json() == {"id": trust_id, "removed": True, "credentials_revoked": 4}


def test_trust_relationship_may_grant_delete(
    server: InProcessServer, issuer: LoopbackOidcIssuer, tmp_path: Path
) -> None:
    project, _ = _trusted(server, "octo-org/lineage-delete", permissions=["pull", "push", "delete"])
    plain, _ = _trusted(server, "octo-org/lineage-nodelete")
    with api(server) as admin:
        relationships = admin.list_trust(project)
    assert relationships[0].permissions == ["delete", "pull", "push"] and relationships[0].pull_only is False
    for repo, pid, expected in (("octo-org/lineage-delete", project, 202), ("octo-org/lineage-nodelete", plain, 403)):
        token = _exchange(server, issuer, repo)["token"]
        image = push_image(server, pid, "v1", token, tmp_path / repo.split("/")[1])
        with http(server, token) as client:
            response = client.delete(f"/v2/{pid}/manifests/{image.manifest.digest}")
        assert response.status_code == expected, response.text
    with api(server) as admin, pytest.raises(ControlError, match="permissions are drawn from"):
        admin.add_trust(project, repository="octo-org/other", permissions=["pull", "admin"])


# --- the store: lineage under concurrency, and the upgrade of an existing database ---------------------------


def _store(tmp_path: Path) -> ControlStore:
    database = Database(f"sqlite:///{tmp_path / 'metadata.db'}")
    database.migrate()
    return ControlStore(database)


def _mint(store: ControlStore, parent: CredentialRecord | None, *, ttl: timedelta | None = None) -> CredentialRecord:
    _token, stored = new_credential(
        CredentialKind.PULL,
        credential_id=new_id(),
        name="child",
        now=datetime.now(UTC),
        project="p",
        ttl=ttl,
        parent=None if parent is None else principal_of(parent),
    )
    return store.add_credential(credential_record(stored, project_id="p"))


def test_store_refuses_children_of_revoked_or_expired_parents_and_caps_expiry(tmp_path: Path) -> None:
    store = _store(tmp_path)
    root = _mint(store, None, ttl=timedelta(hours=1))
    # Even a row that claims to outlive its parent (a bug above, or a forged request) is capped on insert.
    _, stored = new_credential(
        CredentialKind.PULL, credential_id=new_id(), name="x", now=datetime.now(UTC), project="p", ttl=timedelta(days=9)
    )
    row = replace(credential_record(stored, project_id="p"), parent_id=root.id)
    assert store.add_credential(row).expires_at == root.expires_at
    store.revoke_credential(root.id)
    with pytest.raises(ParentInactive, match="revoked"):
        _mint(store, root)


def test_lineage_holds_while_mints_race_a_revocation(tmp_path: Path) -> None:
    """Threads keep minting children and grandchildren while another revokes the root: afterwards no
    credential below the root is alive, whichever transaction won each race."""
    store = _store(tmp_path)
    root = _mint(store, None, ttl=timedelta(hours=1))
    family = [root]
    lock = threading.Lock()
    started = threading.Event()
    refused = []

    def minter() -> None:
        for _ in range(25):
            with lock:
                parent = random.choice(family)
            try:
                child = _mint(store, parent)
            except ParentInactive:
                refused.append(parent.id)
                continue
            with lock:
                family.append(child)
                if len(family) > 10:
                    started.set()

    threads = [threading.Thread(target=minter) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert started.wait(30)
    revoked = store.revoke_credential(root.id)
    for thread in threads:
        thread.join()
    assert revoked >= 10 and refused, "the race did not happen: mint more or revoke earlier"
    rows = {row.id: row for row in store.list_credentials("p", include_inactive=True)}
    alive = [row for row in rows.values() if row.revoked_at is None]
    assert alive == [], f"{len(alive)} credentials outlived the revocation of their root"


def test_existing_database_upgrades_to_roots_with_default_permissions(tmp_path: Path) -> None:
    """A database written before lineage: credentials become roots with their kind's set, trust keeps its grant."""
    path = tmp_path / "metadata.db"
    database = Database(f"sqlite:///{path}")
    with database.write_engine.connect() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        command.upgrade(config, "0003")
        connection.commit()
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO projects (id, name, created_at, max_builds) VALUES ('p', 'p', ?, 5)", (now,))
        for credential_id, kind, permissions in (
            ("a1", "admin", []),
            ("p1", "project", [{"project": "p", "actions": ["pull", "push"], "build_id": None}]),
            ("l1", "pull", [{"project": "p", "actions": ["pull"], "build_id": None}]),
        ):
            db.execute(
                "INSERT INTO credentials (id, kind, name, token_hash, permissions, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (credential_id, kind, credential_id, hash_token(credential_id), json.dumps(permissions), now),
            )
        for trust_id, pull_only in (("t1", 1), ("t2", 0)):
            db.execute(
                "INSERT INTO trust_relationships (id, project_id, provider, issuer, owner, repository, pull_only,"
                " created_at) VALUES (?, 'p', 'github', 'https://issuer', 'o', ?, ?, ?)",
                (trust_id, trust_id, pull_only, now),
            )
    database.migrate()
    store = ControlStore(database)
    rows = {row.id: row for row in store.list_credentials(include_inactive=True)}
    assert {row.parent_id for row in rows.values()} == {None}
    assert principal_of(rows["a1"]).is_admin
    assert principal_of(rows["p1"]).permissions == (Permission("p", frozenset({"pull", "push"})),)
    assert principal_of(rows["l1"]).actions_on("p") == {"pull"}
    assert {row.id: sorted(row.permissions) for row in store.list_trust("p")} == {
        "t1": ["pull"],
        "t2": ["pull", "push"],
    }
    assert store.count_admin_credentials() == 1


def test_revocation_is_one_transaction_whatever_the_depth(tmp_path: Path) -> None:
    store = _store(tmp_path)
    chain = [_mint(store, None)]
    for _ in range(50):
        chain.append(_mint(store, chain[-1]))
    assert store.revoke_credential(chain[0].id) == 51
    assert store.revoke_credential(chain[0].id) == 0
