"""JSON from untrusted senders, with every way it can go wrong reported as one :class:`JsonInvalid`.

``json.loads`` alone is not enough at a trust boundary: deep nesting raises ``RecursionError`` (not a
``ValueError``) from the parser or from whatever walks the result later, ``NaN`` and ``Infinity`` are
accepted although JSON has neither, and integers of more than 4300 digits fail with a message about
Python's conversion limit. Every request body, manifest and config blob the server reads goes through
:func:`loads`, so the handlers see either a plain, finite, shallow JSON value or one clear sentence.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

MAX_DEPTH = 64
"""Deepest nesting accepted. OCI manifests and configs need about five levels; 64 leaves room for anything
legitimate and keeps every recursive walk over the result far from Python's recursion limit."""


class JsonInvalid(ValueError):
    """The bytes are not acceptable JSON; the message says why in one sentence."""


def _refuse_constant(name: str) -> Any:
    raise JsonInvalid(f"{name} is not a JSON number")


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``data`` (UTF-8, -16 or -32 as RFC 8259 allows) and check its nesting depth."""
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise JsonInvalid(f"it is nested more than {max_depth} levels deep") from None
    except UnicodeDecodeError:
        raise JsonInvalid("it is not UTF-8 text") from None
    except JsonInvalid:
        raise
    except json.JSONDecodeError as exc:
        raise JsonInvalid(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # e.g. an integer beyond the interpreter's digit limit
        raise JsonInvalid(str(exc).split(";")[0]) from None
    if _depth_exceeds(value, max_depth):
        raise JsonInvalid(f"it is nested more than {max_depth} levels deep")
    return value


def _depth_exceeds(value: Any, max_depth: int) -> bool:
    """Whether containers nest deeper than ``max_depth``; iterative, so any depth is safe to measure."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(current, dict):
            children = current.values()
        elif isinstance(current, list):
            children = current
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
