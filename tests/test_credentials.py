"""Token format, offline validation, hashing and credential rules."""

from __future__ import annotations

import math
import zlib
from datetime import UTC, datetime, timedelta

import pytest

from cargohold.server.auth.credentials import (
    BASE62_ALPHABET,
    RANDOM_LENGTH,
    TOKEN_LENGTH,
    TOKEN_PATTERN,
    CredentialError,
    CredentialExpired,
    CredentialKind,
    CredentialRevoked,
    Permission,
    PermissionNotHeld,
    PermissionSetError,
    StoredCredential,
    TokenFormatError,
    checksum,
    generate_token,
    hash_token,
    is_valid_token,
    new_credential,
    parse_token,
    permission_set,
    permissions_from_json,
    permissions_to_json,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "prefix"),
    [
        (CredentialKind.ADMIN, "cha_"),
        (CredentialKind.PROJECT, "chp_"),
        (CredentialKind.PULL, "chl_"),
        (CredentialKind.OIDC, "cho_"),
    ],
)
def test_generated_tokens_have_prefix_length_and_valid_checksum(kind: CredentialKind, prefix: str) -> None:
    token = generate_token(kind)
    assert token.startswith(prefix)
    assert len(token) == TOKEN_LENGTH == 40
    assert parse_token(token) is kind
    assert TOKEN_PATTERN.fullmatch(token)
    random_part = token[4 : 4 + RANDOM_LENGTH]
    # The checksum is reproducible by an offline scanner from the documented recipe alone.
    value = zlib.crc32(random_part.encode())
    digits = ""
    for _ in range(6):
        value, rem = divmod(value, 62)
        digits = BASE62_ALPHABET[rem] + digits
    assert token[-6:] == digits == checksum(random_part)


def test_entropy_is_at_least_160_bits_and_tokens_differ() -> None:
    assert RANDOM_LENGTH * math.log2(len(BASE62_ALPHABET)) >= 160
    tokens = {generate_token(CredentialKind.PROJECT) for _ in range(200)}
    assert len(tokens) == 200


def test_checksum_catches_a_single_changed_character() -> None:
    token = generate_token(CredentialKind.PULL)
    body_index = 10
    replacement = "A" if token[body_index] != "A" else "B"
    tampered = token[:body_index] + replacement + token[body_index + 1 :]
    with pytest.raises(TokenFormatError, match="checksum does not match"):
        parse_token(tampered)
    assert not is_valid_token(tampered)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "no token was given"),
        ("ghp_" + "a" * 36, "not a Cargohold token"),
        ("eyJhbGciOiJFZERTQSJ9.e30.sig", "not a Cargohold token"),
        ("chp_abc", "has 7 characters"),
        ("chp_" + "!" * 36, "characters other than letters and digits"),
    ],
)
def test_malformed_tokens_are_explained(value: str, message: str) -> None:
    with pytest.raises(TokenFormatError, match=message):
        parse_token(value)


def test_scanner_pattern_finds_tokens_in_text() -> None:
    token = generate_token(CredentialKind.OIDC)
    found = TOKEN_PATTERN.findall(f"export CARGOHOLD_TOKEN={token}\nother=chp_short")
    assert found == [token]


def test_hash_is_sha256_and_never_the_token() -> None:
    token = generate_token(CredentialKind.ADMIN)
    digest = hash_token(token)
    assert len(digest) == 64 and token not in digest
    assert hash_token(token) == digest


def test_project_token_grants_push_and_pull_on_one_project() -> None:
    token, row = new_credential(CredentialKind.PROJECT, credential_id="1", name="ci", project="web", now=NOW)
    assert token.startswith("chp_") and row.token_hash == hash_token(token)
    assert row.expires_at is None
    principal = row.authenticate(token, NOW)
    assert principal.permissions == (Permission("web", frozenset({"pull", "push"})),)
    assert not principal.is_admin


def test_pull_token_defaults_to_one_hour_and_can_be_narrowed_to_a_build() -> None:
    token, row = new_credential(
        CredentialKind.PULL, credential_id="2", name="deploy", project="web", build_id="b123", now=NOW
    )
    assert row.expires_at == NOW + timedelta(hours=1)
    assert row.permissions == (Permission("web", frozenset({"pull"}), "b123"),)
    row.authenticate(token, NOW + timedelta(minutes=59))
    with pytest.raises(CredentialExpired, match=r"the pull token 'deploy' expired at 2026-11-27T13:00:00Z"):
        row.authenticate(token, NOW + timedelta(hours=1))


def test_revoked_token_is_refused_with_when() -> None:
    token, row = new_credential(CredentialKind.ADMIN, credential_id="3", name="root", now=NOW)
    revoked = StoredCredential(
        **{**{f: getattr(row, f) for f in row.__dataclass_fields__}, "revoked_at": NOW + timedelta(minutes=5)}
    )
    with pytest.raises(CredentialRevoked, match="was revoked at 2026-11-27T12:05:00Z"):
        revoked.authenticate(token, NOW + timedelta(minutes=6))


def test_row_refuses_a_different_token_even_if_looked_up_wrongly() -> None:
    _, row = new_credential(CredentialKind.PROJECT, credential_id="4", name="a", project="p", now=NOW)
    other = generate_token(CredentialKind.PROJECT)
    with pytest.raises(CredentialError, match="not valid"):
        row.authenticate(other, NOW)


def test_kind_mismatch_between_prefix_and_row_is_refused() -> None:
    token, row = new_credential(CredentialKind.PULL, credential_id="5", name="p", project="p", now=NOW)
    as_project = "chp_" + token[4:]
    with pytest.raises(CredentialError):
        row.authenticate(as_project, NOW)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": CredentialKind.ADMIN, "project": "x"},
        {"kind": CredentialKind.PROJECT},
        {"kind": CredentialKind.PROJECT, "project": "x", "build_id": "b"},
        {"kind": CredentialKind.PULL},
        {"kind": CredentialKind.OIDC, "project": "x"},
        {"kind": CredentialKind.PROJECT, "project": "x", "ttl": timedelta(0)},
    ],
)
def test_out_of_policy_credentials_cannot_be_created(kwargs: dict[str, object]) -> None:
    kind = kwargs.pop("kind")
    with pytest.raises(ValueError):
        new_credential(kind, credential_id="x", name="n", now=NOW, **kwargs)  # type: ignore[arg-type]


def test_oidc_credential_carries_trust_permissions_and_round_trips_json() -> None:
    perms = (Permission("a", frozenset({"pull", "push"})), Permission("b", frozenset({"pull"})))
    token, row = new_credential(
        CredentialKind.OIDC, credential_id="6", name="octo-org/app run 1", permissions=perms, now=NOW
    )
    assert token.startswith("cho_") and row.expires_at == NOW + timedelta(hours=1)
    assert permissions_from_json(permissions_to_json(row.permissions)) == perms


def test_permission_covers_project_repositories_only() -> None:
    perm = Permission("web", frozenset({"pull"}))
    assert perm.covers("web") and perm.covers("web/api")
    assert not perm.covers("webapp") and not perm.covers("other/web")


def test_child_expiry_is_capped_at_its_parents() -> None:
    _, oidc = new_credential(
        CredentialKind.OIDC,
        credential_id="o",
        name="job",
        permissions=(Permission("web", frozenset({"pull", "push"})),),
        now=NOW,
    )
    _, pull = new_credential(
        CredentialKind.PULL,
        credential_id="c",
        name="year",
        project="web",
        ttl=timedelta(days=365),
        now=NOW,
        parent=oidc.principal(),
    )
    assert oidc.expires_at == NOW + timedelta(hours=1)
    assert pull.expires_at == oidc.expires_at and pull.parent_id == "o"
    _, forever = new_credential(
        CredentialKind.PROJECT,
        credential_id="f",
        name="no expiry asked",
        project="web",
        now=NOW,
        parent=oidc.principal(),
    )
    assert forever.expires_at == oidc.expires_at
    with pytest.raises(CredentialExpired):
        new_credential(
            CredentialKind.PULL,
            credential_id="x",
            name="late",
            project="web",
            now=NOW + timedelta(hours=2),
            parent=oidc.principal(),
        )


def test_child_never_holds_what_its_parent_lacks() -> None:
    _, project = new_credential(CredentialKind.PROJECT, credential_id="p", name="ci", project="web", now=NOW)
    parent = project.principal()
    with pytest.raises(PermissionNotHeld, match="may not delete in web"):
        new_credential(
            CredentialKind.PROJECT,
            credential_id="c",
            name="x",
            project="web",
            actions=["pull", "delete"],
            now=NOW,
            parent=parent,
        )
    with pytest.raises(PermissionNotHeld, match="may not pull in other"):
        new_credential(CredentialKind.PULL, credential_id="c", name="x", project="other", now=NOW, parent=parent)
    _, scoped = new_credential(
        CredentialKind.PULL, credential_id="s", name="one build", project="web", build_id="b1", now=NOW, parent=parent
    )
    # A build-scoped credential only ever mints for its own build.
    new_credential(
        CredentialKind.PULL,
        credential_id="s2",
        name="again",
        project="web",
        build_id="b1",
        now=NOW,
        parent=scoped.principal(),
    )
    for build_id in ("b2", None):
        with pytest.raises(PermissionNotHeld, match="limited to build b1"):
            new_credential(
                CredentialKind.PULL,
                credential_id="s3",
                name="wider",
                project="web",
                build_id=build_id,
                now=NOW,
                parent=scoped.principal(),
            )
    with pytest.raises(PermissionNotHeld, match="only an admin"):
        new_credential(CredentialKind.ADMIN, credential_id="a", name="root", now=NOW, parent=parent)


def test_admin_tokens_are_roots_and_hold_a_small_explicit_set() -> None:
    _, admin = new_credential(CredentialKind.ADMIN, credential_id="a", name="root", now=NOW, ttl=timedelta(hours=1))
    assert admin.admin_permissions == {"admin"} and admin.principal().is_admin
    _, successor = new_credential(
        CredentialKind.ADMIN, credential_id="b", name="next", now=NOW, parent=admin.principal()
    )
    assert successor.parent_id is None and successor.expires_at is None  # rotating an admin token must work
    _, scraper = new_credential(CredentialKind.ADMIN, credential_id="m", name="prom", now=NOW, actions=["metrics"])
    assert not scraper.principal().is_admin and scraper.principal().may_read_metrics
    with pytest.raises(PermissionSetError, match="drawn from admin, metrics"):
        new_credential(CredentialKind.ADMIN, credential_id="x", name="x", now=NOW, actions=["pull"])


@pytest.mark.parametrize(
    ("kind", "requested", "expected"),
    [
        (CredentialKind.PROJECT, None, {"pull", "push"}),
        (CredentialKind.PROJECT, ["pull", "push", "delete"], {"pull", "push", "delete"}),
        (CredentialKind.PROJECT, ["pull"], {"pull"}),
        (CredentialKind.PULL, None, {"pull"}),
        (CredentialKind.ADMIN, None, {"admin"}),
        (CredentialKind.PROJECT, ["push"], "always includes pull"),
        (CredentialKind.PROJECT, [], "give at least one"),
        (CredentialKind.PULL, ["pull", "push"], "push is not one of them"),
        (CredentialKind.OIDC, ["pull"], "from trust relationships"),
    ],
)
def test_permission_sets_per_kind(kind: CredentialKind, requested: list[str] | None, expected: object) -> None:
    if isinstance(expected, str):
        with pytest.raises(PermissionSetError, match=expected):
            permission_set(kind, requested)
    else:
        assert permission_set(kind, requested) == expected
