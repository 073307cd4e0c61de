"""The error middleware: every failure becomes one JSON error body, and no traceback ever reaches a client.

It is where domain errors meet HTTP (:func:`cargohold.server.http.errors.http_error`, the one mapping), where
body limits and stalls are answered, and where an unexpected exception becomes a logged 500. On ``/v2/`` every
answer carries ``Docker-Distribution-API-Version``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import ClientConnectionResetError, web
from aiohttp.http_exceptions import HttpProcessingError

from cargohold.domain.errors import DomainError
from cargohold.server.http.bodies import BodyStalled, BodyTooLarge, respond_and_close
from cargohold.server.http.errors import RegistryError, http_error

log = logging.getLogger(__name__)

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


@web.middleware
async def oci_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every failure into the OCI JSON error format; never leak a traceback to the client."""
    is_registry = request.path.startswith("/v2")
    head = request.method == "HEAD"
    close = False
    try:
        response = await handler(request)
    except RegistryError as exc:
        response = exc.response(head=head)
        close = exc.close
    except DomainError as exc:
        response = http_error(exc).response(head=head)
    except BodyTooLarge as exc:
        response = RegistryError("SIZE_INVALID", str(exc), status=413, detail={"limit": exc.limit}).response(head=head)
    except BodyStalled as exc:
        code = "BLOB_UPLOAD_INVALID" if is_registry else "TIMEOUT"
        response = RegistryError(code, str(exc), status=408).response(head=head)
        close = True
    except web.HTTPException as exc:
        if not is_registry or exc.status < 400:
            raise
        codes = {401: "UNAUTHORIZED", 403: "DENIED", 404: "NAME_UNKNOWN", 405: "UNSUPPORTED", 413: "SIZE_INVALID"}
        response = RegistryError(
            codes.get(exc.status, "UNSUPPORTED"), exc.reason or "request refused", status=exc.status
        ).response(head=head)
    except (ConnectionResetError, ClientConnectionResetError, HttpProcessingError) as exc:
        # The client went away or sent a broken body mid-request; nothing was committed.
        log.info("client connection failed during %s %s: %s", request.method, request.path, exc)
        response = RegistryError("BLOB_UPLOAD_INVALID", f"request body incomplete: {exc}").response(head=head)
    except Exception:
        log.exception("internal error handling %s %s", request.method, request.path_qs)
        response = RegistryError("UNKNOWN", "internal server error; the server log has the details").response(head=head)
    if is_registry:
        response.headers.update(API_VERSION_HEADER)
    if close:
        return await respond_and_close(request, response)
    return response
