"""OCI distribution error codes and the JSON error body every failing response carries."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

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


def blob_unknown(digest: str) -> RegistryError:
    return RegistryError("BLOB_UNKNOWN", f"blob {digest} is not known to this repository", detail={"digest": digest})


def manifest_unknown(reference: str) -> RegistryError:
    return RegistryError(
        "MANIFEST_UNKNOWN",
        f"manifest {reference} is not known to this repository",
        detail={"reference": reference},
    )


def name_unknown(name: str) -> RegistryError:
    return RegistryError("NAME_UNKNOWN", f"repository {name} is not known to this registry", detail={"name": name})


def upload_unknown(upload_id: str) -> RegistryError:
    return RegistryError(
        "BLOB_UPLOAD_UNKNOWN",
        f"upload {upload_id} is not in progress here (finished, cancelled or expired); start a new upload",
        detail={"upload": upload_id},
    )
