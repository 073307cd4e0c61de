"""Request IDs: every request gets one, returned in ``X-Request-ID`` and written wherever the request leaves a
trace (the access line, other log lines, error bodies, audit entries), so a user's error message, the log
and the audit history can be matched.

An incoming ``X-Request-ID`` (a reverse proxy's, or a client's own correlation ID) is kept when it is
sane: 1-128 characters of letters, digits and ``-_.:``. Anything else is replaced, since it would be
copied into logs and answers. IDs are not secrets and prove nothing.

The ID and the client's address live in context variables for the request's task, so code far from the
request (the audit log, log records) can read them without having them passed down; the registry's thread
pool runs each call in a copy of the caller's context (:meth:`cargohold.server.state.RegistryState.run`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from cargohold.requestcontext import (
    accepted_request_id,
    current_client_address,
    current_request_id,
    set_client_address,
    set_request_id,
)

HEADER = "X-Request-ID"
REQUEST_ID_KEY = web.RequestKey("cargohold.request_id", str)

__all__ = [
    "HEADER",
    "accepted_request_id",
    "current_client_address",
    "current_request_id",
    "install",
    "request_id_of",
    "request_ids",
    "set_client_address",
]


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
    set_request_id(request_id)
    set_client_address(request.remote)
    return await handler(request)


async def _add_header(request: web.BaseRequest, response: web.StreamResponse) -> None:
    # A response signal rather than the middleware: streaming handlers send their headers before returning.
    if (request_id := request.get(REQUEST_ID_KEY)) is not None:
        response.headers[HEADER] = request_id


def install(app: web.Application) -> None:
    """Return ``X-Request-ID`` on every response of ``app`` (the middleware itself goes first in the list)."""
    app.on_response_prepare.append(_add_header)
