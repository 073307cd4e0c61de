"""The registry's access-control seam.

Routes never decide who may do what: the dispatcher asks an :class:`AccessPolicy` for the actions a route
needs (``pull``, ``push``, ``delete``) on a repository before any handler runs. The registry core ships
:class:`OpenAccess`; the control plane supplies a token-checking policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling; ``name`` appears in logs. ``credential_id`` is the credential behind the request (None
    without authentication): upload sessions remember it, so their opener may cancel them and the
    per-credential cap can count them."""

    name: str
    details: dict[str, str] = field(default_factory=dict)
    credential_id: str | None = None


ANONYMOUS = Principal("anonymous")
PRINCIPAL_KEY = web.RequestKey("cargohold.access_principal", Principal)
"""Request key where the ``/v2/`` dispatcher leaves the authorised :class:`Principal` for the handlers."""


@dataclass(frozen=True, slots=True)
class Target:
    """What a registry request touches (``manifest``/``blob``/``tags``/``referrers``/``upload`` + reference)."""

    kind: str
    reference: str = ""


class AccessPolicy(Protocol):
    async def authorize(
        self, request: web.Request, repository: str | None, actions: frozenset[str], target: Target | None = None
    ) -> Principal:
        """Return the caller if allowed, else raise ``RegistryError`` (UNAUTHORIZED / DENIED / NAME_UNKNOWN)."""
        ...

    async def allows(self, request: web.Request, repository: str, action: str) -> bool:
        """Non-raising check, e.g. whether a mount's ``from`` repository may be read by this caller."""
        ...


class OpenAccess:
    """Everyone may do everything: for a registry behind its own network boundary, and for the core tests."""

    async def authorize(
        self, request: web.Request, repository: str | None, actions: frozenset[str], target: Target | None = None
    ) -> Principal:
        return ANONYMOUS

    async def allows(self, request: web.Request, repository: str, action: str) -> bool:
        return True
