"""The one exception root of the domain layer, and what each kind of refusal means.

Domain code raises these and nothing HTTP-shaped: the server turns them into answers in exactly one place
(:func:`cargohold.server.http.errors.http_error`), in the OCI error format on ``/v2/`` and in the control
API's ``{"errors": [...]}`` format elsewhere. Each error carries what that mapping needs:

* the class says what happened (not found, invalid, conflict, denied, too many, storage full or failing);
* ``subject`` says what it happened to (``blob``, ``manifest``, ``upload``, ``repository``, ``digest``,
  ``build``, ``project``, ...): the OCI codes are per subject (``BLOB_UNKNOWN``, ``MANIFEST_UNKNOWN``,
  ``DIGEST_INVALID``), the control API's per class (``NOT_FOUND``, ``INVALID``, ``CONFLICT``);
* ``message`` is the sentence the client reads; ``detail`` the structured part of an OCI error body.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Root of every refusal the domain layer gives; the message is safe to show to the client."""

    def __init__(self, message: str, *, subject: str = "", detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.subject = subject
        self.detail = detail


class NotFound(DomainError):
    """The thing named does not exist (or the caller may not know that it does)."""


class Invalid(DomainError):
    """The request cannot be carried out as given: a malformed digest, a manifest that does not parse."""


class TooLarge(Invalid):
    """More bytes than the registry accepts; ``limit`` is the most it takes."""

    def __init__(self, message: str, *, limit: int, subject: str = "") -> None:
        super().__init__(message, subject=subject, detail={"limit": limit})
        self.limit = limit


class UnknownReferences(Invalid):
    """A manifest names blobs or child manifests the repository does not hold."""

    def __init__(self, message: str, *, missing: list[str]) -> None:
        super().__init__(message, subject="manifest", detail={"missing": missing})
        self.missing = missing


class Conflict(DomainError):
    """The request contradicts the current state (saving a failed build, pinning a pending one)."""


class InUse(Conflict):
    """Something still needs what the request would remove (a manifest listed by an index, a referenced blob)."""


class Denied(DomainError):
    """The caller is known but may not do this."""


class Unauthenticated(DomainError):
    """The caller's credential stopped being valid while the request ran (expired, revoked meanwhile)."""


class TooMany(DomainError):
    """A per-caller limit is reached; ``retry_after`` is how many seconds to wait before trying again."""

    def __init__(self, message: str, *, retry_after: int, subject: str = "", detail: Any = None) -> None:
        super().__init__(message, subject=subject, detail=detail)
        self.retry_after = retry_after


class StorageFull(DomainError):
    """Storage is below its free-space minimum, or the disk is full: nothing was stored (HTTP 507)."""


class StorageFailed(DomainError):
    """The storage failed under the request (an I/O error); the server log has the one line about it."""


__all__ = [
    "Conflict",
    "Denied",
    "DomainError",
    "InUse",
    "Invalid",
    "NotFound",
    "StorageFailed",
    "StorageFull",
    "TooLarge",
    "TooMany",
    "Unauthenticated",
    "UnknownReferences",
]
