"""Human-friendly durations (``90s``, ``24h``, ``7d``) and sizes (``512MiB``, ``64GiB``, ``4096``)."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_duration(text: str) -> timedelta:
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration; use a number with s, m, h, d or w (e.g. 24h, 7d)")
    value, unit = match.groups()
    return timedelta(seconds=float(value) * _DURATION_UNITS[unit or "s"])


def parse_size(text: str) -> int:
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size; use bytes or a unit such as 512MiB, 4GB, 64GiB")
    value, unit = match.groups()
    unit = (unit or "").lower()
    if "i" in unit:
        return int(value) << (10 * ("kmgt".index(unit[0]) + 1))
    return int(value) * _SIZE_UNITS[unit[:1]]
