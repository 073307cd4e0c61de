"""Authentication and authorisation for every route: who is calling, and may they do this?

Accepted credentials, in the ``Authorization`` header:

* ``Basic x-token:<token>`` — any Cargohold token (admin, project, pull, OIDC-exchanged), the bootstrap
  admin token from ``CARGOHOLD_ADMIN_TOKEN``, or a raw GitHub Actions OIDC JWT. The username is ignored,
  so ``docker login -u x-token``, ``skopeo --creds`` and Kubernetes pull secrets all work.
* ``Bearer <registry token>`` — the short-lived JWT our ``/token`` endpoint signs (Docker token auth).
* ``Bearer <token>`` — a Cargohold token or raw OIDC JWT, for API clients.

A raw OIDC JWT is exchanged on first sight and remembered by its hash as an OIDC-exchanged credential, so
the same job may keep presenting it while a replayed *exchange* (its single-use ``jti``) is still refused.

Refusals are chosen to help people without leaking: no credential gives a 401 challenge; a repository in a
project the caller has no access to is ``NAME_UNKNOWN`` (it may as well not exist); an action the caller's
credential lacks is ``DENIED`` with what the credential allows.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from cargohold.clock import MonotonicClock, WallClock, monotonic, utc_now
from cargohold.domain.threads import Runner
from cargohold.edge.proxies import client_address
from cargohold.metadata.control import ControlStore, CredentialRecord
from cargohold.oci import strictjson
from cargohold.server.auth.access import Principal as AccessPrincipal
from cargohold.server.auth.access import Target
from cargohold.server.auth.credentials import (
    ADMIN_ALL,
    CredentialError,
    CredentialKind,
    Permission,
    Principal,
    StoredCredential,
    hash_token,
    is_valid_token,
    permissions_from_data,
)
from cargohold.server.auth.ratelimit import AuthFailureLimiter, retry_after_header
from cargohold.server.auth.signing import (
    SERVICE,
    RegistryClaims,
    RegistryTokenError,
    RegistryTokenSigner,
    ResourceScope,
    UnknownSigningKey,
    granted_access,
)
from cargohold.server.http.errors import RegistryError
from cargohold.server.http.request_keys import USER_KEY

log = logging.getLogger(__name__)

ENV_ADMIN_ID = "env-admin"
CACHE_SECONDS = 5.0
"""How long a credential lookup is reused: revocation takes effect within this many seconds, in every worker
of ``--workers N`` (each caches on its own; the one that handled the revocation forgets at once)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller: the credential's full rights, and a registry JWT's narrower grant if any."""

    principal: Principal
    token_access: tuple[ResourceScope, ...] | None = None
    claims: dict[str, str] | None = None

    @property
    def name(self) -> str:
        return f"{self.principal.kind.value}:{self.principal.name}"

    @property
    def credential_id(self) -> str:
        return self.principal.credential_id

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin

    @property
    def minting_parent(self) -> Principal | None:
        """The parent of any credential this caller mints: itself, unless it is stored nowhere (the env
        admin token, whose children are therefore roots)."""
        return None if self.principal.credential_id == ENV_ADMIN_ID else self.principal

    def credential_allows(self, repository: str, action: str) -> bool:
        """Whether the underlying credential may ``action`` on ``repository``."""
        return bool(granted_access(self.principal, [ResourceScope("repository", repository, (action,))]))

    def allows(self, repository: str, action: str) -> bool:
        """Whether *this request's* credential allows it (a registry JWT may be narrower than its credential)."""
        if self.token_access is None:
            return self.credential_allows(repository, action)
        return any(
            entry.type == "repository" and entry.name == repository and action in entry.actions
            for entry in self.token_access
        )

    def build_restriction(self, repository: str) -> str | None:
        if self.token_access is not None:
            for entry in self.token_access:
                if entry.type == "repository" and entry.name == repository and entry.build_id:
                    return entry.build_id
            return None
        for permission in self.principal.permissions:
            if permission.covers(repository) and permission.build_id and "pull" in permission.actions:
                return permission.build_id
        return None

    def projects(self) -> set[str] | None:
        """Projects this caller can see; None means all (admin)."""
        if self.is_admin:
            return None
        return {permission.project for permission in self.principal.permissions}

    def project_allows(self, project_id: str, action: str) -> bool:
        """Whether the credential may ``action`` in the project (the control API's check; admins may anything)."""
        if self.is_admin:
            return True
        return any(p.project == project_id and action in p.actions for p in self.principal.permissions)


IDENTITY_KEY = web.RequestKey[Identity | None]("cargohold.identity")
"""The caller :meth:`AccessPolicy.identity` found (``None``: anonymous), cached so a request authenticates once."""


class AuthError(Exception):
    """A credential was presented but cannot be used; the message is safe to show."""


def stored_credential(record: CredentialRecord) -> StoredCredential:
    """A stored credential as the auth package checks it (the store's record, in this package's types)."""
    return StoredCredential(
        id=record.id,
        kind=CredentialKind(record.kind),
        name=record.name,
        token_hash=record.token_hash,
        created_at=record.created_at,
        permissions=permissions_from_data(record.permissions),
        expires_at=record.expires_at,
        revoked_at=record.revoked_at,
        metadata=dict(record.metadata),
        admin_permissions=admin_permissions_of(record),
        parent_id=record.parent_id,
    )


def admin_permissions_of(record: CredentialRecord) -> frozenset[str]:
    """The server-wide permissions of an admin credential (nothing for other kinds)."""
    if record.kind != CredentialKind.ADMIN.value:
        return frozenset()
    return record.admin_permissions


def principal_of(record: CredentialRecord) -> Principal:
    """The caller a stored credential stands for (no checks: the caller has checked it is live)."""
    kind = CredentialKind(record.kind)
    return Principal(
        kind,
        record.id,
        record.name,
        permissions_from_data(record.permissions),
        admin_permissions_of(record) if kind is CredentialKind.ADMIN else None,
        record.expires_at,
    )


def env_admin_principal() -> Principal:
    """The bootstrap ``CARGOHOLD_ADMIN_TOKEN``: full control, never expires, stored nowhere (so a root)."""
    return Principal(
        CredentialKind.ADMIN, ENV_ADMIN_ID, "CARGOHOLD_ADMIN_TOKEN", admin_permissions=frozenset({ADMIN_ALL})
    )


def credential_record(stored: StoredCredential, *, project_id: str | None = None) -> CredentialRecord:
    """What the store keeps of a new credential (the inverse of :func:`stored_credential`)."""
    return CredentialRecord(
        id=stored.id,
        kind=stored.kind.value,
        name=stored.name,
        token_hash=stored.token_hash,
        created_at=stored.created_at,
        permissions=tuple(permission.to_json() for permission in stored.permissions),
        expires_at=stored.expires_at,
        revoked_at=stored.revoked_at,
        metadata=dict(stored.metadata),
        project_id=project_id,
        parent_id=stored.parent_id,
        admin_permissions=stored.admin_permissions,
    )


def _claims(record: CredentialRecord) -> dict[str, str] | None:
    """CI provenance recorded on OIDC-exchanged credentials (repository, sha, run, workflow…)."""
    return dict(record.metadata) if record.kind == CredentialKind.OIDC.value and record.metadata else None


RawJwtExchanger = Callable[[str], Awaitable[Identity]]


class TokenAuthenticator:
    """Turns an ``Authorization`` header into an :class:`Identity` (or refuses it)."""

    def __init__(
        self,
        control: ControlStore,
        signer: RegistryTokenSigner,
        run: Runner,
        *,
        admin_token: str | None = None,
        raw_jwt_exchanger: RawJwtExchanger | None = None,
        clock: WallClock = utc_now,
        cache_clock: MonotonicClock = monotonic,
    ) -> None:
        self.control = control
        self.clock = clock
        """When a credential's expiry is checked against (tests move it instead of waiting for an expiry)."""
        self.cache_clock = cache_clock
        """What the :data:`CACHE_SECONDS` credential cache measures its age on."""
        self.signer = signer
        self._run = run
        self._admin_hash = hash_token(admin_token) if admin_token else None
        self.raw_jwt_exchanger = raw_jwt_exchanger
        self._by_hash: dict[str, tuple[float, CredentialRecord | None]] = {}
        self._by_id: dict[str, tuple[float, CredentialRecord | None]] = {}

    async def identify(self, header: str | None) -> Identity | None:
        """None when no credential was sent; raises :class:`AuthError` for a bad one."""
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise AuthError("the Basic credentials are not valid base64 of user:password") from None
            _user, sep, secret = decoded.partition(":")
            if not sep or not secret:
                raise AuthError("the Basic credentials have no password; use x-token as user and the token")
            return await self.from_secret(secret)
        if scheme.lower() == "bearer":
            if not value:
                raise AuthError("the Bearer credential is empty")
            if (claims := self.signer.verified_before(value)) is not None:
                return await self._identity_with(claims)
            if _looks_like_registry_jwt(value):
                return await self._from_registry_jwt(value)
            return await self.from_secret(value)
        raise AuthError(f"the {scheme!r} authorization scheme is not supported; use Basic or Bearer")

    async def from_secret(self, secret: str) -> Identity:
        """A token or raw OIDC JWT given as a password or bearer value."""
        if self._admin_hash is not None and hmac.compare_digest(hash_token(secret), self._admin_hash):
            return Identity(env_admin_principal())
        if is_valid_token(secret):
            row = await self._credential_by_hash(hash_token(secret))
            if row is None:
                raise AuthError("the token is not known to this registry (it may have been deleted)")
            try:
                principal = stored_credential(row).authenticate(secret, self.clock())
            except CredentialError as exc:
                raise AuthError(str(exc)) from None
            return Identity(principal, claims=_claims(row))
        if secret.count(".") == 2 and self.raw_jwt_exchanger is not None:
            return await self.raw_jwt_exchanger(secret)
        raise AuthError("the credential is not a Cargohold token (cha_/chp_/chl_/cho_…) or an OIDC token")

    async def _from_registry_jwt(self, token: str) -> Identity:
        try:
            claims = self.signer.verify(token)
        except UnknownSigningKey as exc:
            # Another replica may have rotated a moment ago: read the shared keys once, then decide.
            if not await self._run(self.signer.refresh_for_unknown_kid):
                raise AuthError(str(exc)) from None
            try:
                claims = self.signer.verify(token)
            except RegistryTokenError as again:
                raise AuthError(str(again)) from None
        except RegistryTokenError as exc:
            raise AuthError(str(exc)) from None
        return await self._identity_with(claims)

    async def _identity_with(self, claims: RegistryClaims) -> Identity:
        """A verified registry token's caller: its credential must still be live (checked every request)."""
        identity = await self.identity_for_id(claims.subject)
        if identity is None:
            raise AuthError("the credential behind this registry token was revoked or has expired; log in again")
        return Identity(identity.principal, token_access=claims.access, claims=identity.claims)

    async def identity_for_id(self, credential_id: str) -> Identity | None:
        """The live credential with this ID, or None if it is unknown, revoked or expired."""
        if credential_id == ENV_ADMIN_ID and self._admin_hash is not None:
            return Identity(env_admin_principal())
        row = await self._cached(self._by_id, credential_id, self.control.get_credential)
        if row is None or row.revoked_at is not None:
            return None
        if row.expires_at is not None and row.expires_at <= self.clock():
            return None
        return Identity(principal_of(row), claims=_claims(row))

    async def _credential_by_hash(self, token_hash: str) -> CredentialRecord | None:
        return await self._cached(self._by_hash, token_hash, self.control.credential_by_hash)

    async def _cached(
        self,
        cache: dict[str, tuple[float, CredentialRecord | None]],
        key: str,
        load: Callable[[str], CredentialRecord | None],
    ) -> CredentialRecord | None:
        now = self.cache_clock()
        hit = cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        row = await self._run(load, key)
        if len(cache) > 10_000:
            cache.clear()
        cache[key] = (now + CACHE_SECONDS, row)
        return row

    def forget(self) -> None:
        """Drop cached lookups (after a revocation through this process's API)."""
        self._by_hash.clear()
        self._by_id.clear()


def _looks_like_registry_jwt(value: str) -> bool:
    if value.count(".") != 2:
        return False
    try:
        header = strictjson.loads(base64.urlsafe_b64decode(value.split(".")[0] + "=="))
    except (ValueError, binascii.Error):  # JsonInvalid is a ValueError
        return False
    return isinstance(header, dict) and header.get("alg") == "EdDSA"


BuildReachability = Callable[[str, str], Awaitable[tuple[set[str], set[str]]]]
"""``(repository, build_id) -> (manifest references: tags and digests, blob digests)``."""


class TokenAccess:
    """The :class:`~cargohold.server.auth.access.AccessPolicy` of a Cargohold with credentials."""

    def __init__(
        self,
        authenticator: TokenAuthenticator,
        public_url: str,
        limiter: AuthFailureLimiter,
        build_reachability: BuildReachability,
    ) -> None:
        self.authenticator = authenticator
        self.realm = f"{public_url.rstrip('/')}/token"
        self.limiter = limiter
        self.build_reachability = build_reachability

    def challenge(self, scope: str | None) -> dict[str, str]:
        value = f'Bearer realm="{self.realm}",service="{SERVICE}"'
        if scope:
            value += f',scope="{scope}"'
        return {"WWW-Authenticate": value}

    async def identity(self, request: web.Request) -> Identity | None:
        """The caller, cached on the request; raises OCI errors for bad credentials and rate limits."""
        if IDENTITY_KEY in request:
            return request[IDENTITY_KEY]
        address = client_address(request)
        wait = self.limiter.retry_after(address)
        if wait is not None:
            raise RegistryError(
                "TOOMANYREQUESTS",
                f"too many failed authentications from {address}; retry in {wait:.0f} s",
                headers={"Retry-After": retry_after_header(wait)},
            )
        try:
            identity = await self.authenticator.identify(request.headers.get("Authorization"))
        except AuthError as exc:
            self.limiter.record_failure(address)
            log.info("authentication failed from %s: %s", address, exc)
            raise RegistryError("UNAUTHORIZED", str(exc), headers=self.challenge(None)) from None
        request[IDENTITY_KEY] = identity
        if identity is not None:
            request[USER_KEY] = identity.name
        return identity

    async def authorize(
        self,
        request: web.Request,
        repository: str | None,
        actions: frozenset[str],
        target: Target | None = None,
    ) -> AccessPrincipal:
        # Writers also read (existence checks before uploads), so a push challenge asks for pull too: a
        # client following it gets one token that covers the whole push.
        wanted = actions | {"pull"} if "push" in actions else actions
        scope = f"repository:{repository}:{','.join(sorted(wanted))}" if repository else None
        identity = await self.identity(request)
        if identity is None:
            raise RegistryError(
                "UNAUTHORIZED",
                "authentication required: log in with user x-token and a Cargohold token",
                headers=self.challenge(scope),
            )
        principal = AccessPrincipal(identity.name, credential_id=identity.credential_id)
        if repository is None:
            if "catalog" in actions or not actions:
                return principal
        else:
            for action in sorted(actions):
                if identity.allows(repository, action):
                    continue
                if identity.token_access is not None and identity.credential_allows(repository, action):
                    # A registry token for fewer rights than its credential has: ask the client to upgrade.
                    raise RegistryError(
                        "UNAUTHORIZED", f"this registry token does not grant {action}", headers=self.challenge(scope)
                    )
                if not identity.credential_allows(repository, "pull"):
                    raise RegistryError(
                        "NAME_UNKNOWN",
                        f"repository {repository} is not known to this registry",
                        detail={"name": repository},
                    )
                raise RegistryError(
                    "DENIED",
                    f"the {identity.principal.kind.value} credential {identity.principal.name!r} may not {action} "
                    f"in {repository}",
                )
            build_id = identity.build_restriction(repository)
            if build_id is not None:
                await self._check_build_target(repository, build_id, target)
        return principal

    async def _check_build_target(self, repository: str, build_id: str, target: Target | None) -> None:
        denied = RegistryError("DENIED", f"this pull credential is limited to build {build_id}")
        if target is None or target.kind not in ("manifest", "blob", "referrers"):
            raise denied
        manifests, blobs = await self.build_reachability(repository, build_id)
        # Referrers of a manifest in the build (signatures, SBOMs) are part of what the build carries.
        allowed = blobs if target.kind == "blob" else manifests
        if target.reference not in allowed:
            raise denied

    async def allows(self, request: web.Request, repository: str, action: str) -> bool:
        """Whether this request may ``action`` on all of ``repository`` (a build-scoped credential may not)."""
        identity = await self.identity(request)
        return (
            identity is not None and identity.allows(repository, action) and not identity.build_restriction(repository)
        )


__all__ = ["AuthError", "Identity", "Permission", "Target", "TokenAccess", "TokenAuthenticator"]
