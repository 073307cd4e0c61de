"""Token format, offline validation, hashing and credential rules."""

from __future__ import annotations

import math
import zlib
from datetime import UTC, datetime, timedelta

import pytest

from cargohold.registry.credentials import (
    BASE62_ALPHABET,
    RANDOM_LENGTH,
    TOKEN_LENGTH,
    TOKEN_PATTERN,
    CredentialError,
    CredentialExpired,
    CredentialKind,
    CredentialRevoked,
    Permission,
    StoredCredential,
    TokenFormatError,
    checksum,
    generate_token,
    hash_token,
    is_valid_token,
    new_credential,
    parse_token,
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
