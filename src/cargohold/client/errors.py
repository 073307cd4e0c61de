"""Errors raised by the client library, under one root.

Every exception the client side (``client/``, ``images/``, ``oci/``) raises for a person to read derives
from :class:`CargoholdError` (defined in :mod:`cargohold.oci.errors`, the lowest layer, so that ``oci/``'s own
errors can derive from it too). The CLI and the GitHub Actions catch that one type and print ``str()``, which
is already one sentence; anything else is a bug and keeps its traceback.

For the registry API, :class:`RegistryError` carries everything a CLI needs to print a single useful
sentence (what we were doing, to what, the HTTP status and the registry's OCI error codes) and everything
a program needs to branch on (``status``, ``codes``). The retry layer keys off :attr:`retryable`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime

import httpx

from cargohold.clock import WallClock, utc_now
from cargohold.oci.errors import CargoholdError, DigestMismatchError, PlatformNotFoundError

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Statuses that say "try again later" rather than "you asked for something wrong"."""

INSUFFICIENT_STORAGE = 507
"""HTTP 507: the registry's storage is full. Not retried: nothing changes until space is freed."""
STORAGE_FULL = "Cargohold's storage is full"
"""How a Cargohold server's 507 messages begin (other registries' 507s are worded differently)."""
ADMIN_SPACE_HINT = (
    "a Cargohold admin can free space by removing or unpinning old builds (cargohold builds rm, "
    "cargohold builds unpin), running cargohold gc, or giving the server more disk (cargohold usage shows "
    "its free space)"
)


def storage_full_sentence(message: str) -> str:
    """A Cargohold 507 message with what an admin can do about it appended (once)."""
    message = message.strip().rstrip(".")
    if ADMIN_SPACE_HINT in message:
        return message
    message = message.removesuffix("; ask a Cargohold admin to free space")  # the server's short form
    if not message.startswith(STORAGE_FULL):
        message = f"{STORAGE_FULL}: {message}" if message else STORAGE_FULL
    return f"{message}; {ADMIN_SPACE_HINT}"


def is_storage_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is a Cargohold server saying its storage is full."""
    return storage_full_reason(exc) is not None


def storage_full_reason(exc: BaseException | None) -> str | None:
    """The server's explanation, with what an admin can do, when ``exc`` (or its cause) is a Cargohold 507.

    Without the leading "Cargohold's storage is full", so callers can phrase the sentence around it.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text: str | None = None
        if isinstance(exc, RegistryError):
            if exc.storage_full:
                text = "; ".join(e.message for e in exc.errors if e.message)
        elif getattr(exc, "status", None) == INSUFFICIENT_STORAGE and str(exc).startswith(STORAGE_FULL):
            text = str(exc)
        if text is not None:
            return storage_full_sentence(text)[len(STORAGE_FULL) :].lstrip(":; ")
        exc = exc.__cause__ or exc.__context__
    return None


@dataclass(frozen=True, slots=True)
class OCIErrorDetail:
    """One entry of the OCI ``{"errors": [...]}`` body."""

    code: str
    message: str = ""
    detail: object = None


def parse_oci_errors(body: bytes) -> list[OCIErrorDetail]:
    """Best-effort parse of an OCI error body; anything unexpected yields an empty list, never raises."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return []
    out: list[OCIErrorDetail] = []
    for item in errors:
        if isinstance(item, dict) and isinstance(item.get("code"), str):
            out.append(OCIErrorDetail(item["code"], str(item.get("message") or ""), item.get("detail")))
    return out


@dataclass(eq=False)
class RegistryError(CargoholdError):
    """A registry operation failed.

    ``action`` is a short phrase like ``"pushing blob sha256:abcd… to 127.0.0.1:5000/x"`` so that
    ``str(error)`` reads as one sentence a user can act on.
    """

    action: str
    status: int | None = None
    method: str | None = None
    url: str | None = None
    errors: list[OCIErrorDetail] = field(default_factory=list)
    reason: str | None = None
    retry_after: float | None = None

    def __post_init__(self) -> None:
        super().__init__(str(self))

    @property
    def codes(self) -> list[str]:
        """The OCI error codes the registry returned (``BLOB_UNKNOWN``, ``DENIED``, ...)."""
        return [e.code for e in self.errors]

    @property
    def retryable(self) -> bool:
        """Whether repeating the same request could succeed (throttling, server trouble, network)."""
        return self.status is None or self.status in RETRYABLE_STATUSES

    @property
    def storage_full(self) -> bool:
        """A Cargohold server refused for lack of space (HTTP 507 with its "storage is full" message)."""
        return self.status == INSUFFICIENT_STORAGE and any(e.message.startswith(STORAGE_FULL) for e in self.errors)

    def __str__(self) -> str:
        details = "; ".join(e.message for e in self.errors if e.message) or self.reason
        if self.storage_full and details:
            return f"{self.action} failed: {storage_full_sentence(details)}"
        parts: list[str] = []
        if self.status is not None:
            parts.append(str(self.status))
        if self.codes:
            parts.append(" ".join(self.codes))
        head = f"{self.action} failed: " + (" ".join(parts) if parts else "error")
        if details:
            head += f" ({details})"
        return head

    @classmethod
    def from_response(cls, action: str, response: httpx.Response, body: bytes | None = None) -> RegistryError:
        """Build from an error response; ``body`` defaults to the response's (already read) content."""
        if body is None:
            try:
                body = response.content
            except httpx.ResponseNotRead:
                body = b""
        errors = parse_oci_errors(body)
        reason = None
        if not errors:
            text = body[:200].decode("utf-8", "replace").strip()
            reason = text or response.reason_phrase or None
        return cls(
            action=action,
            status=response.status_code,
            method=response.request.method,
            url=str(response.request.url),
            errors=errors,
            reason=reason,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )


def parse_retry_after(value: str | None, *, now: WallClock = utc_now) -> float | None:
    """``Retry-After`` as seconds from now: either delta-seconds or an HTTP date. ``None`` if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now()).total_seconds())


__all__ = [
    "INSUFFICIENT_STORAGE",
    "RETRYABLE_STATUSES",
    "STORAGE_FULL",
    "CargoholdError",
    "DigestMismatchError",
    "OCIErrorDetail",
    "PlatformNotFoundError",
    "RegistryError",
    "is_storage_full",
    "parse_oci_errors",
    "parse_retry_after",
    "storage_full_reason",
    "storage_full_sentence",
]
