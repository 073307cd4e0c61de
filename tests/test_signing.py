"""Server keys (persistence, permissions, rotation), registry JWTs and scope intersection."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import jwt
import pytest

from cargohold.server.auth import signing
from cargohold.server.auth.credentials import CredentialKind, Permission, Principal
from cargohold.server.auth.signing import (
    KeyError_,
    RegistryTokenError,
    RegistryTokenSigner,
    ResourceScope,
    ScopeError,
    ServerKey,
    granted_access,
    load_keyring,
    load_or_create_keyring,
    parse_scope,
    parse_scopes,
    retire_key,
    rotate_key,
)


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def project_principal(project: str = "alpha") -> Principal:
    return Principal(CredentialKind.PROJECT, "1", "ci", (Permission(project, frozenset({"pull", "push"})),))


def pull_principal(project: str = "alpha", build_id: str | None = None) -> Principal:
    return Principal(CredentialKind.PULL, "2", "pull", (Permission(project, frozenset({"pull"}), build_id),))


ADMIN = Principal(CredentialKind.ADMIN, "0", "root")

# ------------------------------------------------------------------------------------------------ keys


def test_first_start_creates_a_private_key_and_later_starts_reuse_it(tmp_path: Path) -> None:
    ring = load_or_create_keyring(tmp_path)
    key_file = tmp_path / "keys" / f"{ring.current.kid}.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    again = load_or_create_keyring(tmp_path)
    assert again.current.kid == ring.current.kid and again.previous == ()
    assert not list((tmp_path / "keys").glob(".*.tmp"))


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    kids: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        kids.append(load_or_create_keyring(tmp_path).current.kid)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(kids) == 8 and len(set(kids)) == 1
    assert len(list((tmp_path / "keys").glob("*.pem"))) == 1


def test_group_readable_key_is_refused(tmp_path: Path) -> None:
    ring = load_or_create_keyring(tmp_path)
    key_file = tmp_path / "keys" / f"{ring.current.kid}.pem"
    os.chmod(key_file, 0o640)
    with pytest.raises(KeyError_, match=r"readable by other users \(mode 0640\); run 'chmod 600"):
        load_keyring(tmp_path)


def test_renamed_key_file_is_detected(tmp_path: Path) -> None:
    ring = load_or_create_keyring(tmp_path)
    other = ServerKey.generate()
    (tmp_path / "keys" / f"{ring.current.kid}.pem").rename(tmp_path / "keys" / f"{other.kid}.pem")
    with pytest.raises(KeyError_):
        load_keyring(tmp_path)


def test_rotation_signs_with_new_key_and_still_verifies_old_tokens(tmp_path: Path) -> None:
    clock = FakeClock()
    old_ring = load_or_create_keyring(tmp_path)
    old_token = RegistryTokenSigner(old_ring, clock=clock).issue("ci", []).token

    new_ring = rotate_key(tmp_path)
    assert new_ring.current.kid != old_ring.current.kid
    assert [k.kid for k in new_ring.previous] == [old_ring.current.kid]
    assert load_keyring(tmp_path).current.kid == new_ring.current.kid  # persisted

    signer = RegistryTokenSigner(new_ring, clock=clock)
    new_token = signer.issue("ci", []).token
    assert jwt.get_unverified_header(new_token)["kid"] == new_ring.current.kid
    assert signer.verify(old_token).subject == "ci"
    assert signer.verify(new_token).subject == "ci"

    retired = retire_key(tmp_path, old_ring.current.kid)
    with pytest.raises(RegistryTokenError, match="no longer trusts"):
        RegistryTokenSigner(retired, clock=clock).verify(old_token)
    with pytest.raises(KeyError_, match="current signing key"):
        retire_key(tmp_path, new_ring.current.kid)


# ----------------------------------------------------------------------------------------- registry JWT


def test_registry_token_claims_and_response(tmp_path: Path) -> None:
    clock = FakeClock()
    signer = RegistryTokenSigner(load_or_create_keyring(tmp_path), clock=clock, ttl=300)
    access = [ResourceScope("repository", "alpha/app", ("pull", "push"))]
    issued = signer.issue("project-token:1", access)
    header = jwt.get_unverified_header(issued.token)
    assert header["alg"] == "EdDSA" and header["kid"] == signer.keyring.current.kid
    raw = jwt.decode(issued.token, options={"verify_signature": False})
    assert raw["aud"] == "cargohold" and raw["sub"] == "project-token:1"
    assert raw["exp"] - raw["iat"] == 300 and raw["nbf"] == raw["iat"] and raw["jti"]
    assert raw["access"] == [{"type": "repository", "name": "alpha/app", "actions": ["pull", "push"]}]
    body = issued.response_body()
    assert body["token"] == body["access_token"] == issued.token and body["expires_in"] == 300
    claims = signer.verify(issued.token)
    assert claims.allows("alpha/app", "push") and not claims.allows("alpha/other", "pull")


def test_registry_token_expiry_and_tampering(tmp_path: Path) -> None:
    clock = FakeClock()
    signer = RegistryTokenSigner(load_or_create_keyring(tmp_path), clock=clock, ttl=300, leeway=30)
    token = signer.issue("ci", []).token
    clock.now += 329
    signer.verify(token)
    clock.now += 2
    with pytest.raises(RegistryTokenError, match="expired"):
        signer.verify(token)
    clock.now -= 331
    head, payload, sig = token.split(".")
    forged_sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    with pytest.raises(RegistryTokenError, match="signature is invalid"):
        signer.verify(f"{head}.{payload}.{forged_sig}")
    other_service = RegistryTokenSigner(signer.keyring, service="elsewhere", clock=clock)
    with pytest.raises(RegistryTokenError):
        other_service.verify(token)


def test_a_verified_token_is_remembered_but_expiry_and_retired_keys_still_refuse_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    old_ring = load_or_create_keyring(tmp_path)
    signer = RegistryTokenSigner(old_ring, clock=clock, ttl=300, leeway=30)
    token = signer.issue("ci", [ResourceScope("repository", "alpha/app", ("pull",))]).token
    decoded: list[str] = []
    real_decode = jwt.decode

    def counting_decode(*args: object, **kwargs: object) -> object:
        decoded.append("x")
        return real_decode(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jwt, "decode", counting_decode)
    first = signer.verify(token)
    assert signer.verify(token) == first and signer.verify(token).allows("alpha/app", "pull")
    assert len(decoded) == 1  # the signature was checked once

    # A key retired while the token is cached: the token is refused at once, with the usual reason.
    rotate_key(tmp_path)
    signer.keyring = retire_key(tmp_path, old_ring.current.kid)
    with pytest.raises(RegistryTokenError, match="no longer trusts"):
        signer.verify(token)

    # Expiry is checked on every cached use.
    signer.keyring = load_keyring(tmp_path)
    fresh = signer.issue("ci", []).token
    signer.verify(fresh)
    clock.now += 331
    with pytest.raises(RegistryTokenError, match="expired"):
        signer.verify(fresh)


def test_the_verified_token_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signing, "VERIFIED_TOKENS_CACHED", 3)
    signer = RegistryTokenSigner(load_or_create_keyring(tmp_path))
    tokens = [signer.issue(f"ci-{n}", []).token for n in range(5)]
    for token in tokens:
        signer.verify(token)
    assert len(signer._verified) == 3
    assert signer.verify(tokens[0]).subject == "ci-0"  # evicted, so verified again


def test_registry_token_with_foreign_algorithm_is_refused(tmp_path: Path) -> None:
    signer = RegistryTokenSigner(load_or_create_keyring(tmp_path))
    forged = jwt.encode(
        {"sub": "x", "access": []}, "s" * 32, algorithm="HS256", headers={"kid": signer.keyring.current.kid}
    )
    with pytest.raises(RegistryTokenError, match="only accepts EdDSA"):
        signer.verify(forged)


# --------------------------------------------------------------------------------------------- scopes


def test_parse_scope_forms() -> None:
    assert parse_scope("repository:alpha/app:push,pull") == ResourceScope("repository", "alpha/app", ("pull", "push"))
    assert parse_scope("repository:localhost:5000/alpha:pull").name == "localhost:5000/alpha"
    assert parse_scope("repository(plugin):alpha:pull").type == "repository"
    assert parse_scope("registry:catalog:*") == ResourceScope("registry", "catalog", ("*",))


@pytest.mark.parametrize(
    "bad",
    [
        "repository",
        "repository:alpha",
        "repository:alpha:",
        ":alpha:pull",
        "repository::pull",
        "Repo!:alpha:pull",
        "repository:alpha:pu$h",
    ],
)
def test_malformed_scopes_are_explained(bad: str) -> None:
    with pytest.raises(ScopeError, match="scope"):
        parse_scope(bad)


def test_multiple_scope_params_are_merged() -> None:
    scopes = parse_scopes(["repository:alpha/app:pull", "repository:alpha/app:push repository:beta:pull"])
    assert scopes == [
        ResourceScope("repository", "alpha/app", ("pull", "push")),
        ResourceScope("repository", "beta", ("pull",)),
    ]


def test_pull_token_asking_for_push_gets_only_pull() -> None:
    granted = granted_access(pull_principal(), parse_scopes(["repository:alpha/app:pull,push"]))
    assert granted == [ResourceScope("repository", "alpha/app", ("pull",))]


def test_pull_token_asking_only_push_gets_nothing() -> None:
    assert granted_access(pull_principal(), parse_scopes(["repository:alpha:push"])) == []


def test_project_a_token_asking_for_repository_b_gets_nothing() -> None:
    requested = parse_scopes(["repository:beta/app:pull,push", "repository:alphabet:pull", "repository:alpha/app:pull"])
    assert granted_access(project_principal("alpha"), requested) == [
        ResourceScope("repository", "alpha/app", ("pull",))
    ]


def test_non_admins_never_get_catalog_delete_or_wildcards() -> None:
    requested = parse_scopes(["registry:catalog:*", "repository:alpha:*", "repository:alpha:delete"])
    assert granted_access(project_principal(), requested) == [ResourceScope("repository", "alpha", ("pull", "push"))]


def test_admin_gets_everything_requested_that_exists() -> None:
    requested = parse_scopes(
        [
            "registry:catalog:*",
            "repository:anything/here:*",
            "repository:x:frobnicate",
            "repository:INVALID:pull",
            "unknown:thing:pull",
        ]
    )
    assert granted_access(ADMIN, requested) == [
        ResourceScope("registry", "catalog", ("*",)),
        ResourceScope("repository", "anything/here", ("delete", "pull", "push")),
    ]


def test_build_scoped_pull_carries_the_build_into_the_token(tmp_path: Path) -> None:
    granted = granted_access(pull_principal("alpha", "build-7"), parse_scopes(["repository:alpha:pull"]))
    assert granted == [ResourceScope("repository", "alpha", ("pull",), "build-7")]
    signer = RegistryTokenSigner(load_or_create_keyring(tmp_path))
    claims = signer.verify(signer.issue("pull", granted).token)
    assert claims.build_restriction("alpha") == "build-7"


def test_unrestricted_pull_beats_build_restriction_and_two_builds_cancel() -> None:
    both = Principal(
        CredentialKind.OIDC,
        "3",
        "o",
        (Permission("alpha", frozenset({"pull"}), "b1"), Permission("alpha", frozenset({"pull", "push"}))),
    )
    assert granted_access(both, parse_scopes(["repository:alpha:pull"])) == [
        ResourceScope("repository", "alpha", ("pull",))
    ]
    two = Principal(
        CredentialKind.OIDC,
        "4",
        "o",
        (Permission("alpha", frozenset({"pull"}), "b1"), Permission("alpha", frozenset({"pull"}), "b2")),
    )
    assert granted_access(two, parse_scopes(["repository:alpha:pull"])) == []
