"""Authentication endpoints: the Docker token service and the OIDC exchange."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from cargohold.registry.auth import AuthError, Identity
from cargohold.registry.oidc import OidcError
from cargohold.registry.oidc_exchange import ExchangeDenied
from cargohold.registry.ratelimit import retry_after_header
from cargohold.registry.signing import SERVICE, ScopeError, granted_access, parse_scopes
from cargohold.registry.state import state_of

log = logging.getLogger(__name__)

MAX_OIDC_BODY = 64 * 1024


def _token_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"errors": [{"code": code, "message": message}], "details": message}
    return web.json_response(body, status=status, headers=headers)


async def token(request: web.Request) -> web.Response:
    """``GET /token`` (and the OAuth2 password-grant ``POST``): Docker token authentication."""
    state = state_of(request)
    assert state.auth is not None
    address = request.remote or "unknown"
    wait = state.auth.limiter.retry_after(address)
    if wait is not None:
        return _token_error(
            429,
            "TOOMANYREQUESTS",
            f"too many failed authentications from {address}; retry in {wait:.0f} s",
            {"Retry-After": retry_after_header(wait)},
        )
    if request.method == "POST":
        form = await request.post()
        if form.get("grant_type") != "password":
            return _token_error(400, "UNSUPPORTED", "only grant_type=password is supported; send x-token and a token")
        secret = str(form.get("password", ""))
        scopes_params = str(form.get("scope", "")).split()
        service = str(form.get("service", SERVICE))
    else:
        secret = ""
        scopes_params = request.query.getall("scope", [])
        service = request.query.get("service", SERVICE)
    if service != SERVICE:
        return _token_error(400, "UNSUPPORTED", f"this token service issues tokens for {SERVICE!r}, not {service!r}")
    try:
        scopes = parse_scopes(scopes_params)
    except ScopeError as exc:
        return _token_error(400, "UNSUPPORTED", str(exc))
    try:
        if request.method == "POST":
            identity: Identity | None = await state.auth.authenticator.from_secret(secret) if secret else None
        else:
            identity = await state.auth.authenticator.identify(request.headers.get("Authorization"))
    except AuthError as exc:
        state.auth.limiter.record_failure(address)
        return _token_error(401, "UNAUTHORIZED", str(exc), {"WWW-Authenticate": f'Basic realm="{SERVICE}"'})
    if identity is None:
        return _token_error(
            401,
            "UNAUTHORIZED",
            "credentials required: use user x-token and a Cargohold token (docker login -u x-token)",
            {"WWW-Authenticate": f'Basic realm="{SERVICE}"'},
        )
    access = granted_access(identity.principal, scopes)
    issued = state.auth.authenticator.signer.issue(identity.credential_id, access)
    log.info(
        "issued registry token to %s for %s", identity.name, " ".join(str(scope) for scope in issued.access) or "-"
    )
    return web.json_response(issued.response_body())


async def oidc_exchange(request: web.Request) -> web.Response:
    """``POST /auth/oidc/github-actions`` with ``{"token": "<GitHub OIDC JWT>"}``."""
    state = state_of(request)
    assert state.auth is not None and state.oidc is not None
    address = request.remote or "unknown"
    wait = state.auth.limiter.retry_after(address)
    if wait is not None:
        return web.json_response(
            {"ok": False, "error": f"too many failed authentications from {address}; retry in {wait:.0f} s"},
            status=429,
            headers={"Retry-After": retry_after_header(wait)},
        )
    if request.content_length is not None and request.content_length > MAX_OIDC_BODY:
        return web.json_response({"ok": False, "error": "request body too large"}, status=413)
    try:
        body = json.loads(await request.content.read(MAX_OIDC_BODY + 1))
        jwt_text = body["token"]
        if not isinstance(jwt_text, str) or not jwt_text:
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return web.json_response(
            {"ok": False, "error": 'send a JSON body {"token": "<the job\'s OIDC ID token>"}'}, status=400
        )
    try:
        exchanged = await state.oidc.exchange(jwt_text)
    except (OidcError, ExchangeDenied) as exc:
        state.auth.limiter.record_failure(address)
        log.info("OIDC exchange refused from %s: %s", address, exc)
        return web.json_response({"ok": False, "error": str(exc)}, status=401 if isinstance(exc, OidcError) else 403)
    log.info("OIDC exchange: issued %s for projects %s", exchanged.identity.name, ",".join(exchanged.projects))
    return web.json_response(
        {
            "ok": True,
            "token": exchanged.token,
            "expires_at": exchanged.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "projects": exchanged.projects,
        }
    )


async def oidc_discovery(request: web.Request) -> web.Response:
    """``GET /api/v1/oidc``: what audience to request and which issuers are trusted (no auth needed)."""
    state = state_of(request)
    settings = state.settings
    return web.json_response(
        {
            "audience": settings.resolved_oidc_audience(),
            "issuers": list(settings.oidc_issuers),
            "exchange_url": f"{settings.resolved_public_url()}/auth/oidc/github-actions",
        }
    )
