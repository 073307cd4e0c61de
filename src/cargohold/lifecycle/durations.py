"""Durations as people read them in lifecycle messages (the clocks themselves are in :mod:`cargohold.clock`)."""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    """``7 days``, ``36 hours``, ``90 minutes``: how retention is spelled in messages people read."""
    seconds = int(seconds)
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 3_600:
        return f"{seconds / 3_600:.1f} hours"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


__all__ = ["format_duration"]
