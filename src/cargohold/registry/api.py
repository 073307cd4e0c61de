"""The control API under ``/api/v1``: projects, builds, save-tags, tokens, trust relationships, pull-info.

JSON in, JSON out; errors use the same ``{"errors": [{code, message}]}`` shape as the registry so clients
need one error parser. Every route authenticates with the same credentials as the registry
(``Authorization: Bearer <token>`` or Basic ``x-token:<token>``) and checks scope itself:

* admins manage projects, trust relationships and tokens of any kind;
* a credential with push on a project creates and finishes that project's builds and mints pull tokens;
* a credential with pull on a project reads its builds and asks for pull-info (a pull token of its own
  is never widened: pull-info for a build-scoped caller stays scoped to that build).

Every credential minted here (tokens, build tokens, pull-info tokens) is a child of the caller's: it holds
nothing the caller lacks, expires no later than the caller's, and is revoked with it (see
:func:`cargohold.registry.credentials.new_credential` and ``docs/api.md``, "Token lineage").
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from cargohold.metadata.control import (
    BuildRecord,
    Conflict,
    ControlStore,
    NotFound,
    ParentInactive,
    ProjectRecord,
    new_id,
)
from cargohold.metadata.models import Credential
from cargohold.metadata.models import TrustRelationship as TrustRow
from cargohold.oci import mediatypes as mt
from cargohold.oci import strictjson
from cargohold.oci.digest import Digest, DigestError
from cargohold.oci.reference import is_valid_tag
from cargohold.registry.api_common import api_error, authenticated, check_project_access, read_json_body
from cargohold.registry.auth import Identity, admin_permissions_of, stored_to_row
from cargohold.registry.credentials import (
    ACTIONS_PULL,
    ACTIONS_PUSH,
    DEFAULT_PULL_TOKEN_TTL,
    CredentialExpired,
    CredentialKind,
    PermissionNotHeld,
    PermissionSetError,
    new_credential,
)
from cargohold.registry.errors import RegistryError
from cargohold.registry.oidc import GITHUB_ISSUER
from cargohold.registry.query_limits import LimitError, page_size
from cargohold.registry.state import RegistryState
from cargohold.registry.trust import RISKY_EVENTS, TrustConfigError
from cargohold.registry.trust import TrustRelationship as TrustSpec
from cargohold.registry.visibility import explain_missing_build, explain_missing_tag

log = logging.getLogger(__name__)

BUILD_TOKEN_TTL = timedelta(hours=6)
"""Lifetime of the push credential handed out with a new build: long enough for a slow multi-platform build
(never longer than the credential that created the build: lineage caps it)."""
BUILD_TOKEN_PERMISSIONS = frozenset({ACTIONS_PULL, ACTIONS_PUSH})
"""A build token pushes its image; it never carries delete, even when its creator does."""
PULL_TOKEN_TTL = timedelta(hours=1)
MAX_TOKEN_TTL = timedelta(days=366)
PROJECT_NAME_RE = re.compile(r"^[\w .@/:+-]{1,200}$")
MAX_CONFIG_READ = 4 * 1024**2
"""Largest image config read to find a build's platform."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- helpers ----------------------------------------------------------------------------------------------


def _not_found(message: str) -> RegistryError:
    return api_error(404, "NOT_FOUND", message)


def _invalid(message: str) -> RegistryError:
    return api_error(400, "INVALID", message)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _require_admin(identity: Identity) -> None:
    if not identity.is_admin:
        raise api_error(403, "DENIED", "only an admin token may do this")


async def _project_for(
    state: RegistryState, control: ControlStore, identity: Identity, project_id: str, action: str
) -> ProjectRecord:
    """The project, if the caller may ``action`` on it; unknown and forbidden look the same (404)."""
    check_project_access(identity, project_id, "pull")
    project = await state.run(control.get_project, project_id)
    if project is None:
        raise _not_found(f"project {project_id} does not exist")
    check_project_access(identity, project_id, action)
    return project


async def _build_for(
    state: RegistryState, control: ControlStore, identity: Identity, build_id: str, action: str
) -> BuildRecord:
    build = await state.run(control.get_build, build_id)
    if build is None or not identity.can_project(build.project_id, "pull"):
        # An evicted or expired build is gone from the builds table; the audit log can still say why, but only
        # to a caller that may see its project (to anyone else it is as unknown as a build never created).
        explained = await explain_missing_build(state, identity, build_id) if build is None else None
        raise _not_found(explained or f"build {build_id} does not exist")
    restricted = identity.build_restriction(build.project_id)
    if restricted is not None and restricted != build_id:
        raise _not_found(f"build {build_id} does not exist")
    if not identity.can_project(build.project_id, action):
        raise api_error(
            403, "DENIED", f"the {identity.principal.kind.value} credential may not {action} in {build.project_id}"
        )
    return build


def registry_host(state: RegistryState) -> str:
    """``host[:port]`` as it appears in image references (``<host>/<project>:<build>``)."""
    return urlsplit(state.settings.resolved_public_url()).netloc


def _reference(state: RegistryState, project_id: str, tag: str) -> str:
    return f"{registry_host(state)}/{project_id}:{tag}"


def _build_json(state: RegistryState, build: BuildRecord) -> dict[str, Any]:
    data = build.to_json()
    data["reference"] = _reference(state, build.project_id, build.id)
    return data


MAX_DURATION_SECONDS = 100 * 365 * 86400
"""No duration in a request may exceed about 100 years (timedelta and datetime arithmetic overflow)."""


def _duration(value: Any, field: str, *, allow_none: bool = False) -> timedelta | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_DURATION_SECONDS:
        raise _invalid(
            f"{field} must be a positive number of seconds up to {MAX_DURATION_SECONDS}"
            f"{' or null' if allow_none else ''}"
        )
    return timedelta(seconds=value)


async def _mint(
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
) -> tuple[str, Credential]:
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
        raise _invalid(str(exc)) from None
    except CredentialExpired as exc:
        raise api_error(401, "UNAUTHORIZED", str(exc)) from None
    row = stored_to_row(replace(stored, metadata=metadata or {}), project_id=project)
    try:
        stored_row = await state.run(control.add_credential, row)
    except ParentInactive as exc:
        raise api_error(401, "UNAUTHORIZED", f"{exc}; nothing was created") from None
    return token, stored_row


def _credential_json(row: Credential) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "name": row.name,
        "project_id": row.project_id,
        "permissions": json.loads(row.permissions),
        "admin_permissions": sorted(admin_permissions_of(row)),
        "parent_id": row.parent_id,
        "created_at": _iso(row.created_at),
        "expires_at": _iso(row.expires_at),
        "revoked_at": _iso(row.revoked_at),
    }


# --- projects ---------------------------------------------------------------------------------------------


async def list_projects(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    projects = await state.run(control.list_projects, identity.projects())
    return web.json_response({"projects": [project.to_json() for project in projects]})


def _project_settings(body: dict[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if "name" in body:
        name = body["name"]
        if not isinstance(name, str) or not PROJECT_NAME_RE.match(name):
            raise _invalid("name must be 1-200 characters of letters, digits, spaces and . @ / : + - _")
        settings["name"] = name
    if "retention_seconds" in body:
        settings["retention"] = _duration(body["retention_seconds"], "retention_seconds", allow_none=True)
    if "max_builds" in body:
        cap = body["max_builds"]
        if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= 1_000_000:
            raise _invalid("max_builds must be an integer between 1 and 1000000")
        settings["max_builds"] = cap
    return settings


async def create_project(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    _require_admin(identity)
    settings = _project_settings(await read_json_body(request))
    if "name" not in settings:
        raise _invalid('a project needs a name: {"name": "my-app"}')
    project = await state.run(lambda: control.create_project(**settings))
    log.info("%s created project %s (%s)", identity.name, project.id, project.name)
    data = project.to_json()
    data["registry"] = f"{registry_host(state)}/{project.id}"
    return web.json_response(data, status=201)


async def show_project(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    project = await _project_for(state, control, identity, request.match_info["project"], "pull")
    data = project.to_json()
    data["registry"] = f"{registry_host(state)}/{project.id}"
    return web.json_response(data)


async def update_project(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    _require_admin(identity)
    project_id = request.match_info["project"]
    settings = _project_settings(await read_json_body(request))
    try:
        project = await state.run(lambda: control.update_project(project_id, **settings))
    except NotFound as exc:
        raise _not_found(str(exc)) from None
    return web.json_response(project.to_json())


# --- builds -----------------------------------------------------------------------------------------------


async def create_build(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    project = await _project_for(state, control, identity, request.match_info["project"], "push")
    body = await read_json_body(request)
    # Provenance from a verified OIDC token wins over anything the client reports about itself.
    provenance: dict[str, Any] = dict(identity.claims or {})
    reported = body.get("provenance")
    if isinstance(reported, dict) and not provenance:
        provenance = {str(k): str(v)[:500] for k, v in list(reported.items())[:20]}
        provenance["reported_by_client"] = "true"
    request_key = _idempotency_key(request)
    try:
        build = await state.run(
            lambda: control.create_build(
                project.id, provenance=provenance or None, created_by=identity.name, request_key=request_key
            )
        )
    except Conflict as exc:
        raise api_error(409, "CONFLICT", str(exc)) from None
    # A repeated request gets its build with a new token: the first answer, and its token, were lost.
    token, row = await _mint(
        state,
        control,
        identity,
        CredentialKind.PROJECT,
        f"build {build.id}",
        project=project.id,
        actions=BUILD_TOKEN_PERMISSIONS,
        ttl=BUILD_TOKEN_TTL,
    )
    if build.replayed:
        log.info("%s repeated the request that started build %s in project %s", identity.name, build.id, project.id)
    else:
        log.info("%s started build %s in project %s", identity.name, build.id, project.id)
    return web.json_response(
        {
            "build_id": build.id,
            "project_id": project.id,
            "registry": registry_host(state),
            "repository": project.id,
            "reference": _reference(state, project.id, build.id),
            "token": token,
            "token_expires_at": _iso(row.expires_at),
        },
        status=200 if build.replayed else 201,
    )


IDEMPOTENCY_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def _idempotency_key(request: web.Request) -> str | None:
    """The ``Idempotency-Key`` header (16-64 letters, digits, ``-`` or ``_``), if any."""
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if not IDEMPOTENCY_KEY_RE.match(value):
        raise _invalid("Idempotency-Key must be 16 to 64 letters, digits, '-' or '_' (e.g. a random UUID's hex)")
    return value


async def list_builds(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    project = await _project_for(state, control, identity, request.match_info["project"], "pull")
    try:
        limit = page_size(request.query.get("limit"), name="limit", default=50, maximum=500)
    except LimitError as exc:
        raise _invalid(str(exc)) from None
    before = request.query.get("before")
    tag = request.query.get("tag")
    restricted = identity.build_restriction(project.id)
    if restricted is not None:
        # A credential limited to one build lists that build alone (if it matches), never a page of others.
        own = await state.run(control.get_build, restricted)
        matches = own is not None and own.project_id == project.id and before is None
        builds = [own] if own is not None and matches and (tag is None or tag in own.save_tags) else []
    else:
        try:
            builds = await state.run(lambda: control.list_builds(project.id, limit=limit, before=before, tag=tag))
        except NotFound as exc:
            raise _invalid(str(exc)) from None
    body: dict[str, Any] = {"builds": [_build_json(state, build) for build in builds]}
    if len(builds) == limit:
        body["next"] = builds[-1].id
    return web.json_response(body)


async def show_build(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    build = await _build_for(state, control, identity, request.match_info["build"], "pull")
    return web.json_response(_build_json(state, build))


def _platforms_of(state: RegistryState, payload: bytes, media_type: str) -> list[str]:
    """Platforms of a saved image, read from the stored manifest (never from what the client claims).

    The registry accepts any config blob and (before manifest validation checked it) any ``platform``
    value, so whatever cannot be read as a platform is skipped: the build is saved with fewer platforms
    (none, for an image whose config is not a JSON object) rather than failing.
    """
    try:
        body = strictjson.loads(payload)
    except strictjson.JsonInvalid:
        return []
    if not isinstance(body, dict):
        return []
    if media_type in mt.INDEXES:
        found: list[str] = []
        entries = body.get("manifests")
        for entry in entries if isinstance(entries, list) else []:
            text = _platform_text(entry.get("platform")) if isinstance(entry, dict) else None
            if text and text != "unknown/unknown" and text not in found:
                found.append(text)
        return found
    config = body.get("config")
    if not isinstance(config, dict) or config.get("mediaType") not in (mt.OCI_CONFIG, mt.DOCKER_CONFIG):
        return []
    size = config.get("size")
    if not isinstance(size, int) or size > MAX_CONFIG_READ:
        return []
    try:
        digest = Digest.parse(config.get("digest"))
        image_config = strictjson.loads(b"".join(state.blobs.open_blob(digest)))
    except (DigestError, strictjson.JsonInvalid, FileNotFoundError):
        return []
    text = _platform_text(image_config)
    return [text] if text else []


def _platform_text(platform: Any) -> str | None:
    if not isinstance(platform, dict):
        return None
    os_name, arch = platform.get("os"), platform.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        return None
    variant = platform.get("variant")
    return f"{os_name}/{arch}/{variant}" if isinstance(variant, str) and variant else f"{os_name}/{arch}"


def _tags(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise _invalid(f"{field} must be a list of strings")
    bad = [tag for tag in value if not is_valid_tag(tag)]
    if bad:
        raise _invalid(f"{field} has invalid tags {bad}: up to 128 letters, digits, '_', '.', '-'")
    return list(dict.fromkeys(value))


async def save_build(request: web.Request) -> web.Response:
    """Mark a build saved: the image must already be in the registry under ``<project>:<build>``."""
    state, control, identity = await authenticated(request)
    build = await _build_for(state, control, identity, request.match_info["build"], "push")
    body = await read_json_body(request)
    save_tags = _tags(body.get("save_tags"), "save_tags")
    targets = _tags(body.get("targets"), "targets")
    stored = await state.run(state.metadata.get_manifest, build.project_id, build.id, by_digest=False)
    if stored is None:
        raise api_error(
            409,
            "CONFLICT",
            f"{build.project_id}:{build.id} is not in the registry; push the image with that tag, then save",
        )
    platforms = await state.run(_platforms_of, state, stored.payload, stored.media_type)
    target_digests: dict[str, str] = {}
    for target in targets:
        found = await state.run(state.metadata.get_manifest, build.project_id, f"{build.id}-{target}", by_digest=False)
        if found is None:
            raise api_error(409, "CONFLICT", f"target {target}: push {build.project_id}:{build.id}-{target} first")
        target_digests[target] = found.digest
    try:
        saved = await state.run(
            lambda: control.mark_saved(build.id, platforms=platforms, targets=target_digests, save_tags=save_tags)
        )
    except Conflict as exc:
        raise api_error(409, "CONFLICT", str(exc)) from None
    after_save = request.app.get(AFTER_SAVE_KEY)
    if after_save is not None:
        await after_save(state, saved)
        saved = await state.run(control.get_build, build.id) or saved
    log.info("%s saved build %s (%s, %s bytes)", identity.name, build.id, saved.manifest_digest, saved.total_size)
    return web.json_response(_build_json(state, saved))


async def fail_build(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    build = await _build_for(state, control, identity, request.match_info["build"], "push")
    reason = (await read_json_body(request)).get("reason") or "no reason given"
    try:
        failed = await state.run(control.mark_failed, build.id, str(reason))
    except Conflict as exc:
        raise api_error(409, "CONFLICT", str(exc)) from None
    return web.json_response(_build_json(state, failed))


async def add_tags(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    build = await _build_for(state, control, identity, request.match_info["build"], "push")
    tags = _tags((await read_json_body(request)).get("tags"), "tags")
    if not tags:
        raise _invalid('send {"tags": ["latest", ...]}')
    try:
        tagged = await state.run(control.add_save_tags, build.id, tags)
    except Conflict as exc:
        raise api_error(409, "CONFLICT", str(exc)) from None
    return web.json_response(_build_json(state, tagged))


async def remove_tag(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    build = await _build_for(state, control, identity, request.match_info["build"], "push")
    try:
        untagged = await state.run(control.remove_save_tag, build.id, request.match_info["tag"])
    except NotFound as exc:
        raise _not_found(str(exc)) from None
    return web.json_response(_build_json(state, untagged))


async def pull_info(request: web.Request) -> web.Response:
    """``GET /api/v1/pull-info?ref=<build>|<project>:<tag>``: where to pull from, with a 1-hour pull token."""
    state, control, identity = await authenticated(request)
    ref = request.query.get("ref", "").strip()
    if not ref:
        raise _invalid("pass ?ref=<build-id> or ?ref=<project>:<tag>")
    project_id, sep, tag = ref.rpartition(":")
    if "/" in project_id:  # a full reference like host/project:tag
        project_id = project_id.rsplit("/", 1)[1]
    if sep:
        if not identity.can_project(project_id, "pull"):
            raise _not_found(f"{ref} does not exist")
        build = await state.run(control.find_build_by_tag, project_id, tag)
        if build is None:
            raise _not_found(await explain_missing_tag(state, identity, project_id, tag) or f"{ref} does not exist")
        build = await _build_for(state, control, identity, build.id, "pull")
    else:
        build = await _build_for(state, control, identity, ref, "pull")
    if build.status != "saved":
        raise api_error(409, "CONFLICT", f"build {build.id} is {build.status}, not saved; nothing to pull")
    # A child of the caller's credential: a build-scoped chl_ asking again gets a token that dies with it, so
    # repeated pull-info never extends a credential's life.
    token, row = await _mint(
        state,
        control,
        identity,
        CredentialKind.PULL,
        f"pull-info {build.id} for {identity.principal.name}",
        project=build.project_id,
        build_id=build.id,
        ttl=PULL_TOKEN_TTL,
    )
    return web.json_response(
        {
            "build_id": build.id,
            "project_id": build.project_id,
            "registry": registry_host(state),
            "repository": build.project_id,
            "reference": _reference(state, build.project_id, build.id),
            "digest": build.manifest_digest,
            "media_type": build.media_type,
            "platforms": build.platforms,
            "targets": build.targets,
            "username": "x-token",
            "token": token,
            "token_expires_at": _iso(row.expires_at),
        }
    )


AfterSave = Callable[[RegistryState, BuildRecord], Awaitable[None]]
AFTER_SAVE_KEY = web.AppKey("cargohold_after_save", AfterSave)  # type: ignore[arg-type]
"""The hook the lifecycle module installs: enforce the project's build cap and re-measure its storage."""


# --- tokens -----------------------------------------------------------------------------------------------


def _requested_permissions(value: Any) -> list[str] | None:
    """The ``permissions`` field: a list of names, or one comma-separated string (as the CLI takes it)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _invalid('permissions must be a list of names, e.g. ["pull", "push", "delete"]')
    return value


async def create_token(request: web.Request) -> web.Response:
    """Admins mint any kind; a credential with push on a project may mint pull tokens for it.

    The new token is a child of the caller's credential (capped expiry, revoked with it); admin tokens are
    roots. ``permissions`` chooses the token's set within what its kind allows (and its parent holds).
    """
    state, control, identity = await authenticated(request)
    body = await read_json_body(request)
    requested = _requested_permissions(body.get("permissions"))
    try:
        kind = CredentialKind(body.get("kind", "project"))
    except ValueError:
        raise _invalid("kind must be one of admin, project, pull") from None
    if kind is CredentialKind.OIDC:
        raise _invalid("OIDC credentials come only from an OIDC exchange")
    name = body.get("name") or f"{kind.value} token"
    if not isinstance(name, str) or len(name) > 200:
        raise _invalid("name must be a string of at most 200 characters")
    ttl = _duration(body["expires_in"], "expires_in") if body.get("expires_in") is not None else None
    if ttl is not None and ttl > MAX_TOKEN_TTL:
        raise _invalid("expires_in may be at most one year")
    project_id = body.get("project_id")
    build_id = body.get("build_id")
    if build_id is not None:
        build = await _build_for(state, control, identity, str(build_id), "pull")
        project_id = project_id or build.project_id
        if project_id != build.project_id:
            raise _invalid(f"build {build_id} belongs to project {build.project_id}, not {project_id}")
    if kind is CredentialKind.ADMIN:
        _require_admin(identity)
        if project_id or build_id:
            raise _invalid("an admin token is not tied to a project or build")
    elif not isinstance(project_id, str):
        raise _invalid(f"a {kind.value} token needs a project_id")
    else:
        await _project_for(state, control, identity, project_id, "push" if kind is CredentialKind.PULL else "pull")
        if kind is CredentialKind.PROJECT:
            _require_admin(identity)
        if kind is CredentialKind.PROJECT and build_id:
            raise _invalid("a project token covers the whole project; use kind pull for one build")
    lifetime = ttl or (DEFAULT_PULL_TOKEN_TTL if kind is CredentialKind.PULL else None)
    asked_until = None if lifetime is None else datetime.now(UTC) + lifetime
    token, row = await _mint(
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
    data = _credential_json(row)
    data["token"] = token
    # True when the token expires earlier than asked (or at all, when asked for none): its parent does.
    capped = row.expires_at is not None and (asked_until is None or row.expires_at < asked_until - timedelta(seconds=1))
    data["expiry_capped"] = capped and row.parent_id is not None
    return web.json_response(data, status=201)


async def list_tokens(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    project_id = request.query.get("project")
    include_inactive = request.query.get("all") in ("1", "true")
    if not identity.is_admin and (project_id is None or not identity.can_project(project_id, "push")):
        raise api_error(403, "DENIED", "listing tokens needs an admin token (or push on the project given)")
    rows = await state.run(lambda: control.list_credentials(project_id, include_inactive=include_inactive))
    return web.json_response({"tokens": [_credential_json(row) for row in rows]})


async def revoke_token(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    token_id = request.match_info["token"]
    row = await state.run(control.get_credential, token_id)
    if row is None:
        raise _not_found(f"token {token_id} does not exist")
    if not identity.is_admin and not (
        row.project_id and row.kind == "pull" and identity.can_project(row.project_id, "push")
    ):
        raise api_error(403, "DENIED", "revoking this token needs an admin token")
    # The last admin token goes only with ?force=1 (the bootstrap CARGOHOLD_ADMIN_TOKEN is another way in).
    keep_an_admin = request.query.get("force") not in ("1", "true") and state.settings.admin_token is None
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
    return web.json_response({"id": token_id, "revoked": True, "descendants_revoked": descendants})


# --- trust relationships ----------------------------------------------------------------------------------


def _trust_json(row: TrustRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "project_id": row.project_id,
        "provider": row.provider,
        "issuer": row.issuer,
        "owner": row.owner,
        "repository": row.repository,
        "repository_owner_id": row.owner_id,
        "repository_id": row.repository_id,
        "workflow": row.workflow,
        "environment": row.environment,
        "ref_pattern": row.ref_pattern,
        "runner_environment": row.runner_environment,
        "allow_events": json.loads(row.allowed_events) if row.allowed_events else [],
        "pull_only": row.pull_only,
        "permissions": sorted(json.loads(row.permissions)),
        "created_at": _iso(row.created_at),
    }


def _optional_text(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str) and not (field.endswith("_id") and isinstance(value, int)):
        raise _invalid(f"{field} must be a string")
    return str(value)


def _trust_issuer(state: RegistryState, requested: Any) -> str:
    """The OIDC issuer a new relationship is bound to: one the server trusts, GitHub's by default."""
    trusted = list(state.settings.oidc_issuers)
    if requested is None:
        return GITHUB_ISSUER if GITHUB_ISSUER in trusted or not trusted else trusted[0]
    if not isinstance(requested, str) or requested not in trusted:
        raise _invalid(f"issuer must be one this server trusts: {', '.join(trusted)} (see --oidc-issuer)")
    return requested


async def add_trust(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    _require_admin(identity)
    project = await _project_for(state, control, identity, request.match_info["project"], "pull")
    body = await read_json_body(request)
    owner, repository = body.get("owner"), body.get("repository")
    if isinstance(repository, str) and "/" in repository and owner is None:
        owner, repository = repository.split("/", 1)
    if not isinstance(owner, str) or not isinstance(repository, str):
        raise _invalid('a trust relationship needs "owner" and "repository" (or "repository": "owner/name")')
    events = body.get("allow_events") or []
    if not isinstance(events, list) or not all(isinstance(event, str) for event in events):
        raise _invalid(f"allow_events must be a list drawn from {sorted(RISKY_EVENTS)}")
    issuer = _trust_issuer(state, body.get("issuer"))
    permissions = _requested_permissions(body.get("permissions"))
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
        raise _invalid(str(exc)) from None
    assert spec.permissions is not None
    row = TrustRow(
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
        allowed_events=json.dumps(sorted(spec.allow_events)) if spec.allow_events else None,
        pull_only=spec.pull_only,
        permissions=json.dumps(sorted(spec.permissions)),
        created_at=datetime.now(UTC),
    )
    stored = await state.run(control.add_trust, row)
    log.info("%s added trust %s: %s/%s -> project %s", identity.name, trust_id, owner, repository, project.id)
    return web.json_response(_trust_json(stored), status=201)


async def list_trust(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    _require_admin(identity)
    project = await _project_for(state, control, identity, request.match_info["project"], "pull")
    rows = await state.run(control.list_trust, project.id)
    return web.json_response({"trust_relationships": [_trust_json(row) for row in rows]})


async def remove_trust(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    _require_admin(identity)
    project_id, trust_id = request.match_info["project"], request.match_info["trust"]
    revoked = await state.run(control.remove_trust, project_id, trust_id)
    if revoked is None:
        raise _not_found(f"trust relationship {trust_id} does not exist in project {project_id}")
    assert state.auth is not None
    state.auth.authenticator.forget()
    log.info(
        "%s removed trust %s of project %s, revoking %d credential(s)", identity.name, trust_id, project_id, revoked
    )
    return web.json_response({"id": trust_id, "removed": True, "credentials_revoked": revoked})


async def whoami(request: web.Request) -> web.Response:
    _state, _control, identity = await authenticated(request)
    principal = identity.principal
    return web.json_response(
        {
            "kind": principal.kind.value,
            "name": principal.name,
            "credential_id": principal.credential_id,
            "permissions": [permission.to_json() for permission in principal.permissions],
            "admin_permissions": sorted(principal.admin_permissions or ()),
            "expires_at": _iso(principal.expires_at),
        }
    )


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/api/v1/whoami", whoami)
    router.add_get("/api/v1/projects", list_projects)
    router.add_post("/api/v1/projects", create_project)
    router.add_get("/api/v1/projects/{project}", show_project)
    router.add_patch("/api/v1/projects/{project}", update_project)
    router.add_post("/api/v1/projects/{project}/builds", create_build)
    router.add_get("/api/v1/projects/{project}/builds", list_builds)
    router.add_post("/api/v1/projects/{project}/trust", add_trust)
    router.add_get("/api/v1/projects/{project}/trust", list_trust)
    router.add_delete("/api/v1/projects/{project}/trust/{trust}", remove_trust)
    router.add_get("/api/v1/builds/{build}", show_build)
    router.add_post("/api/v1/builds/{build}/save", save_build)
    router.add_post("/api/v1/builds/{build}/fail", fail_build)
    router.add_post("/api/v1/builds/{build}/tags", add_tags)
    router.add_delete("/api/v1/builds/{build}/tags/{tag}", remove_tag)
    router.add_get("/api/v1/pull-info", pull_info)
    router.add_post("/api/v1/tokens", create_token)
    router.add_get("/api/v1/tokens", list_tokens)
    router.add_delete("/api/v1/tokens/{token}", revoke_token)
