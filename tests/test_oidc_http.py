"""GitHub Actions OIDC through HTTP: exchange, raw-JWT credentials, verification failures and trust matching.

A loopback issuer (``tests/oidc_issuer.py``) signs GitHub-shaped tokens; the server trusts it with
its ``oidc_issuers`` setting and keeps its default audience (its own URL). Every test uses its own repository
name, because trust matching considers every relationship for a repository across all projects. A second
issuer is used for key rotation: its JWKS may be re-read at most every 30 s, which the rotation test steps
over by moving the server's JWKS clock instead of waiting.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from cargohold.client.control import ControlError
from cargohold.clock import utc_now
from cargohold.sample import write_sample_image
from cargohold.schemas import TrustRelationship
from control_helpers import api, b64url, error_of, http, push_image
from oidc_issuer import REPO, LoopbackOidcIssuer
from servers import InProcessServer, running

JWKS_REFRESH_INTERVAL = 30.0
"""The server's minimum interval between two reads of one issuer's key set (``OidcSettings``)."""


@pytest.fixture(scope="module")
def issuer() -> Iterator[LoopbackOidcIssuer]:
    with LoopbackOidcIssuer() as running:
        yield running


@pytest.fixture(scope="module")
def rotating_issuer() -> Iterator[LoopbackOidcIssuer]:
    with LoopbackOidcIssuer() as running:
        yield running


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, issuer: LoopbackOidcIssuer, rotating_issuer: LoopbackOidcIssuer
) -> Iterator[InProcessServer]:
    proc = InProcessServer(
        data_dir=tmp_path_factory.mktemp("oidc") / "data",
        settings={"oidc_issuers": (issuer.url, rotating_issuer.url)},
    )
    issuer.audience = rotating_issuer.audience = proc.url  # the server's default audience is its public URL
    with running(proc, check_tracebacks=True):
        yield proc


def mint(issuer: LoopbackOidcIssuer, repo: str, preset: str = "push", **overrides: Any) -> str:
    """A token from ``repo`` (the issuer's presets name one fixed repository; rewrite every claim naming it)."""
    base = issuer.claims(preset)
    renamed = {
        "repository": repo,
        "repository_owner": repo.split("/")[0],
        "sub": base["sub"].replace(REPO, repo),
        "workflow_ref": base["workflow_ref"].replace(REPO, repo),
        "job_workflow_ref": base["job_workflow_ref"].replace(REPO, repo),
    }
    return issuer.mint(preset, **{**renamed, **overrides})


def exchange(server: InProcessServer, jwt_text: str) -> httpx.Response:
    with http(server) as client:
        return client.post("/auth/oidc/github-actions", json={"token": jwt_text})


def trusted_project(server: InProcessServer, repo: str, **trust: Any) -> tuple[str, TrustRelationship]:
    with api(server) as admin:
        project = admin.create_project(f"oidc {repo}").id
        relationship = admin.add_trust(project, repository=repo, **trust)
    return project, relationship


def test_exchange_push_provenance_and_replay(
    server: InProcessServer, issuer: LoopbackOidcIssuer, tmp_path: Path
) -> None:
    project, relationship = trusted_project(server, "octo-org/app1")
    assert relationship.repository_id is None  # learned on first use
    jwt_text = mint(issuer, "octo-org/app1", sha="c" * 40, run_id="555", run_attempt="2")
    response = exchange(server, jwt_text)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] is True and body["projects"] == [project]
    assert body["token"].startswith("cho_") and body["expires_at"].endswith("Z")

    with api(server, body["token"]) as control:
        who = control.whoami()
        assert who.kind == "oidc" and [p.to_json() for p in who.permissions] == [
            {"project": project, "actions": ["pull", "push"], "build_id": None}
        ]
        build = control.create_build(project, provenance={"repository": "forged/by-client"})
        image = push_image(server, project, build.build_id, body["token"], tmp_path / "img")
        saved = control.save_build(build.build_id)
        shown = control.get_build(build.build_id)
    assert saved.digest == str(image.manifest.digest)
    provenance = shown.provenance
    assert provenance["repository"] == "octo-org/app1"  # verified claims win over what the client reports
    assert (provenance["sha"], provenance["run_id"], provenance["run_attempt"]) == ("c" * 40, "555", "2")
    assert provenance["workflow"] == "CI"
    assert provenance["job_workflow_ref"] == "octo-org/app1/.github/workflows/ci.yml@refs/heads/main"
    assert "reported_by_client" not in provenance

    with api(server) as admin:
        learned = admin.list_trust(project)[0]
    assert (learned.repository_owner_id, learned.repository_id) == ("1001", "2002")

    replayed = exchange(server, jwt_text)
    assert replayed.status_code == 401
    assert "has already been exchanged" in replayed.json()["error"]


def test_concurrent_exchanges_of_one_token_have_one_winner(server: InProcessServer, issuer: LoopbackOidcIssuer) -> None:
    trusted_project(server, "octo-org/race")
    jwt_text = mint(issuer, "octo-org/race")
    barrier = threading.Barrier(4)
    results: list[int] = []

    def attempt() -> None:
        with http(server) as client:
            barrier.wait()
            results.append(client.post("/auth/oidc/github-actions", json={"token": jwt_text}).status_code)

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [200, 401, 401, 401]


def test_raw_jwt_works_as_a_password_for_many_requests(
    server: InProcessServer, issuer: LoopbackOidcIssuer, tmp_path: Path
) -> None:
    project, _ = trusted_project(server, "octo-org/raw")
    jwt_text = mint(issuer, "octo-org/raw")
    with http(server, jwt_text) as client:
        for _ in range(3):
            who = client.get("/api/v1/whoami")
            assert who.status_code == 200, who.text
        assert who.json()["kind"] == "oidc"
        created = client.post(f"/api/v1/projects/{project}/builds", json={})
        assert created.status_code == 201
    with http(server, jwt_text, bearer=True) as client:
        assert client.get(f"/api/v1/projects/{project}").status_code == 200

    # skopeo speaks Docker token auth with the raw JWT as the password: /token, then Bearer JWTs.
    layout = tmp_path / "layout"
    write_sample_image(layout, layers=1, layer_size=1024, seed=9, ref="img")
    copied = subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            f"x-token:{jwt_text}",
            f"oci:{layout}:img",
            f"docker://{server.host}/{project}:raw",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert copied.returncode == 0, copied.stderr
    with http(server, jwt_text) as client:
        assert "raw" in client.get(f"/v2/{project}/tags/list").json()["tags"]

    # Remembered by hash: the JWT itself may be presented again, but not exchanged again.
    replayed = exchange(server, jwt_text)
    assert replayed.status_code == 401 and "already been exchanged" in replayed.json()["error"]


def _rsa_public_pem(issuer: LoopbackOidcIssuer) -> bytes:
    return (
        issuer.private_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}."


def _hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def test_bad_tokens_are_refused_with_precise_messages(server: InProcessServer, issuer: LoopbackOidcIssuer) -> None:
    project, _ = trusted_project(server, "octo-org/strict")
    now = int(time.time())
    kid = issuer.current_kid
    good_claims = issuer.claims(
        "push",
        repository="octo-org/strict",
        job_workflow_ref="octo-org/strict/.github/workflows/ci.yml@refs/heads/main",
    )
    stranger = LoopbackOidcIssuer()  # never started: its key signs, presented under the trusted issuer's kid
    cases = {
        "audience": (
            mint(issuer, "octo-org/strict", aud="https://elsewhere.example"),
            f"the token's audience is 'https://elsewhere.example', this server expects '{server.url}'",
        ),
        "expired": (mint(issuer, "octo-org/strict", iat=now - 500, exp=now - 200), "the token expired at"),
        "future iat": (mint(issuer, "octo-org/strict", iat=now + 300, exp=now + 600), "s in the future"),
        "alg none": (
            _unsigned({"alg": "none", "typ": "JWT", "kid": kid}, good_claims),
            "the token is unsigned (alg 'none'); only RS256-signed tokens are accepted",
        ),
        "HS256 with the public key": (
            _hs256({"alg": "HS256", "typ": "JWT", "kid": kid}, good_claims, _rsa_public_pem(issuer)),
            "the token is signed with 'HS256'; only RS256 is accepted",
        ),
        "wrong issuer": (
            mint(issuer, "octo-org/strict", iss="https://token.actions.evil.example"),
            "the token was issued by 'https://token.actions.evil.example', which this server does not trust",
        ),
        "forged signature": (
            jwt.encode(good_claims, stranger.private_key(), algorithm="RS256", headers={"kid": kid}),
            "the token's signature does not verify",
        ),
        "garbage": ("not-a-jwt", "the token is not a JWT"),
    }
    for what, (token, expected) in cases.items():
        response = exchange(server, token)
        assert response.status_code == 401, (what, response.text)
        assert response.json()["ok"] is False
        assert expected in response.json()["error"], (what, response.json())
        if what == "garbage":
            continue
        # The same token as a registry password is refused with the same explanation.
        with http(server, token) as client:
            direct = client.get(f"/v2/{project}/tags/list")
        assert direct.status_code == 401, (what, direct.text)
        assert expected in error_of(direct)[1], (what, direct.text)


def test_resurrected_repository_is_refused_once_ids_are_known(
    server: InProcessServer, issuer: LoopbackOidcIssuer
) -> None:
    project, relationship = trusted_project(server, "octo-org/reborn")
    first = exchange(server, mint(issuer, "octo-org/reborn", repository_id="5005", repository_owner_id="1001"))
    assert first.status_code == 200, first.text
    impostor = exchange(server, mint(issuer, "octo-org/reborn", repository_id="6006", repository_owner_id="1001"))
    assert impostor.status_code == 403
    error = impostor.json()["error"]
    assert "the repository 'octo-org/reborn' has id 6006 but the trust relationship was set up with id 5005" in error
    new_owner = exchange(server, mint(issuer, "octo-org/reborn", repository_id="5005", repository_owner_id="7777"))
    assert new_owner.status_code == 403
    assert (
        "the owner 'octo-org' has id 7777 but the trust relationship was set up with id 1001"
        in new_owner.json()["error"]
    )
    assert relationship.id in error and project in error


def test_pull_request_target_needs_an_explicit_opt_in(server: InProcessServer, issuer: LoopbackOidcIssuer) -> None:
    trusted_project(server, "octo-org/prt")
    refused = exchange(server, mint(issuer, "octo-org/prt", "pull_request_target"))
    assert refused.status_code == 403
    assert "event 'pull_request_target' is refused unless explicitly allowed" in refused.json()["error"]
    assert exchange(server, mint(issuer, "octo-org/prt", "pull_request")).status_code == 200

    allowed_project, relationship = trusted_project(server, "octo-org/prt-ok", allow_events=["pull_request_target"])
    assert relationship.allow_events == ["pull_request_target"]
    allowed = exchange(server, mint(issuer, "octo-org/prt-ok", "pull_request_target"))
    assert allowed.status_code == 200 and allowed.json()["projects"] == [allowed_project]


def test_pull_only_relationship_cannot_push(server: InProcessServer, issuer: LoopbackOidcIssuer) -> None:
    project, relationship = trusted_project(server, "octo-org/reader", pull_only=True)
    assert relationship.pull_only is True
    token = exchange(server, mint(issuer, "octo-org/reader")).json()["token"]
    with http(server, token) as client:
        assert client.get(f"/api/v1/projects/{project}").status_code == 200
        upload = client.post(f"/v2/{project}/blobs/uploads/")
        assert upload.status_code == 403 and error_of(upload)[0] == "DENIED"
        build = client.post(f"/api/v1/projects/{project}/builds", json={})
        assert build.status_code == 403 and error_of(build)[0] == "DENIED"


def test_mismatches_are_listed_without_leaking_other_projects(
    server: InProcessServer, issuer: LoopbackOidcIssuer
) -> None:
    secret_project, secret_rel = trusted_project(
        server, "octo-org/vaulted", workflow="secret-deploy.yml", environment="vault-prod"
    )
    project, relationship = trusted_project(
        server,
        "octo-org/mine",
        workflow="release.yml",
        environment="production",
        ref_pattern="refs/tags/v*",
        runner_environment="self-hosted",
    )
    refused = exchange(server, mint(issuer, "octo-org/mine"))
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert f"relationship {relationship.id} (project {project})" in error
    assert "ref 'refs/heads/main' does not match 'refs/tags/v*'" in error
    assert (
        "workflow is 'octo-org/mine/.github/workflows/ci.yml', the relationship requires "
        "'octo-org/mine/.github/workflows/release.yml'"
    ) in error
    assert "the job has no environment, the relationship requires 'production'" in error
    assert "runner_environment is 'github-hosted', the relationship requires 'self-hosted'" in error
    for secret in (secret_project, secret_rel.id, "secret-deploy", "vault-prod", "vaulted"):
        assert secret not in error

    staging = exchange(server, mint(issuer, "octo-org/mine", "environment", environment="staging"))
    assert "environment is 'staging', the relationship requires 'production'" in staging.json()["error"]

    unknown = exchange(server, mint(issuer, "octo-org/nobody"))
    assert unknown.status_code == 403
    assert unknown.json()["error"] == "no trust relationship for repository octo-org/nobody"

    workflow_file = "octo-org/mine/.github/workflows/release.yml@refs/tags/v2.0.0"
    accepted = exchange(
        server,
        mint(
            issuer,
            "octo-org/mine",
            "environment",
            environment="production",
            ref="refs/tags/v2.0.0",
            job_workflow_ref=workflow_file,
            runner_environment="self-hosted",
        ),
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["projects"] == [project]


class JwksClock:
    """The server's JWKS cache clock, moved by the test (wall time plus ``offset`` seconds)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> datetime:
        return utc_now() + timedelta(seconds=self.offset)


def test_unknown_kid_is_accepted_once_the_jwks_publishes_it(
    server: InProcessServer, rotating_issuer: LoopbackOidcIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown ``kid`` re-reads the key set at most every 30 s; once that has passed, a key published since
    is found. The wait is stepped over on the cache's clock (the one seam ``JwksCache`` reads time through)."""
    clock = JwksClock()
    monkeypatch.setattr(server.state.oidc.verifier.jwks, "_clock", clock)
    clock.offset = 3600.0  # past any earlier read of this issuer's keys by the module's other tests
    project, _ = trusted_project(server, "octo-org/rotating", issuer=rotating_issuer.url)
    kid = rotating_issuer.add_key(publish=False, make_current=False)

    refused = exchange(server, mint(rotating_issuer, "octo-org/rotating", kid=kid))
    assert refused.status_code == 401
    assert refused.json() == {
        "ok": False,
        "error": f"the token's signing key {kid!r} is not published by {rotating_issuer.url}",
    }

    rotating_issuer.publish_key(kid)
    too_soon = exchange(server, mint(rotating_issuer, "octo-org/rotating", kid=kid))
    assert too_soon.status_code == 401
    assert "re-read less than 30 s ago; not re-reading it again yet" in too_soon.json()["error"]

    clock.offset += JWKS_REFRESH_INTERVAL + 0.5
    response = exchange(server, mint(rotating_issuer, "octo-org/rotating", kid=kid))
    assert response.status_code == 200, response.text
    assert response.json()["projects"] == [project]


def test_a_relationship_only_trusts_its_own_issuer(
    server: InProcessServer, issuer: LoopbackOidcIssuer, rotating_issuer: LoopbackOidcIssuer
) -> None:
    """Two trusted issuers can both mint a token naming octo-org/bound; only the bound one may use it."""
    _project, relationship = trusted_project(server, "octo-org/bound", issuer=issuer.url)
    assert relationship.issuer == issuer.url
    foreign = exchange(server, mint(rotating_issuer, "octo-org/bound"))
    assert foreign.status_code == 403
    assert foreign.json() == {"ok": False, "error": "no trust relationship for repository octo-org/bound"}
    assert exchange(server, mint(issuer, "octo-org/bound")).json()["ok"] is True
    with api(server) as admin, pytest.raises(ControlError, match="issuer must be one this server trusts"):
        admin.add_trust(_project, repository="octo-org/other", issuer="https://evil.example")
