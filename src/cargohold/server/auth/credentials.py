"""Long-lived credentials: kinds, token format, hashing, and checking a presented token.

Why the token looks the way it does:

* ``<prefix><30 random base62 chars><6 base62 chars of CRC32(random)>``, 40 characters in total. The
  random part carries ~178 bits from :mod:`secrets`, far above the 160-bit floor, so a plain SHA-256 of
  the token is a safe storage hash (no salt or slow KDF needed: there is nothing to brute-force).
* The prefix names the kind (``cha_`` admin, ``chp_`` project, ``chl_`` pull, ``cho_`` OIDC-exchanged)
  so secret scanners can recognise a leaked token and so people can tell at a glance what leaked.
* The CRC32 suffix lets a scanner (or this server, before touching the database) reject random strings
  that merely look like tokens: :func:`parse_token` works offline, without any server state.

The server stores only :func:`hash_token` output. The plaintext is returned once by
:func:`new_credential` and never again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from cargohold.isotime import format_iso

BASE62_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LENGTH = 30
"""Random base62 characters per token: 30 * log2(62) ~= 178.6 bits of entropy."""
CHECKSUM_LENGTH = 6
"""62**6 > 2**32, so six base62 digits hold any CRC32 value."""
TOKEN_LENGTH = 4 + RANDOM_LENGTH + CHECKSUM_LENGTH

ACTIONS_PULL = "pull"
ACTIONS_PUSH = "push"
ACTION_DELETE = "delete"
REPOSITORY_ACTIONS = frozenset({ACTIONS_PULL, ACTIONS_PUSH, ACTION_DELETE})
"""What a credential may do in a project's repositories (and the matching control-API routes)."""
ADMIN_ALL = "admin"
"""Server-wide: every project, every action, projects, trust relationships, tokens, GC, metrics."""
ADMIN_METRICS = "metrics"
"""Server-wide, read-only: scrape ``/metrics`` (a Prometheus scraper needs nothing else)."""
ADMIN_PERMISSIONS = frozenset({ADMIN_ALL, ADMIN_METRICS})
"""The whole admin permission set, deliberately small: full control, or metrics only."""

DEFAULT_PULL_TOKEN_TTL = timedelta(hours=1)
"""Pull tokens are handed to CI jobs on other machines; they should die with the job."""
DEFAULT_OIDC_TOKEN_TTL = timedelta(hours=1)
"""An OIDC-exchanged token must outlive a typical build-then-push job, but not the day."""


class CredentialKind(StrEnum):
    """What a credential is for; the value is what the database stores."""

    ADMIN = "admin"
    PROJECT = "project"
    PULL = "pull"
    OIDC = "oidc"

    @property
    def prefix(self) -> str:
        """The token prefix that marks this kind for people and secret scanners."""
        return _PREFIXES[self]


_PREFIXES: dict[CredentialKind, str] = {
    CredentialKind.ADMIN: "cha_",
    CredentialKind.PROJECT: "chp_",
    CredentialKind.PULL: "chl_",
    CredentialKind.OIDC: "cho_",
}
_KIND_BY_PREFIX = {prefix: kind for kind, prefix in _PREFIXES.items()}

TOKEN_PATTERN = re.compile(r"\b(?:cha|chp|chl|cho)_[0-9A-Za-z]{36}\b")
"""Regex for secret scanners: finds candidate tokens in text; confirm each with :func:`is_valid_token`."""


class CredentialError(Exception):
    """A presented credential cannot be used; the message is safe to show to the client."""


class TokenFormatError(CredentialError):
    """The string is not a Cargohold token (wrong prefix, length, alphabet or checksum)."""


class CredentialRevoked(CredentialError):
    """The credential existed but was revoked."""


class CredentialExpired(CredentialError):
    """The credential existed but its expiry has passed."""


class PermissionSetError(ValueError):
    """A requested permission set is not allowed for the credential kind; the message says what is."""


class PermissionNotHeld(PermissionSetError):
    """The minting credential lacks a permission the new one would get: a child never exceeds its parent."""


_DEFAULT_PERMISSIONS: dict[CredentialKind, frozenset[str]] = {
    CredentialKind.ADMIN: frozenset({ADMIN_ALL}),
    CredentialKind.PROJECT: frozenset({ACTIONS_PULL, ACTIONS_PUSH}),
    CredentialKind.PULL: frozenset({ACTIONS_PULL}),
}
_ALLOWED_PERMISSIONS: dict[CredentialKind, frozenset[str]] = {
    CredentialKind.ADMIN: ADMIN_PERMISSIONS,
    CredentialKind.PROJECT: REPOSITORY_ACTIONS,
    CredentialKind.PULL: frozenset({ACTIONS_PULL}),
}


def default_permissions(kind: CredentialKind) -> frozenset[str]:
    """The permission set a credential of ``kind`` gets when none is asked for (today's behaviour)."""
    return _DEFAULT_PERMISSIONS.get(kind, frozenset())


def permission_set(kind: CredentialKind, requested: Iterable[str] | None) -> frozenset[str]:
    """Validate a requested permission set for ``kind``; None means the kind's default.

    Project credentials hold any of ``pull``, ``push``, ``delete`` but always ``pull`` (a writer reads
    too: every push starts with existence checks); pull tokens hold ``pull`` only; admin tokens hold
    ``admin`` (everything) or ``metrics`` (scraping only). OIDC credentials get theirs from trust
    relationships, never from a request.
    """
    if requested is None:
        return default_permissions(kind)
    wanted = frozenset(str(item).strip() for item in requested)
    allowed = _ALLOWED_PERMISSIONS.get(kind)
    if allowed is None:
        raise PermissionSetError(f"{kind.value} credentials get their permissions from trust relationships")
    unknown = sorted(wanted - allowed)
    if unknown or not wanted:
        raise PermissionSetError(
            f"a {kind.value} token's permissions are drawn from {', '.join(sorted(allowed))}"
            + (f"; {', '.join(unknown)} is not one of them" if unknown else "; give at least one")
        )
    if kind is CredentialKind.PROJECT and ACTIONS_PULL not in wanted:
        raise PermissionSetError("a project token always includes pull (pushing starts by reading); add pull")
    return wanted


def _base62(value: int, width: int) -> str:
    """Fixed-width base62 so the checksum is always exactly ``width`` characters."""
    digits = []
    for _ in range(width):
        value, remainder = divmod(value, 62)
        digits.append(BASE62_ALPHABET[remainder])
    if value:
        raise ValueError("value does not fit in the requested width")
    return "".join(reversed(digits))


def checksum(random_part: str) -> str:
    """The 6-character base62 CRC32 of the random part (what offline validators recompute)."""
    return _base62(zlib.crc32(random_part.encode("ascii")), CHECKSUM_LENGTH)


def generate_token(kind: CredentialKind) -> str:
    """A fresh plaintext token of ``kind``; show it to the user once, store only :func:`hash_token`."""
    random_part = "".join(secrets.choice(BASE62_ALPHABET) for _ in range(RANDOM_LENGTH))
    return f"{kind.prefix}{random_part}{checksum(random_part)}"


def parse_token(token: str) -> CredentialKind:
    """Validate the format of ``token`` offline and return its kind.

    Raises :class:`TokenFormatError` saying exactly what is wrong, so a user who pasted the wrong thing
    (a registry JWT, a truncated token, a GitHub token) learns that without a database lookup.
    """
    if not isinstance(token, str) or not token:
        raise TokenFormatError("no token was given")
    kind = _KIND_BY_PREFIX.get(token[:4])
    if kind is None:
        raise TokenFormatError(
            "this is not a Cargohold token: tokens start with cha_ (admin), chp_ (project), "
            "chl_ (pull) or cho_ (OIDC-exchanged)"
        )
    if len(token) != TOKEN_LENGTH:
        raise TokenFormatError(
            f"this {kind.value} token has {len(token)} characters, Cargohold tokens have exactly "
            f"{TOKEN_LENGTH}; was it truncated or pasted with extra characters?"
        )
    body = token[4:]
    if any(char not in BASE62_ALPHABET for char in body):
        raise TokenFormatError(f"this {kind.value} token contains characters other than letters and digits")
    random_part, suffix = body[:RANDOM_LENGTH], body[RANDOM_LENGTH:]
    if not hmac.compare_digest(checksum(random_part), suffix):
        raise TokenFormatError(f"this {kind.value} token's checksum does not match: it was mistyped or altered")
    return kind


def is_valid_token(token: str) -> bool:
    """True if ``token`` has a known prefix, the right length and alphabet, and a correct checksum."""
    try:
        parse_token(token)
    except TokenFormatError:
        return False
    return True


def hash_token(token: str) -> str:
    """Hex SHA-256 of the token: the only form the database keeps.

    A fast hash is appropriate because the token has ~178 bits of entropy; the hash is also the lookup
    key, so the column should be unique and indexed.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Permission:
    """Actions granted on one project's repositories (``<project>`` and ``<project>/...``).

    ``build_id`` narrows a pull grant to one build: the registry token carries it and the manifest
    routes must then serve only that build's tag (and what it references).
    """

    project: str
    actions: frozenset[str]
    build_id: str | None = None

    def covers(self, repository: str) -> bool:
        """Whether ``repository`` belongs to this permission's project."""
        return repository == self.project or repository.startswith(self.project + "/")

    def to_json(self) -> dict[str, object]:
        return {"project": self.project, "actions": sorted(self.actions), "build_id": self.build_id}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Permission:
        actions = data.get("actions")
        if not isinstance(actions, list):
            raise ValueError("permission actions must be a list")
        build_id = data.get("build_id")
        return cls(
            str(data["project"]), frozenset(str(a) for a in actions), None if build_id is None else str(build_id)
        )


def permissions_to_json(permissions: tuple[Permission, ...]) -> str:
    """Serialise permissions for a JSON/TEXT column."""
    return json.dumps([p.to_json() for p in permissions], sort_keys=True)


def permissions_from_json(text: str) -> tuple[Permission, ...]:
    """Inverse of :func:`permissions_to_json`."""
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("permissions column must hold a JSON list")
    return permissions_from_data(data)


def permissions_from_data(items: Iterable[dict[str, object]]) -> tuple[Permission, ...]:
    """Permissions from their JSON form, already parsed (what a stored credential record holds)."""
    return tuple(Permission.from_json(item) for item in items)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, after a credential checked out; what :mod:`.signing` intersects scopes with.

    ``admin_permissions`` is the server-wide set of an admin credential (None: the kind's default, so
    ``{"admin"}`` for admin credentials and nothing for the others). ``expires_at`` is the credential's own
    expiry: what any credential it mints is capped at.
    """

    kind: CredentialKind
    credential_id: str
    name: str
    permissions: tuple[Permission, ...] = ()
    admin_permissions: frozenset[str] | None = None
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.admin_permissions is None:
            defaults = default_permissions(self.kind) if self.kind is CredentialKind.ADMIN else frozenset()
            object.__setattr__(self, "admin_permissions", defaults)
        elif self.kind is not CredentialKind.ADMIN and self.admin_permissions:
            raise ValueError("only admin credentials hold server-wide permissions")

    @property
    def is_admin(self) -> bool:
        """Full control: every project and every administrative route."""
        return ADMIN_ALL in (self.admin_permissions or ())

    @property
    def may_read_metrics(self) -> bool:
        return self.is_admin or ADMIN_METRICS in (self.admin_permissions or ())

    def actions_on(self, project: str) -> frozenset[str]:
        """Everything this credential may do in ``project`` (build-narrowed grants included)."""
        if self.is_admin:
            return REPOSITORY_ACTIONS
        found: set[str] = set()
        for permission in self.permissions:
            if permission.project == project:
                found |= permission.actions
        return frozenset(found)


@dataclass(frozen=True, slots=True)
class StoredCredential:
    """One row of the credentials table, as the lead's metadata layer should load it.

    Never holds the plaintext: ``token_hash`` is :func:`hash_token` of it.
    """

    id: str
    kind: CredentialKind
    name: str
    token_hash: str
    created_at: datetime
    permissions: tuple[Permission, ...] = ()
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    admin_permissions: frozenset[str] = frozenset()
    parent_id: str | None = None
    """The credential that minted this one (see :func:`new_credential`); None for a root."""
    trust_ids: tuple[str, ...] = ()
    """The trust relationships an OIDC exchange matched to produce this credential."""

    def authenticate(self, token: str, now: datetime) -> Principal:
        """Check ``token`` against this row and return the caller's :class:`Principal`.

        The row is expected to have been found by ``token_hash``; the hash is compared again here in
        constant time so a lookup that is not an exact match (or a future change to the lookup) can
        never let a different token through. Kind is re-checked against the prefix for the same reason.
        """
        kind = parse_token(token)
        if not hmac.compare_digest(hash_token(token), self.token_hash) or kind is not self.kind:
            raise CredentialError("the token is not valid")
        if self.revoked_at is not None:
            raise CredentialRevoked(
                f"the {self.kind.value} token {self.name!r} was revoked at {format_iso(self.revoked_at)}"
            )
        if self.expires_at is not None and now >= self.expires_at:
            raise CredentialExpired(
                f"the {self.kind.value} token {self.name!r} expired at {format_iso(self.expires_at)}"
            )
        return self.principal()

    def principal(self) -> Principal:
        return Principal(
            self.kind,
            self.id,
            self.name,
            self.permissions,
            self.admin_permissions if self.kind is CredentialKind.ADMIN else None,
            self.expires_at,
        )


def new_credential(
    kind: CredentialKind,
    *,
    credential_id: str,
    name: str,
    now: datetime,
    project: str | None = None,
    build_id: str | None = None,
    permissions: tuple[Permission, ...] | None = None,
    actions: Iterable[str] | None = None,
    ttl: timedelta | None = None,
    parent: Principal | None = None,
    trust_ids: tuple[str, ...] = (),
) -> tuple[str, StoredCredential]:
    """Create a credential of ``kind``; returns ``(plaintext token, row to store)``.

    Enforces the issue's rules so the HTTP layer cannot mint something out of policy:

    * admin: no project; ``actions`` from :data:`ADMIN_PERMISSIONS` (default ``admin``); never expires
      unless ``ttl`` is given; always a root (see below);
    * project: ``actions`` on exactly ``project`` (default pull+push, ``delete`` on request); expiry optional;
    * pull: pull on ``project`` (optionally narrowed to ``build_id``); expires after 1 hour by default;
    * oidc: ``permissions`` from a trust match (possibly several projects, ``trust_ids`` say which
      relationships); expires after 1 hour by default.

    Lineage: ``parent`` is the credential minting this one. The child records it, may hold nothing the
    parent lacks (a build-narrowed parent only mints children narrowed to the same build), and its expiry
    is capped at the parent's, so no chain of mints outlives where it started. Admin tokens are roots: an
    admin may do everything anyway, and an admin token must stay valid when the one that minted it is
    rotated away. The database re-checks, in the transaction that stores the child, that the parent is
    still live (:meth:`cargohold.metadata.control.ControlStore.add_credential`).
    """
    if not name.strip():
        raise ValueError("a credential needs a non-empty name")
    if ttl is not None and ttl <= timedelta(0):
        raise ValueError("a credential's lifetime must be positive")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    admin_granted: frozenset[str] = frozenset()
    if kind is CredentialKind.ADMIN:
        if project or build_id or permissions:
            raise ValueError("an admin token is not tied to a project")
        if parent is not None and not parent.is_admin:
            raise PermissionNotHeld("only an admin may mint an admin token")
        admin_granted = permission_set(kind, actions)
        granted: tuple[Permission, ...] = ()
        parent = None
    elif kind is CredentialKind.PROJECT:
        if not project or build_id or permissions:
            raise ValueError("a project token needs exactly one project and no build or permissions")
        granted = (Permission(project, permission_set(kind, actions)),)
    elif kind is CredentialKind.PULL:
        if not project or permissions:
            raise ValueError("a pull token needs a project (and optionally a build id)")
        granted = (Permission(project, permission_set(kind, actions), build_id),)
        ttl = ttl or DEFAULT_PULL_TOKEN_TTL
    else:
        if not permissions or project or build_id or actions is not None:
            raise ValueError("an OIDC-exchanged token needs the permissions of a trust match")
        granted = permissions
        ttl = ttl or DEFAULT_OIDC_TOKEN_TTL
    expires_at = None if ttl is None else now + ttl
    if parent is not None:
        for permission in granted:
            _check_inherited(parent, permission)
        if parent.expires_at is not None:
            if parent.expires_at <= now:
                raise CredentialExpired(f"the credential minting this token expired at {format_iso(parent.expires_at)}")
            expires_at = parent.expires_at if expires_at is None else min(expires_at, parent.expires_at)
    token = generate_token(kind)
    row = StoredCredential(
        id=credential_id,
        kind=kind,
        name=name,
        token_hash=hash_token(token),
        created_at=now,
        permissions=granted,
        expires_at=expires_at,
        admin_permissions=admin_granted,
        parent_id=None if parent is None else parent.credential_id,
        trust_ids=tuple(trust_ids),
    )
    return token, row


def _check_inherited(parent: Principal, child: Permission) -> None:
    """Refuse a child permission its parent does not hold (with the same or no build narrowing)."""
    if parent.is_admin:
        return
    grants = [granted for granted in parent.permissions if granted.project == child.project]
    for action in sorted(child.actions):
        if not any(action in granted.actions and granted.build_id in (None, child.build_id) for granted in grants):
            narrowed = next((g.build_id for g in grants if g.build_id and action in g.actions), None)
            where = f"build {narrowed} of {child.project}" if narrowed else child.project
            if narrowed and child.build_id != narrowed:
                raise PermissionNotHeld(
                    f"the {parent.kind.value} credential {parent.name!r} is limited to {where}; "
                    "it can only mint tokens for that build"
                )
            raise PermissionNotHeld(
                f"the {parent.kind.value} credential {parent.name!r} may not {action} in {child.project}, "
                "so it cannot mint a token that may"
            )
