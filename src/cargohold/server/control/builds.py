"""Builds: create, list, show, save, fail, save-tags, pull-info (and pin/unpin/extend/delete, wired with
lifecycle). What a build must keep true is :mod:`cargohold.domain.builds`; these handlers parse, check access
and render (:func:`cargohold.server.control.render.build`, the one shape of a build).
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

from aiohttp import web

from cargohold import schemas
from cargohold.domain.builds import BUILD_STATUSES, MAX_ID_SEARCH
from cargohold.oci.reference import is_valid_tag
from cargohold.server.auth.credentials import (
    ACTIONS_PULL,
    ACTIONS_PUSH,
    CredentialKind,
)
from cargohold.server.auth.visibility import explain_missing_tag
from cargohold.server.control import render
from cargohold.server.control.common import (
    api_error,
    authenticated,
    build_for,
    extension,
    flag,
    invalid,
    not_found,
    project_for,
    read_json_body,
    registry_host,
    room_to_clean_up,
)
from cargohold.server.control.tokens import PULL_TOKEN_TTL, mint
from cargohold.server.http.query_limits import LimitError, page_size

log = logging.getLogger(__name__)

BUILD_TOKEN_TTL = timedelta(hours=6)
"""Lifetime of the push credential handed out with a new build: long enough for a slow multi-platform build
(never longer than the credential that created the build: lineage caps it)."""
BUILD_TOKEN_PERMISSIONS = frozenset({ACTIONS_PULL, ACTIONS_PUSH})
"""A build token pushes its image; it never carries delete, even when its creator does."""


async def create_build(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    project = await project_for(state, control, identity, request.match_info["project"], "push")
    body = await read_json_body(request)
    # Provenance from a verified OIDC token wins over anything the client reports about itself.
    provenance: dict[str, Any] = dict(identity.claims or {})
    reported = body.get("provenance")
    if isinstance(reported, dict) and not provenance:
        provenance = {str(k): str(v)[:500] for k, v in list(reported.items())[:20]}
        provenance["reported_by_client"] = "true"
    request_key = _idempotency_key(request)
    build = await state.builds.create(
        project.id, provenance=provenance or None, created_by=identity.name, request_key=request_key
    )
    # A repeated request gets its build with a new token: the first answer, and its token, were lost.
    token, row = await mint(
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
    assert row.expires_at is not None  # a build token always has a lifetime (BUILD_TOKEN_TTL)
    created = schemas.BuildCreated(
        build_id=build.id,
        project_id=project.id,
        registry=registry_host(state),
        repository=project.id,
        reference=f"{registry_host(state)}/{project.id}:{build.id}",
        token=token,
        token_expires_at=row.expires_at,
    )
    return render.respond(created, status=200 if build.replayed else 201)


IDEMPOTENCY_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def _idempotency_key(request: web.Request) -> str | None:
    """The ``Idempotency-Key`` header (16-64 letters, digits, ``-`` or ``_``), if any."""
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if not IDEMPOTENCY_KEY_RE.match(value):
        raise invalid("Idempotency-Key must be 16 to 64 letters, digits, '-' or '_' (e.g. a random UUID's hex)")
    return value


async def list_builds(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    project = await project_for(state, control, identity, request.match_info["project"], "pull")
    try:
        limit = page_size(request.query.get("limit"), name="limit", default=50, maximum=500)
    except LimitError as exc:
        raise invalid(str(exc)) from None
    before = request.query.get("before")
    tag = request.query.get("tag")
    status = request.query.get("status") or None
    if status is not None and status not in BUILD_STATUSES:
        raise invalid(f"status must be one of {', '.join(BUILD_STATUSES)}")
    pinned = flag(request.query["pinned"], "pinned") if request.query.get("pinned") else None
    text = request.query.get("q") or None
    if text is not None and len(text) > MAX_ID_SEARCH:
        raise invalid(f"q (part of a build ID) is at most {MAX_ID_SEARCH} characters")
    restricted = identity.build_restriction(project.id)
    if restricted is not None:
        # A credential limited to one build lists that build alone (if it matches), never a page of others.
        own = await state.builds.get(restricted)
        matches = own is not None and own.project_id == project.id and before is None
        builds = [own] if own is not None and matches and (tag is None or tag in own.save_tags) else []
    else:
        builds = await state.builds.list_page(
            project.id, limit=limit, before=before, tag=tag, status=status, pinned=pinned, id_contains=text
        )
    host = registry_host(state)
    page = schemas.BuildPage(
        builds=[render.build(build, host) for build in builds], next=builds[-1].id if len(builds) == limit else None
    )
    return render.respond(page)


async def show_build(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    build = await build_for(state, control, identity, request.match_info["build"], "pull")
    return render.respond(render.build(build, registry_host(state)))


def _tags(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise invalid(f"{field} must be a list of strings")
    bad = [tag for tag in value if not is_valid_tag(tag)]
    if bad:
        raise invalid(f"{field} has invalid tags {bad}: up to 128 letters, digits, '_', '.', '-'")
    return list(dict.fromkeys(value))


async def save_build(request: web.Request) -> web.Response:
    """Mark a build saved: the image must already be in the registry under ``<project>:<build>``."""
    state, control, identity = await authenticated(request)
    build = await build_for(state, control, identity, request.match_info["build"], "push")
    body = await read_json_body(request)
    save_tags = _tags(body.get("save_tags"), "save_tags")
    targets = _tags(body.get("targets"), "targets")
    saved = await state.builds.save(build, save_tags=save_tags, targets=targets)
    log.info("%s saved build %s (%s, %s bytes)", identity.name, build.id, saved.manifest_digest, saved.total_size)
    return render.respond(render.build(saved, registry_host(state)))


async def fail_build(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    build = await build_for(state, control, identity, request.match_info["build"], "push")
    reason = (await read_json_body(request)).get("reason") or "no reason given"
    failed = await state.builds.fail(build.id, str(reason))
    return render.respond(render.build(failed, registry_host(state)))


async def add_tags(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    build = await build_for(state, control, identity, request.match_info["build"], "push")
    tags = _tags((await read_json_body(request)).get("tags"), "tags")
    if not tags:
        raise invalid('send {"tags": ["latest", ...]}')
    tagged = await state.builds.add_save_tags(build.id, tags)
    return render.respond(render.build(tagged, registry_host(state)))


async def remove_tag(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    build = await build_for(state, control, identity, request.match_info["build"], "push")
    untagged = await state.builds.remove_save_tag(build.id, request.match_info["tag"])
    return render.respond(render.build(untagged, registry_host(state)))


async def pull_info(request: web.Request) -> web.Response:
    """``GET /api/v1/pull-info?ref=<build>|<project>:<tag>``: where to pull from, with a 1-hour pull token."""
    state, control, identity = await authenticated(request)
    ref = request.query.get("ref", "").strip()
    if not ref:
        raise invalid("pass ?ref=<build-id> or ?ref=<project>:<tag>")
    project_id, sep, tag = ref.rpartition(":")
    if "/" in project_id:  # a full reference like host/project:tag
        project_id = project_id.rsplit("/", 1)[1]
    if sep:
        if not identity.project_allows(project_id, "pull"):
            raise not_found(f"{ref} does not exist")
        build = await state.builds.find_by_tag(project_id, tag)
        if build is None:
            raise not_found(await explain_missing_tag(state, identity, project_id, tag) or f"{ref} does not exist")
        build = await build_for(state, control, identity, build.id, "pull")
    else:
        build = await build_for(state, control, identity, ref, "pull")
    if build.status != "saved":
        raise api_error(409, "CONFLICT", f"build {build.id} is {build.status}, not saved; nothing to pull")
    # A child of the caller's credential: a build-scoped chl_ asking again gets a token that dies with it, so
    # repeated pull-info never extends a credential's life.
    token, row = await mint(
        state,
        control,
        identity,
        CredentialKind.PULL,
        f"pull-info {build.id} for {identity.principal.name}",
        project=build.project_id,
        build_id=build.id,
        ttl=PULL_TOKEN_TTL,
    )
    # A saved build has its image (digest, media type); a pull-info token always has a lifetime.
    assert build.manifest_digest is not None and build.media_type is not None and row.expires_at is not None
    info = schemas.PullInfo(
        build_id=build.id,
        project_id=build.project_id,
        registry=registry_host(state),
        repository=build.project_id,
        reference=f"{registry_host(state)}/{build.project_id}:{build.id}",
        digest=build.manifest_digest,
        media_type=build.media_type,
        platforms=list(build.platforms),
        targets=dict(build.targets),
        username="x-token",
        token=token,
        token_expires_at=row.expires_at,
    )
    return render.respond(info)


# --- pin, unpin, extend, delete (wired with lifecycle: cargohold.server.control.lifecycle.install) --------

MAX_LIFECYCLE_BODY = 64 * 1024


async def pin_build(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    build = await build_for(state, control, identity, request.match_info["build"], "push")
    return render.respond(render.build(await state.builds.pin(build.id, identity.name), registry_host(state)))


async def unpin_build(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    build = await build_for(state, control, identity, request.match_info["build"], "push")
    return render.respond(render.build(await state.builds.unpin(build.id, identity.name), registry_host(state)))


async def extend_build(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    build = await build_for(state, control, identity, request.match_info["build"], "push")
    by, until = extension(await read_json_body(request, MAX_LIFECYCLE_BODY))
    extended = await state.builds.extend(build.id, identity.name, by=by, until=until)
    return render.respond(render.build(extended, registry_host(state)))


async def delete_build(request: web.Request) -> web.Response:
    """Evict a build now (``?dry_run=1``: say what would go). Pinned builds too: a person asked."""
    state, control, identity = await authenticated(request)
    build = await build_for(state, control, identity, request.match_info["build"], "delete")
    dry_run = flag(request.query.get("dry_run"), "dry_run")
    await room_to_clean_up(state)
    eviction = await state.builds.evict(build.id, identity.name, dry_run=dry_run)
    deletion = schemas.BuildDeletion(dry_run=dry_run, evicted=[schemas.Eviction.from_json(eviction.to_json())])
    return render.respond(deletion)
