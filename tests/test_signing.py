"""Server keys (persistence, permissions, rotation), registry JWTs and scope intersection."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from cargohold.metadata.db import Database, sqlite_url
from cargohold.metadata.signing_keys import SigningKeyStore
from cargohold.server.auth import signing
from cargohold.server.auth.credentials import CredentialKind, Permission, Principal
from cargohold.server.auth.signing import (
    KeyError_,
    KeyRing,
    RegistryTokenError,
    RegistryTokenSigner,
    ResourceScope,
    ScopeError,
    ServerKey,
    UnknownSigningKey,
    database_keyring,
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

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


class FakeMonotonic:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def project_principal(project: str = "alpha") -> Principal:
    return Principal(CredentialKind.PROJECT, "1", "ci", (Permission(project, frozenset({"pull", "push"})),))


def pull_principal(project: str = "alpha", build_id: str | None = None) -> Principal:
    return Principal(CredentialKind.PULL, "2", "pull", (Permission(project, frozenset({"pull"}), build_id),))


ADMIN = Principal(CredentialKind.ADMIN, "0", "root")

# ------------------------------------------------------------------------------------------------ keys


@pytest.fixture(params=["sqlite", "postgresql"])
def keys(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SigningKeyStore]:
    """The signing-key table of a fresh, migrated database (the store every replica shares), on both."""
    if request.param == "sqlite":
        database = Database(sqlite_url(tmp_path / "metadata.db"))
    else:
        database = Database(request.getfixturevalue("pg_migrated_url"))
    database.migrate()
    yield SigningKeyStore(database)
    database.dispose()


def write_legacy_keys(data_dir: Path, ring: list[ServerKey], current: ServerKey) -> None:
    """``<data_dir>/keys/`` as Cargohold kept it before the keys moved into the database."""
    directory = data_dir / "keys"
    directory.mkdir(mode=0o700)
    for key in ring:
        path = directory / f"{key.kid}.pem"
        path.write_bytes(
            key.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        path.chmod(0o600)
    (directory / "current").write_text(current.kid)
    (directory / "current").chmod(0o600)


def test_first_start_creates_a_key_in_the_database_and_later_starts_reuse_it(keys: SigningKeyStore) -> None:
    ring = load_or_create_keyring(keys)
    assert [row.kid for row in keys.list_keys()] == [ring.current.kid]
    again = load_or_create_keyring(keys)
    assert again.current.kid == ring.current.kid and again.previous == ()


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path, keys: SigningKeyStore) -> None:
    kids: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        database = Database(keys.db.url)  # each "replica" has its own connections
        try:
            barrier.wait()
            kids.append(load_or_create_keyring(SigningKeyStore(database)).current.kid)
        finally:
            database.dispose()

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(kids) == 8
    # The count and the insert share SQLite's write lock, or PostgreSQL's advisory lock: one key for all.
    assert len(set(kids)) == 1 and len(keys.list_keys()) == 1


def test_key_files_of_an_older_version_are_imported_once(tmp_path: Path, keys: SigningKeyStore) -> None:
    clock = FakeClock()
    old, current = ServerKey.generate(), ServerKey.generate()
    write_legacy_keys(tmp_path, [old, current], current)
    before_upgrade = RegistryTokenSigner(KeyRing(current, (old,)), clock=clock)
    tokens = [
        before_upgrade.issue("ci", []).token,
        RegistryTokenSigner(KeyRing(old), clock=clock).issue("ci", []).token,
    ]

    ring = load_or_create_keyring(keys, tmp_path)
    assert ring.current.kid == current.kid and [k.kid for k in ring.previous] == [old.kid]
    signer = RegistryTokenSigner(ring, clock=clock)
    assert [signer.verify(token).subject for token in tokens] == ["ci", "ci"]
    # Later starts read the database; the files no longer matter.
    rotate_key(keys)
    assert load_or_create_keyring(keys, tmp_path).current.kid not in (old.kid, current.kid)


def test_group_readable_legacy_key_is_refused(tmp_path: Path, keys: SigningKeyStore) -> None:
    key = ServerKey.generate()
    write_legacy_keys(tmp_path, [key], key)
    os.chmod(tmp_path / "keys" / f"{key.kid}.pem", 0o640)
    with pytest.raises(KeyError_, match=r"readable by other users \(mode 0640\); run 'chmod 600"):
        load_or_create_keyring(keys, tmp_path)
    assert keys.list_keys() == []  # nothing half-imported


def test_renamed_legacy_key_file_is_detected(tmp_path: Path) -> None:
    key, other = ServerKey.generate(), ServerKey.generate()
    write_legacy_keys(tmp_path, [key], key)
    (tmp_path / "keys" / f"{key.kid}.pem").rename(tmp_path / "keys" / f"{other.kid}.pem")
    with pytest.raises(KeyError_):
        load_keyring(tmp_path)


def test_a_key_row_that_does_not_match_its_kid_is_refused(keys: SigningKeyStore) -> None:
    real, other = ServerKey.generate(), ServerKey.generate()
    pem = real.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    keys.add(other.kid, pem.decode("ascii"))
    with pytest.raises(KeyError_, match="holds the key with kid"):
        database_keyring(keys)


def test_rotation_signs_with_new_key_and_still_verifies_old_tokens(keys: SigningKeyStore) -> None:
    clock = FakeClock()
    old_ring = load_or_create_keyring(keys)
    old_token = RegistryTokenSigner(old_ring, clock=clock).issue("ci", []).token

    new_ring = rotate_key(keys)
    assert new_ring.current.kid != old_ring.current.kid
    assert [k.kid for k in new_ring.previous] == [old_ring.current.kid]
    assert database_keyring(keys).current.kid == new_ring.current.kid  # persisted

    signer = RegistryTokenSigner(new_ring, clock=clock)
    new_token = signer.issue("ci", []).token
    assert jwt.get_unverified_header(new_token)["kid"] == new_ring.current.kid
    assert signer.verify(old_token).subject == "ci"
    assert signer.verify(new_token).subject == "ci"

    retired = retire_key(keys, old_ring.current.kid)
    with pytest.raises(RegistryTokenError, match="no longer trusts"):
        RegistryTokenSigner(retired, clock=clock).verify(old_token)
    with pytest.raises(KeyError_, match="current signing key"):
        retire_key(keys, new_ring.current.kid)
    with pytest.raises(KeyError_, match="no signing key"):
        retire_key(keys, old_ring.current.kid)


def test_a_replica_picks_up_a_key_rotated_by_another(keys: SigningKeyStore) -> None:
    """Replica A rotates; B verifies A's new tokens after one re-read, and signs with the new key after its
    periodic reload. Re-reads for unknown kids are limited to one a second."""
    clock, monotonic = FakeClock(), FakeMonotonic(100.0)
    load_or_create_keyring(keys)
    replica_a = RegistryTokenSigner(database_keyring(keys), clock=clock, reload=lambda: database_keyring(keys))
    replica_b = RegistryTokenSigner(
        database_keyring(keys), clock=clock, reload=lambda: database_keyring(keys), monotonic=monotonic
    )

    rotate_key(keys)
    replica_a.refresh()
    token = replica_a.issue("ci", []).token
    with pytest.raises(UnknownSigningKey):
        replica_b.verify(token)
    assert replica_b.refresh_for_unknown_kid()
    assert replica_b.verify(token).subject == "ci"
    assert jwt.get_unverified_header(replica_b.issue("ci", []).token)["kid"] == replica_a.keyring.current.kid

    forged = RegistryTokenSigner(KeyRing(ServerKey.generate()), clock=clock).issue("ci", []).token
    with pytest.raises(UnknownSigningKey):
        replica_b.verify(forged)
    monotonic.now += 0.5
    assert not replica_b.refresh_for_unknown_kid()  # re-read half a second ago: not again
    monotonic.now += 0.6
    assert replica_b.refresh_for_unknown_kid()


# ----------------------------------------------------------------------------------------- registry JWT


def test_registry_token_claims_and_response(tmp_path: Path) -> None:
    clock = FakeClock()
    signer = RegistryTokenSigner(KeyRing(ServerKey.generate()), clock=clock, ttl=300)
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
    signer = RegistryTokenSigner(KeyRing(ServerKey.generate()), clock=clock, ttl=300, leeway=30)
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
    keys: SigningKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    old_ring = load_or_create_keyring(keys)
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
    rotate_key(keys)
    signer.keyring = retire_key(keys, old_ring.current.kid)
    with pytest.raises(RegistryTokenError, match="no longer trusts"):
        signer.verify(token)

    # Expiry is checked on every cached use.
    signer.keyring = database_keyring(keys)
    fresh = signer.issue("ci", []).token
    signer.verify(fresh)
    clock.now += 331
    with pytest.raises(RegistryTokenError, match="expired"):
        signer.verify(fresh)


def test_the_verified_token_cache_is_bounded(keys: SigningKeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signing, "VERIFIED_TOKENS_CACHED", 3)
    signer = RegistryTokenSigner(load_or_create_keyring(keys))
    tokens = [signer.issue(f"ci-{n}", []).token for n in range(5)]
    for token in tokens:
        signer.verify(token)
    assert len(signer._verified) == 3
    assert signer.verify(tokens[0]).subject == "ci-0"  # evicted, so verified again


def test_registry_token_with_foreign_algorithm_is_refused(tmp_path: Path) -> None:
    signer = RegistryTokenSigner(KeyRing(ServerKey.generate()))
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
    signer = RegistryTokenSigner(KeyRing(ServerKey.generate()))
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


def test_unreadable_keys_in_the_database_keep_the_loaded_ring(keys: SigningKeyStore) -> None:
    """A broken row (a hand-edited table) refuses tokens of unknown keys instead of failing every request."""
    ring = load_or_create_keyring(keys)
    signer = RegistryTokenSigner(ring, reload=lambda: database_keyring(keys))
    keys.add(ServerKey.generate().kid, "not a PEM")
    assert not signer.refresh_for_unknown_kid()
    assert signer.keyring is ring
