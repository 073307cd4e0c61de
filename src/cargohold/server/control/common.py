"""Request helpers every control-API module shares: errors, JSON bodies, the caller, project access."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from cargohold.isotime import parse_iso
from cargohold.metadata.control import BuildRecord, ControlStore, ProjectRecord
from cargohold.oci import strictjson
from cargohold.server.auth.policy import Identity, TokenAccess
from cargohold.server.auth.visibility import explain_missing_build
from cargohold.server.http.bodies import BodyStalled, BodyTooLarge, read_body
from cargohold.server.http.errors import RegistryError
from cargohold.server.state import RegistryState, state_of

MAX_BODY = 256 * 1024


def api_error(status: int, code: str, message: str) -> RegistryError:
    """An API error in the registry's ``{"errors": [{code, message}]}`` shape (codes beyond OCI's: NOT_FOUND,
    INVALID, CONFLICT)."""
    return RegistryError(code, message, status=status)


async def read_json_body(request: web.Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The request's JSON object (``{}`` for an empty body), read completely; oversized (413), stalled (408)
    or malformed (400) bodies are refused."""
    try:
        raw = await read_body(request, limit)
    except BodyTooLarge as exc:
        raise api_error(413, "SIZE_INVALID", str(exc)) from None
    except BodyStalled as exc:
        raise RegistryError("TIMEOUT", str(exc), status=408, close=True) from None
    if not raw.strip():
        return {}
    try:
        body = strictjson.loads(raw)
    except strictjson.JsonInvalid as exc:
        raise api_error(400, "INVALID", f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise api_error(400, "INVALID", "request body must be a JSON object")
    return body


async def authenticated(request: web.Request) -> tuple[RegistryState, ControlStore, Identity]:
    """The server state, its control store, and the caller; 401 with a challenge when no credential came."""
    state = state_of(request)
    if state.auth is None or state.control is None:
        raise api_error(404, "NOT_FOUND", "this server runs without the control plane")
    identity = await identity_or_challenge(
        state.auth, request, "authentication required: send Authorization: Bearer <token> (or Basic x-token:<token>)"
    )
    return state, state.control, identity


async def identity_or_challenge(auth: TokenAccess, request: web.Request, message: str) -> Identity:
    """The caller, or 401 UNAUTHORIZED with ``message`` and the auth challenge when no credential came."""
    identity = await auth.identity(request)
    if identity is None:
        raise RegistryError("UNAUTHORIZED", message, headers=auth.challenge(None))
    return identity


def check_project_access(identity: Identity, project_id: str, action: str) -> None:
    """Unknown and invisible projects look the same (404); visible but not allowed is 403."""
    if not identity.project_allows(project_id, "pull"):
        raise api_error(404, "NOT_FOUND", f"project {project_id} does not exist")
    if not identity.project_allows(project_id, action):
        raise api_error(
            403, "DENIED", f"the {identity.principal.kind.value} credential may not {action} in {project_id}"
        )


def not_found(message: str) -> RegistryError:
    return api_error(404, "NOT_FOUND", message)


def invalid(message: str) -> RegistryError:
    return api_error(400, "INVALID", message)


def require_admin(identity: Identity) -> None:
    if not identity.is_admin:
        raise api_error(403, "DENIED", "only an admin token may do this")


async def project_for(
    state: RegistryState, control: ControlStore, identity: Identity, project_id: str, action: str
) -> ProjectRecord:
    """The project, if the caller may ``action`` on it; unknown and forbidden look the same (404)."""
    check_project_access(identity, project_id, "pull")
    project = await state.run(control.get_project, project_id)
    if project is None:
        raise not_found(f"project {project_id} does not exist")
    check_project_access(identity, project_id, action)
    return project


async def build_for(
    state: RegistryState, control: ControlStore, identity: Identity, build_id: str, action: str
) -> BuildRecord:
    build = await state.run(control.get_build, build_id)
    if build is None or not identity.project_allows(build.project_id, "pull"):
        # An evicted or expired build is gone from the builds table; the audit log can still say why, but only
        # to a caller that may see its project (to anyone else it is as unknown as a build never created).
        explained = await explain_missing_build(state, identity, build_id) if build is None else None
        raise not_found(explained or f"build {build_id} does not exist")
    restricted = identity.build_restriction(build.project_id)
    if restricted is not None and restricted != build_id:
        raise not_found(f"build {build_id} does not exist")
    if not identity.project_allows(build.project_id, action):
        raise api_error(
            403, "DENIED", f"the {identity.principal.kind.value} credential may not {action} in {build.project_id}"
        )
    return build


def registry_host(state: RegistryState) -> str:
    """``host[:port]`` as it appears in image references (``<host>/<project>:<build>``)."""
    return urlsplit(state.settings.resolved_public_url()).netloc


MAX_DURATION_SECONDS = 100 * 365 * 86400
"""No duration in a request may exceed about 100 years (timedelta and datetime arithmetic overflow)."""


def duration(value: Any, field: str, *, allow_none: bool = False) -> timedelta | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_DURATION_SECONDS:
        raise invalid(
            f"{field} must be a positive number of seconds up to {MAX_DURATION_SECONDS}"
            f"{' or null' if allow_none else ''}"
        )
    return timedelta(seconds=value)


MAX_EXTENSION = timedelta(days=100 * 365)
"""Longest ``by`` accepted: far beyond any retention, and far from the datetime range's end."""


def extension(body: dict[str, Any]) -> tuple[timedelta | None, datetime | None]:
    """``{"by": seconds}`` or ``{"until": iso}`` of an extend request (the service checks exactly one came)."""
    by, until = body.get("by"), body.get("until")
    if by is not None and (isinstance(by, bool) or not isinstance(by, int | float)):
        raise api_error(400, "INVALID", '"by" must be a number of seconds')
    if by is not None and not -MAX_EXTENSION.total_seconds() <= by <= MAX_EXTENSION.total_seconds():
        raise api_error(
            400, "INVALID", f'"by" must be at most {int(MAX_EXTENSION.total_seconds())} seconds (100 years)'
        )
    try:
        until_at = parse_iso(str(until)) if until is not None else None
    except ValueError:
        raise api_error(400, "INVALID", f'"until" must be an ISO 8601 time, not {until!r}') from None
    return (timedelta(seconds=by) if by is not None else None), until_at


def flag(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in (None, "", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise api_error(400, "INVALID", f'"{field}" must be true or false')


async def room_to_clean_up(state: RegistryState) -> None:
    """Before work that frees space (GC, eviction): on a nearly full disk, give the database the reserve.

    Deleting rows needs room in SQLite's write-ahead log; the reserve file is there for exactly this.
    """
    if state.space is not None:
        await state.run(state.space.make_room_for_database)
