"""Credentials and trust: tokens, trust relationships, ``whoami``, OIDC discovery and exchange
(docs/api.md, "Tokens", "Trust relationships", "Authentication endpoints")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cargohold.schemas.wire import Schema


@dataclass(frozen=True)
class Permission(Schema):
    """Actions a credential holds on one project (``pull``, ``push``, ``delete``), optionally limited to a build."""

    project: str
    actions: list[str]
    build_id: str | None


@dataclass(frozen=True)
class Token(Schema):
    """A token as listed: never its secret."""

    id: str
    kind: str
    """``admin``, ``project``, ``pull`` or ``oidc``."""
    name: str
    project_id: str | None
    permissions: list[Permission]
    admin_permissions: list[str]
    """``["admin"]`` or ``["metrics"]`` for an admin token, else empty."""
    parent_id: str | None
    """The credential that minted it (``None`` for a root): it never outlives that one and is revoked with it."""
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class TokenCreated(Token):
    """``POST /api/v1/tokens``: the token, its secret (shown this once) and whether its parent capped its expiry."""

    token: str
    expiry_capped: bool


@dataclass(frozen=True)
class TokenList(Schema):
    tokens: list[Token]


@dataclass(frozen=True)
class TokenRevoked(Schema):
    """``DELETE /api/v1/tokens/{token}``: revoked, with every token minted from it (transitively)."""

    id: str
    revoked: bool
    descendants_revoked: int


@dataclass(frozen=True)
class TrustRelationship(Schema):
    """Which GitHub workflows may exchange their OIDC tokens for access to a project, and with what rights."""

    id: str
    project_id: str
    provider: str
    issuer: str
    owner: str
    repository: str
    repository_owner_id: str | None
    """Pinned owner ID (learned from the first matching token when not given)."""
    repository_id: str | None
    workflow: str | None
    environment: str | None
    ref_pattern: str | None
    runner_environment: str | None
    allow_events: list[str]
    pull_only: bool
    permissions: list[str]
    created_at: datetime


@dataclass(frozen=True)
class TrustList(Schema):
    trust_relationships: list[TrustRelationship]


@dataclass(frozen=True)
class TrustRemoved(Schema):
    """``DELETE /api/v1/projects/{project}/trust/{trust}``: removed, with the credentials exchanged through it."""

    id: str
    removed: bool
    credentials_revoked: int


@dataclass(frozen=True)
class Whoami(Schema):
    """``GET /api/v1/whoami``: the credential behind the request and what it may do."""

    kind: str
    name: str
    credential_id: str
    permissions: list[Permission]
    admin_permissions: list[str]
    expires_at: datetime | None


@dataclass(frozen=True)
class OidcDiscovery(Schema):
    """``GET /api/v1/oidc``: the audience to request ID tokens for, and the issuers the server trusts."""

    audience: str
    issuers: list[str]
    exchange_url: str
    """Informational: clients send the exchange to the server they were given, never to this URL."""


@dataclass(frozen=True)
class OidcExchange(Schema):
    """``POST /auth/oidc/github-actions``: a short-lived ``cho_`` token for the projects the trust grants."""

    ok: bool
    token: str
    expires_at: datetime
    projects: list[str]
