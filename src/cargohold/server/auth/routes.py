"""Authentication endpoints: the Docker token service and the OIDC exchange."""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from aiohttp import web

from cargohold import schemas
from cargohold.edge.proxies import client_address
from cargohold.edge.requestid import current_request_id
from cargohold.oci import strictjson
from cargohold.server.auth.oidc import OidcError
from cargohold.server.auth.oidc_exchange import ExchangeDenied
from cargohold.server.auth.policy import AuthError, Identity
from cargohold.server.auth.ratelimit import retry_after_header
from cargohold.server.auth.signing import SERVICE, ScopeError, granted_access, parse_scopes
from cargohold.server.http.bodies import BodyStalled, BodyTooLarge, read_body, respond_and_close
from cargohold.server.state import state_of

log = logging.getLogger(__name__)

MAX_OIDC_BODY = 64 * 1024
MAX_FORM_BODY = 64 * 1024
"""Largest ``POST /token`` form: a token, a service and a few scopes."""
MAX_FORM_FIELDS = 100
OIDC_BODY_HINT = 'send a JSON body {"token": "<the job\'s OIDC ID token>"}'


def _token_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, object] = {"errors": [{"code": code, "message": message}], "details": message}
    if (request_id := current_request_id()) is not None:
        body["request_id"] = request_id
    return web.json_response(body, status=status, headers=headers)


async def _read_form(request: web.Request) -> dict[str, str]:
    """The OAuth2 password-grant form (``application/x-www-form-urlencoded``), read completely; the first
    value of each field. ``ValueError`` says what is wrong with it."""
    content_type = request.content_type
    if request.headers.get("Content-Type") and content_type != "application/x-www-form-urlencoded":
        raise ValueError(f"send the token request as application/x-www-form-urlencoded, not {content_type}")
    raw = await read_body(request, MAX_FORM_BODY)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the token request form is not UTF-8") from None
    fields: dict[str, str] = {}
    for key, value in parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS):
        fields.setdefault(key, value)
    return fields


async def token(request: web.Request) -> web.StreamResponse:
    """``GET /token`` (and the OAuth2 password-grant ``POST``): Docker token authentication."""
    state = state_of(request)
    assert state.auth is not None
    address = client_address(request)
    wait = state.auth.limiter.retry_after(address)
    if wait is not None:
        return _token_error(
            429,
            "TOOMANYREQUESTS",
            f"too many failed authentications from {address}; retry in {wait:.0f} s",
            {"Retry-After": retry_after_header(wait)},
        )
    if request.method == "POST":
        try:
            form = await _read_form(request)
        except BodyTooLarge as exc:
            return _token_error(413, "SIZE_INVALID", str(exc))
        except BodyStalled as exc:
            return await respond_and_close(request, _token_error(408, "TIMEOUT", str(exc)))
        except ValueError as exc:
            return _token_error(400, "UNSUPPORTED", str(exc))
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


async def oidc_exchange(request: web.Request) -> web.StreamResponse:
    """``POST /auth/oidc/github-actions`` with ``{"token": "<GitHub OIDC JWT>"}``."""
    state = state_of(request)
    assert state.auth is not None and state.oidc is not None
    address = client_address(request)
    wait = state.auth.limiter.retry_after(address)
    if wait is not None:
        return web.json_response(
            {"ok": False, "error": f"too many failed authentications from {address}; retry in {wait:.0f} s"},
            status=429,
            headers={"Retry-After": retry_after_header(wait)},
        )
    try:
        body = strictjson.loads(await read_body(request, MAX_OIDC_BODY))
    except BodyTooLarge as exc:
        return web.json_response({"ok": False, "error": str(exc)}, status=413)
    except BodyStalled as exc:
        return await respond_and_close(request, web.json_response({"ok": False, "error": str(exc)}, status=408))
    except strictjson.JsonInvalid as exc:
        return web.json_response(
            {"ok": False, "error": f"the body is not valid JSON: {exc}; {OIDC_BODY_HINT}"}, status=400
        )
    jwt_text = body.get("token") if isinstance(body, dict) else None
    if not isinstance(jwt_text, str) or not jwt_text:
        return web.json_response({"ok": False, "error": OIDC_BODY_HINT}, status=400)
    try:
        exchanged = await state.oidc.exchange(jwt_text)
    except (OidcError, ExchangeDenied) as exc:
        state.auth.limiter.record_failure(address)
        log.info("OIDC exchange refused from %s: %s", address, exc)
        return web.json_response({"ok": False, "error": str(exc)}, status=401 if isinstance(exc, OidcError) else 403)
    log.info("OIDC exchange: issued %s for projects %s", exchanged.identity.name, ",".join(exchanged.projects))
    answer = schemas.OidcExchange(
        ok=True, token=exchanged.token, expires_at=exchanged.expires_at, projects=list(exchanged.projects)
    )
    return web.json_response(answer.to_json())


async def oidc_discovery(request: web.Request) -> web.Response:
    """``GET /api/v1/oidc``: what audience to request and which issuers are trusted (no auth needed)."""
    state = state_of(request)
    settings = state.settings
    answer = schemas.OidcDiscovery(
        audience=settings.resolved_oidc_audience(),
        issuers=list(settings.oidc_issuers),
        exchange_url=f"{settings.resolved_public_url()}/auth/oidc/github-actions",
    )
    return web.json_response(answer.to_json())
