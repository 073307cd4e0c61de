"""Tokens: ``POST/GET /api/v1/tokens``, ``DELETE /api/v1/tokens/{id}``, ``GET /api/v1/whoami``.

Every credential minted here, and by the build routes (build tokens, pull-info tokens), is a child of the
caller's (:func:`mint`): it holds nothing the caller lacks, expires no later than the caller's, and is revoked
with it (see :func:`cargohold.server.auth.credentials.new_credential` and ``docs/api.md``, "Token lineage").
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from cargohold import schemas
from cargohold.metadata.control import (
    ControlStore,
    CredentialRecord,
    new_id,
)
from cargohold.metadata.errors import Conflict, ParentInactive
from cargohold.server.auth.credentials import (
    DEFAULT_PULL_TOKEN_TTL,
    CredentialExpired,
    CredentialKind,
    PermissionNotHeld,
    PermissionSetError,
    new_credential,
)
from cargohold.server.auth.policy import Identity, credential_record
from cargohold.server.control import render
from cargohold.server.control.common import (
    api_error,
    authenticated,
    build_for,
    duration,
    invalid,
    not_found,
    project_for,
    read_json_body,
    require_admin,
)
from cargohold.server.state import RegistryState

log = logging.getLogger(__name__)

PULL_TOKEN_TTL = timedelta(hours=1)
MAX_TOKEN_TTL = timedelta(days=366)


async def mint(
    state: RegistryState,
    control: ControlStore,
    identity: Identity,
    kind: CredentialKind,
    name: str,
    *,
    project: str | None = None,
    build_id: str | None = None,
    actions: frozenset[str] | list[str] | None = None,
    ttl: timedelta | None = None,
    metadata: dict[str, str] | None = None,
) -> tuple[str, CredentialRecord]:
    """Mint a credential as a child of the caller's (see the module docstring); returns its secret and row."""
    now = datetime.now(UTC)
    try:
        token, stored = new_credential(
            kind,
            credential_id=new_id(),
            name=name,
            now=now,
            project=project,
            build_id=build_id,
            actions=actions,
            ttl=ttl,
            parent=identity.minting_parent,
        )
    except PermissionNotHeld as exc:
        raise api_error(403, "DENIED", str(exc)) from None
    except PermissionSetError as exc:
        raise invalid(str(exc)) from None
    except CredentialExpired as exc:
        raise api_error(401, "UNAUTHORIZED", str(exc)) from None
    record = credential_record(replace(stored, metadata=metadata or {}), project_id=project)
    try:
        stored_record = await state.run(control.add_credential, record)
    except ParentInactive as exc:
        raise api_error(401, "UNAUTHORIZED", f"{exc}; nothing was created") from None
    return token, stored_record


def requested_permissions(value: Any) -> list[str] | None:
    """The ``permissions`` field: a list of names, or one comma-separated string (as the CLI takes it)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise invalid('permissions must be a list of names, e.g. ["pull", "push", "delete"]')
    return value


async def create_token(request: web.Request) -> web.Response:
    """Admins mint any kind; a credential with push on a project may mint pull tokens for it.

    The new token is a child of the caller's credential (capped expiry, revoked with it); admin tokens are
    roots. ``permissions`` chooses the token's set within what its kind allows (and its parent holds).
    """
    state, control, identity = await authenticated(request)
    created = await create_token_for(state, control, identity, await read_json_body(request))
    return render.respond(created, status=201)


async def create_token_for(
    state: RegistryState, control: ControlStore, identity: Identity, body: dict[str, Any]
) -> schemas.TokenCreated:
    """Mint the token ``body`` asks for, as ``identity`` (the API's rules; the dashboard's form uses it too)."""
    requested = requested_permissions(body.get("permissions"))
    try:
        kind = CredentialKind(body.get("kind", "project"))
    except ValueError:
        raise invalid("kind must be one of admin, project, pull") from None
    if kind is CredentialKind.OIDC:
        raise invalid("OIDC credentials come only from an OIDC exchange")
    name = body.get("name") or f"{kind.value} token"
    if not isinstance(name, str) or len(name) > 200:
        raise invalid("name must be a string of at most 200 characters")
    ttl = duration(body["expires_in"], "expires_in") if body.get("expires_in") is not None else None
    if ttl is not None and ttl > MAX_TOKEN_TTL:
        raise invalid("expires_in may be at most one year")
    project_id = body.get("project_id")
    build_id = body.get("build_id")
    if build_id is not None:
        build = await build_for(state, control, identity, str(build_id), "pull")
        project_id = project_id or build.project_id
        if project_id != build.project_id:
            raise invalid(f"build {build_id} belongs to project {build.project_id}, not {project_id}")
    if kind is CredentialKind.ADMIN:
        require_admin(identity)
        if project_id or build_id:
            raise invalid("an admin token is not tied to a project or build")
    elif not isinstance(project_id, str):
        raise invalid(f"a {kind.value} token needs a project_id")
    else:
        await project_for(state, control, identity, project_id, "push" if kind is CredentialKind.PULL else "pull")
        if kind is CredentialKind.PROJECT:
            require_admin(identity)
        if kind is CredentialKind.PROJECT and build_id:
            raise invalid("a project token covers the whole project; use kind pull for one build")
    lifetime = ttl or (DEFAULT_PULL_TOKEN_TTL if kind is CredentialKind.PULL else None)
    asked_until = None if lifetime is None else datetime.now(UTC) + lifetime
    token, row = await mint(
        state,
        control,
        identity,
        kind,
        name,
        project=project_id if kind is not CredentialKind.ADMIN else None,
        build_id=build_id,
        actions=requested,
        ttl=ttl,
        metadata={"created_by": identity.name},
    )
    log.info("%s created %s token %s (%s)", identity.name, kind.value, row.id, name)
    # True when the token expires earlier than asked (or at all, when asked for none): its parent does.
    capped = row.expires_at is not None and (asked_until is None or row.expires_at < asked_until - timedelta(seconds=1))
    return render.token_created(row, token, expiry_capped=capped and row.parent_id is not None)


async def list_tokens(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    project_id = request.query.get("project")
    include_inactive = request.query.get("all") in ("1", "true")
    if not identity.is_admin and (project_id is None or not identity.project_allows(project_id, "push")):
        raise api_error(403, "DENIED", "listing tokens needs an admin token (or push on the project given)")
    rows = await state.run(lambda: control.list_credentials(project_id, include_inactive=include_inactive))
    return render.respond(schemas.TokenList(tokens=[render.token(row) for row in rows]))


async def revoke_token(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    force = request.query.get("force") in ("1", "true")
    return render.respond(await revoke_token_for(state, control, identity, request.match_info["token"], force))


async def revoke_token_for(
    state: RegistryState, control: ControlStore, identity: Identity, token_id: str, force: bool
) -> schemas.TokenRevoked:
    """Revoke a token and its descendants, as ``identity`` (the API's rules; the dashboard uses them too)."""
    row = await state.run(control.get_credential, token_id)
    if row is None:
        raise not_found(f"token {token_id} does not exist")
    if not identity.is_admin and not (
        row.project_id and row.kind == "pull" and identity.project_allows(row.project_id, "push")
    ):
        raise api_error(403, "DENIED", "revoking this token needs an admin token")
    # The last admin token goes only with ?force=1 (the bootstrap CARGOHOLD_ADMIN_TOKEN is another way in).
    keep_an_admin = not force and state.settings.admin_token is None
    try:
        revoked = await state.run(lambda: control.revoke_credential(token_id, keep_an_admin=keep_an_admin))
    except Conflict:
        raise api_error(
            409,
            "CONFLICT",
            f"token {token_id} ({row.name}) is the last admin token: revoking it would leave nobody able to manage "
            "this server; create another admin token first (cargohold tokens create --kind admin), or revoke it "
            "with --force (recovery is then cargohold admin reset-token on the server's host)",
        ) from None
    assert state.auth is not None
    state.auth.authenticator.forget()
    descendants = max(revoked - (1 if row.revoked_at is None else 0), 0)
    log.info("%s revoked token %s (%s) and %d token(s) minted from it", identity.name, row.id, row.name, descendants)
    return schemas.TokenRevoked(id=token_id, revoked=True, descendants_revoked=descendants)


async def whoami(request: web.Request) -> web.Response:
    _state, _control, identity = await authenticated(request)
    principal = identity.principal
    answer = schemas.Whoami(
        kind=principal.kind.value,
        name=principal.name,
        credential_id=principal.credential_id,
        permissions=[schemas.Permission.from_json(permission.to_json()) for permission in principal.permissions],
        admin_permissions=sorted(principal.admin_permissions or ()),
        expires_at=principal.expires_at,
    )
    return render.respond(answer)
