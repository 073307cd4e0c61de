"""Request IDs: every request gets one, returned in ``X-Request-ID`` and written wherever the request leaves a
trace (the access line, other log lines, error bodies, audit entries), so a user's error message, the log
and the audit history can be matched.

An incoming ``X-Request-ID`` (a reverse proxy's, or a client's own correlation ID) is kept when it is
sane: 1-128 characters of letters, digits and ``-_.:``. Anything else is replaced, since it would be
copied into logs and answers. IDs are not secrets and prove nothing.

The ID and the client's address live in context variables for the request's task, so code far from the
request (the audit log, log records) can read them without having them passed down; the registry's thread
pool runs each call in a copy of the caller's context (:meth:`cargohold.registry.state.RegistryState.run`).
"""

from __future__ import annotations

import contextvars
import re
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

HEADER = "X-Request-ID"
REQUEST_ID_KEY = "cargohold.request_id"
_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("cargohold_request_id", default=None)
_client_address: contextvars.ContextVar[str | None] = contextvars.ContextVar("cargohold_client", default=None)


def new_request_id() -> str:
    return secrets.token_hex(12)


def accepted_request_id(incoming: str | None) -> str:
    """The incoming ID when it is sane, else a new one."""
    if incoming is not None and _SANE.match(incoming):
        return incoming
    return new_request_id()


def current_request_id() -> str | None:
    """The ID of the request being handled in this context (None outside a request)."""
    return _request_id.get()


def current_client_address() -> str | None:
    return _client_address.get()


def set_client_address(address: str | None) -> None:
    _client_address.set(address)


def request_id_of(request: web.BaseRequest) -> str | None:
    return request.get(REQUEST_ID_KEY)


@web.middleware
async def request_ids(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The outermost middleware: every later step, answers given early (draining, errors) included, runs with
    the ID set."""
    request_id = accepted_request_id(request.headers.get(HEADER))
    request[REQUEST_ID_KEY] = request_id
    _request_id.set(request_id)
    _client_address.set(request.remote)
    return await handler(request)


async def _add_header(request: web.BaseRequest, response: web.StreamResponse) -> None:
    # A response signal rather than the middleware: streaming handlers send their headers before returning.
    if (request_id := request.get(REQUEST_ID_KEY)) is not None:
        response.headers[HEADER] = request_id


def install(app: web.Application) -> None:
    """Return ``X-Request-ID`` on every response of ``app`` (the middleware itself goes first in the list)."""
    app.on_response_prepare.append(_add_header)
