"""Trust relationships: ``POST/GET /api/v1/projects/{project}/trust``, ``DELETE …/trust/{id}`` (admins)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from cargohold import schemas
from cargohold.metadata.control import (
    ControlStore,
    TrustRecord,
    new_id,
)
from cargohold.server.auth.oidc import GITHUB_ISSUER
from cargohold.server.auth.policy import Identity
from cargohold.server.auth.trust import RISKY_EVENTS, TrustConfigError
from cargohold.server.auth.trust import TrustRelationship as TrustSpec
from cargohold.server.control import render
from cargohold.server.control.common import (
    authenticated,
    invalid,
    not_found,
    project_for,
    read_json_body,
    require_admin,
)
from cargohold.server.control.tokens import requested_permissions
from cargohold.server.state import RegistryState

log = logging.getLogger(__name__)


def _optional_text(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str) and not (field.endswith("_id") and isinstance(value, int)):
        raise invalid(f"{field} must be a string")
    return str(value)


def _trust_issuer(state: RegistryState, requested: Any) -> str:
    """The OIDC issuer a new relationship is bound to: one the server trusts, GitHub's by default."""
    trusted = list(state.settings.oidc_issuers)
    if requested is None:
        return GITHUB_ISSUER if GITHUB_ISSUER in trusted or not trusted else trusted[0]
    if not isinstance(requested, str) or requested not in trusted:
        raise invalid(f"issuer must be one this server trusts: {', '.join(trusted)} (see --oidc-issuer)")
    return requested


async def add_trust(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    require_admin(identity)
    body = await read_json_body(request)
    stored = await add_trust_for(state, control, identity, request.match_info["project"], body)
    return render.respond(render.trust(stored), status=201)


async def add_trust_for(
    state: RegistryState, control: ControlStore, identity: Identity, project_id: str, body: dict[str, Any]
) -> TrustRecord:
    """Add the trust relationship ``body`` describes, as an admin (the API's rules; the dashboard's form too)."""
    require_admin(identity)
    project = await project_for(state, control, identity, project_id, "pull")
    owner, repository = body.get("owner"), body.get("repository")
    if isinstance(repository, str) and "/" in repository and owner is None:
        owner, repository = repository.split("/", 1)
    if not isinstance(owner, str) or not isinstance(repository, str):
        raise invalid('a trust relationship needs "owner" and "repository" (or "repository": "owner/name")')
    events = body.get("allow_events") or []
    if not isinstance(events, list) or not all(isinstance(event, str) for event in events):
        raise invalid(f"allow_events must be a list drawn from {sorted(RISKY_EVENTS)}")
    issuer = _trust_issuer(state, body.get("issuer"))
    permissions = requested_permissions(body.get("permissions"))
    trust_id = new_id()
    try:
        spec = TrustSpec(
            id=trust_id,
            project=project.id,
            repository_owner=owner,
            repository_name=repository,
            provider=str(body.get("provider", "github")),
            repository_owner_id=_optional_text(body, "repository_owner_id"),
            repository_id=_optional_text(body, "repository_id"),
            workflow=_optional_text(body, "workflow"),
            environment=_optional_text(body, "environment"),
            ref_pattern=_optional_text(body, "ref_pattern"),
            runner_environment=_optional_text(body, "runner_environment"),
            allow_events=frozenset(events),
            pull_only=bool(body.get("pull_only", False)),
            permissions=None if permissions is None else frozenset(permissions),
        )
    except TrustConfigError as exc:
        raise invalid(str(exc)) from None
    assert spec.permissions is not None
    record = TrustRecord(
        id=trust_id,
        project_id=project.id,
        provider=spec.provider,
        issuer=issuer,
        owner=spec.repository_owner.lower(),
        repository=spec.repository_name.lower(),
        owner_id=spec.repository_owner_id,
        repository_id=spec.repository_id,
        workflow=spec.workflow,
        environment=spec.environment,
        ref_pattern=spec.ref_pattern,
        runner_environment=spec.runner_environment,
        allowed_events=spec.allow_events,
        pull_only=spec.pull_only,
        permissions=spec.permissions,
        created_at=datetime.now(UTC),
    )
    stored = await state.run(control.add_trust, record)
    log.info("%s added trust %s: %s/%s -> project %s", identity.name, trust_id, owner, repository, project.id)
    return stored


async def list_trust(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    require_admin(identity)
    project = await project_for(state, control, identity, request.match_info["project"], "pull")
    rows = await state.run(control.list_trust, project.id)
    return render.respond(schemas.TrustList(trust_relationships=[render.trust(row) for row in rows]))


async def remove_trust(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    project_id, trust_id = request.match_info["project"], request.match_info["trust"]
    revoked = await remove_trust_for(state, control, identity, project_id, trust_id)
    return render.respond(schemas.TrustRemoved(id=trust_id, removed=True, credentials_revoked=revoked))


async def remove_trust_for(
    state: RegistryState, control: ControlStore, identity: Identity, project_id: str, trust_id: str
) -> int:
    """Remove a trust relationship and revoke what it issued, as an admin; returns how many were revoked."""
    require_admin(identity)
    revoked = await state.run(control.remove_trust, project_id, trust_id)
    if revoked is None:
        raise not_found(f"trust relationship {trust_id} does not exist in project {project_id}")
    assert state.auth is not None
    state.auth.authenticator.forget()
    log.info(
        "%s removed trust %s of project %s, revoking %d credential(s)", identity.name, trust_id, project_id, revoked
    )
    return revoked
