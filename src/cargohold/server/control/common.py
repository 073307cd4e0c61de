"""Request helpers every control-API module shares: errors, JSON bodies, the caller, project access."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cargohold.metadata.control import ControlStore
from cargohold.oci import strictjson
from cargohold.server.auth.policy import Identity, TokenAccess
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
