"""The JSON error body every failing response carries, and the one mapping from domain errors to it.

Both planes answer errors as ``{"errors": [{"code", "message", "detail"?}]}``: the OCI distribution codes on
``/v2/``, the control API's codes (``NOT_FOUND``, ``INVALID``, ``CONFLICT``, ...) elsewhere.
:func:`http_error` is the only place a :class:`~cargohold.domain.errors.DomainError` becomes a status and a
code; the error middleware (:mod:`cargohold.server.http.middlewares`) calls it for any domain error a
handler lets through, so handlers never translate them one by one.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from cargohold.domain import errors as domain
from cargohold.edge.requestid import current_request_id

# code -> default HTTP status
ERROR_STATUS: dict[str, int] = {
    "BLOB_UNKNOWN": 404,
    "BLOB_UPLOAD_INVALID": 400,
    "BLOB_UPLOAD_UNKNOWN": 404,
    "DIGEST_INVALID": 400,
    "MANIFEST_BLOB_UNKNOWN": 400,
    "MANIFEST_INVALID": 400,
    "MANIFEST_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404,
    "SIZE_INVALID": 400,
    "UNAUTHORIZED": 401,
    "DENIED": 403,
    "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429,
    "UNKNOWN": 500,
    "UNAVAILABLE": 503,
}


class RegistryError(Exception):
    """An error to send to the client in the OCI format: ``{"errors": [{code, message, detail}]}``."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        detail: Any = None,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or ERROR_STATUS[code]
        self.detail = detail
        self.headers = headers or {}
        self.close = close
        """Close the connection after the response (the rest of a stalled body is never read); the
        error middleware does it."""

    def response(self, *, head: bool = False) -> web.Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        document: dict[str, Any] = {"errors": [error]}
        if (request_id := current_request_id()) is not None:
            document["request_id"] = request_id  # what to quote to an admin, who finds it in the log
        body = json.dumps(document).encode()
        headers = {"Content-Type": "application/json", **self.headers}
        # HEAD responses carry no body; the status and headers are what clients read.
        return web.Response(status=self.status, headers=headers, body=None if head else body)


def name_unknown(name: str) -> RegistryError:
    return RegistryError("NAME_UNKNOWN", f"repository {name} is not known to this registry", detail={"name": name})


# --- the one mapping from domain errors ------------------------------------------------------------------

_OCI_SUBJECT_CODES: dict[type[domain.DomainError], dict[str, str]] = {
    domain.NotFound: {
        "blob": "BLOB_UNKNOWN",
        "manifest": "MANIFEST_UNKNOWN",
        "upload": "BLOB_UPLOAD_UNKNOWN",
        "repository": "NAME_UNKNOWN",
    },
    domain.Invalid: {"digest": "DIGEST_INVALID", "manifest": "MANIFEST_INVALID", "upload": "BLOB_UPLOAD_INVALID"},
}
"""Subjects of the OCI distribution API get its codes, on whichever route they come up (a blob unknown to a
server-side copy is ``BLOB_UNKNOWN`` too); every other subject, and every subclass (``TooLarge`` is an
``Invalid`` but always ``SIZE_INVALID``), gets the code for its class below."""

_CLASS_ANSWERS: dict[type[domain.DomainError], tuple[int, str]] = {
    domain.UnknownReferences: (400, "MANIFEST_BLOB_UNKNOWN"),
    domain.TooLarge: (413, "SIZE_INVALID"),
    domain.Invalid: (400, "INVALID"),
    domain.NotFound: (404, "NOT_FOUND"),
    domain.InUse: (409, "UNSUPPORTED"),
    domain.Conflict: (409, "CONFLICT"),
    domain.Denied: (403, "DENIED"),
    domain.Unauthenticated: (401, "UNAUTHORIZED"),
    domain.TooMany: (429, "TOOMANYREQUESTS"),
    domain.StorageFull: (507, "DENIED"),
    domain.StorageFailed: (500, "UNKNOWN"),
}
"""Most specific class first: the first class the error is an instance of answers."""


def http_error(exc: domain.DomainError) -> RegistryError:
    """The HTTP answer to a domain error: status, code, message, detail and headers."""
    # The bare root (a domain error nobody classified) is still the client's mistake, never a 500.
    status, code = next((answer for kind, answer in _CLASS_ANSWERS.items() if isinstance(exc, kind)), (400, "INVALID"))
    code = _OCI_SUBJECT_CODES.get(type(exc), {}).get(exc.subject, code)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, domain.TooMany) else None
    return RegistryError(code, exc.message, status=status, detail=exc.detail, headers=headers)
