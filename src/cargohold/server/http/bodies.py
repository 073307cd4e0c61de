"""Reading request bodies: completely, within a size limit, and within deadlines.

Two mistakes this module exists to prevent. A single ``request.content.read(n)`` returns whatever has
arrived so far, so a JSON body split across two TCP segments would be parsed half-read; :func:`read_body`
reads until the end of the body. And aiohttp waits for body bytes forever, so a client that declares
``Content-Length: 1000`` and sends one byte would hold its connection (and, for an upload, its session
lock) indefinitely; every wait for body bytes here is bounded.

The deadlines (``serve --body-idle-timeout`` / ``--body-timeout``; the request head's deadline is
aiohttp's keep-alive timeout, set from ``--header-timeout`` in :mod:`cargohold.server.process`):

* **idle**: the longest pause between two pieces of any body, uploads included. This is what catches a
  stalled client; a slow but progressing multi-GB upload never trips it.
* **total**: the longest time a whole *bounded* body (JSON, forms, manifests: at most a few MiB) may
  take. Blob uploads stream through :func:`iter_body`, which has no total: a long upload that keeps making
  progress is never cut off.

Callers turn :class:`BodyTooLarge` into a 413 and :class:`BodyStalled` into a 408 in their own error
format (the middleware in :mod:`cargohold.server.app` does it for any it does not catch), and close the
connection after a stall: the rest of that body is never coming.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from cargohold.server.state import state_of


class BodyTooLarge(Exception):
    """The body is (or declares itself) larger than the route accepts."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than {limit} bytes")
        self.limit = limit


class BodyStalled(Exception):
    """The body stopped arriving (idle deadline) or took too long as a whole (total deadline)."""


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes, read within the idle and total deadlines."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    settings = state_of(request).settings
    idle, total = settings.body_idle_timeout.total_seconds(), settings.body_timeout.total_seconds()
    loop = asyncio.get_running_loop()
    end = loop.time() + total
    parts: list[bytes] = []
    size = 0
    while True:
        now = loop.time()
        try:
            async with asyncio.timeout_at(min(now + idle, end)):
                chunk = await request.content.readany()
        except TimeoutError:
            if loop.time() >= end:
                raise BodyStalled(
                    f"the request body did not arrive within {total:g} s (received {size} bytes)"
                ) from None
            raise BodyStalled(_idle_message(idle, size)) from None
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        parts.append(chunk)


async def iter_body(request: web.Request) -> AsyncIterator[bytes]:
    """The body's pieces as they arrive, for streaming uploads: only the idle deadline applies."""
    idle = state_of(request).settings.body_idle_timeout.total_seconds()
    received = 0
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await request.content.readany()
        except TimeoutError:
            raise BodyStalled(_idle_message(idle, received)) from None
        if not chunk:
            return
        received += len(chunk)
        yield chunk


async def respond_and_close(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Send ``response`` now, then close the connection.

    After a stalled body aiohttp would otherwise keep the connection for its lingering time, waiting to
    discard body bytes that are not coming; closing once the answer is out frees it at once.
    """
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


def _idle_message(idle: float, received: int) -> str:
    return f"no request body bytes arrived for {idle:g} s (received {received} bytes before the pause)"
