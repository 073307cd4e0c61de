"""Control-API answers: records turned into the :mod:`cargohold.schemas` objects the client parses.

The client reads every answer with those schema classes; writing them with the same classes keeps the two
sides from drifting apart (one shape of a build, whichever route answers with one, and a field added on one
side is added on the other). Handlers build a schema object and :func:`respond` with it; the converters here
are the one place a store's record becomes its wire form.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cargohold import schemas
from cargohold.metadata.control import BuildRecord, CredentialRecord, ProjectRecord, TrustRecord
from cargohold.server.auth.policy import admin_permissions_of


def respond(answer: schemas.Schema, *, status: int = 200) -> web.Response:
    """``answer`` as the JSON body of a response."""
    return web.json_response(answer.to_json(), status=status)


def build(record: BuildRecord, registry_host: str) -> schemas.Build:
    """A build as every route answers it (``registry_host``: ``host[:port]`` of image references)."""
    return schemas.Build(
        id=record.id,
        project_id=record.project_id,
        status=record.status,
        created_at=record.created_at,
        saved_at=record.saved_at,
        expires_at=record.expires_at,
        pinned=record.pinned,
        digest=record.manifest_digest,
        media_type=record.media_type,
        platforms=list(record.platforms),
        targets=dict(record.targets),
        total_size=record.total_size,
        unique_size=record.unique_size,
        provenance=dict(record.provenance),
        failure=record.failure,
        created_by=record.created_by,
        save_tags=list(record.save_tags),
        reference=f"{registry_host}/{record.project_id}:{record.id}",
    )


def project(record: ProjectRecord, registry_host: str | None = None) -> schemas.Project:
    """A project; with ``registry_host`` (create and show) also where its images are pushed."""
    return schemas.Project(
        id=record.id,
        name=record.name,
        created_at=record.created_at,
        retention_seconds=None if record.retention is None else int(record.retention.total_seconds()),
        max_builds=record.max_builds,
        registry=None if registry_host is None else f"{registry_host}/{record.id}",
    )


def trust(record: TrustRecord) -> schemas.TrustRelationship:
    return schemas.TrustRelationship(
        id=record.id,
        project_id=record.project_id,
        provider=record.provider,
        issuer=record.issuer,
        owner=record.owner,
        repository=record.repository,
        repository_owner_id=record.owner_id,
        repository_id=record.repository_id,
        workflow=record.workflow,
        environment=record.environment,
        ref_pattern=record.ref_pattern,
        runner_environment=record.runner_environment,
        allow_events=sorted(record.allowed_events),
        pull_only=record.pull_only,
        permissions=sorted(record.permissions),
        created_at=record.created_at,
    )


def token(record: CredentialRecord) -> schemas.Token:
    """A token as listed: never its secret."""
    return schemas.Token(**_token_fields(record))


def token_created(record: CredentialRecord, secret: str, *, expiry_capped: bool) -> schemas.TokenCreated:
    """A new token with its secret, shown this once."""
    return schemas.TokenCreated(**_token_fields(record), token=secret, expiry_capped=expiry_capped)


def _token_fields(record: CredentialRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "kind": record.kind,
        "name": record.name,
        "project_id": record.project_id,
        # Stored grants are the wire objects already; reading them checks their shape on the way out.
        "permissions": [schemas.Permission.from_json(grant) for grant in record.permissions],
        "admin_permissions": sorted(admin_permissions_of(record)),
        "parent_id": record.parent_id,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "revoked_at": record.revoked_at,
    }


__all__ = ["build", "project", "respond", "token", "token_created", "trust"]
