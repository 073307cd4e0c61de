"""Repository names and tags, validated exactly as the OCI distribution spec's grammar says."""

from __future__ import annotations

import re

NAME_MAX_LENGTH = 255
"""Docker's limit on a repository name; longer names are rejected with NAME_INVALID."""

_NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*$")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")


class ReferenceError_(ValueError):
    """A repository name or tag is malformed."""


def is_valid_name(name: str) -> bool:
    return 0 < len(name) <= NAME_MAX_LENGTH and NAME_RE.match(name) is not None


def is_valid_tag(tag: str) -> bool:
    return TAG_RE.match(tag) is not None


def check_name(name: str) -> str:
    if not is_valid_name(name):
        raise ReferenceError_(
            f"repository name {name!r} is invalid: use lowercase letters, digits and separators "
            f"(., _, __, -) in /-separated components, at most {NAME_MAX_LENGTH} characters"
        )
    return name


def check_tag(tag: str) -> str:
    if not is_valid_tag(tag):
        raise ReferenceError_(
            f"tag {tag!r} is invalid: up to 128 characters of letters, digits, '_', '.', '-', "
            "not starting with '.' or '-'"
        )
    return tag
