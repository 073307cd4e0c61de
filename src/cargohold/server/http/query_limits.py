"""Page sizes from query strings (``limit=``, ``n=``): one rule for every route that lists things.

A page size is a plain decimal number. Anything else (negative, fractional, exponent, non-ASCII digits) is
refused with one sentence rather than guessed at, so ``limit=-1`` can never mean
"no limit" to some layer below. Zero is refused where a page must hold something and allowed where the
protocol defines it (the registry's ``n=0``). Values above the route's maximum are clamped to it: a client
asking for "everything" gets the largest page and a way to the next one, however many digits it sent (as the
reference registry does for ``n``), without ever converting thousands of digits to an integer.
"""

from __future__ import annotations

import re

_DECIMAL = re.compile(r"[0-9]+")
_MAX_DIGITS = 18
"""Longer numbers are larger than any maximum: clamp them without ``int()`` (which refuses 4,300+ digits)."""


class LimitError(ValueError):
    """The value is not an acceptable page size; the message names the parameter and the accepted range."""


def page_size(value: str | None, *, name: str, default: int, maximum: int, minimum: int = 1) -> int:
    """``value`` as a page size in ``[minimum, maximum]`` (``default`` when absent; above ``maximum`` clamps)."""
    if value is None:
        return default
    if not _DECIMAL.fullmatch(value):
        raise LimitError(f"{name} must be a whole number from {minimum} to {maximum}, not {value[:40]!r}")
    if len(value.lstrip("0")) > _MAX_DIGITS:
        return maximum
    number = int(value)
    if number < minimum:
        raise LimitError(f"{name} must be a whole number from {minimum} to {maximum}, not {number}")
    return min(number, maximum)
