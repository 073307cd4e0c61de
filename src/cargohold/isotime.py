"""Times on the wire and in messages: one ISO 8601 form, written and read in one place.

Everything Cargohold writes — API answers, audit messages, the CLI's output — uses second-precision UTC
with a ``Z`` (``2025-01-31T12:00:00Z``), as ``docs/api.md`` promises. Reading is more forgiving, because
people type times too: any ISO 8601 form Python understands, ``Z`` or an offset, and a time without a zone
means UTC (``2026-05-01T12:00``). Pure standard library, so every layer may import it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload

WIRE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_iso(moment: datetime) -> str:
    """``moment`` in UTC, to the second, with a ``Z``; a naive ``datetime`` is taken to be UTC already."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(WIRE_FORMAT)


def format_epoch(seconds: float) -> str:
    """A POSIX time (a JWT's ``exp``, ``nbf``, ``iat``) in the same form as :func:`format_iso`."""
    return format_iso(datetime.fromtimestamp(seconds, UTC))


@overload
def iso(moment: datetime) -> str: ...
@overload
def iso(moment: None) -> None: ...
def iso(moment: datetime | None) -> str | None:
    """:func:`format_iso`, passing ``None`` (no expiry, not saved yet) through as ``None``."""
    return None if moment is None else format_iso(moment)


def parse_iso(text: str) -> datetime:
    """An ISO 8601 time as an aware UTC ``datetime``; raises ``ValueError`` for anything else."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


__all__ = ["WIRE_FORMAT", "format_epoch", "format_iso", "iso", "parse_iso"]
