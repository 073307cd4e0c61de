"""Content digests (``algorithm:hex``) as the OCI image spec defines them.

Only the two registered algorithms are accepted: sha256 and sha512. Anything else is rejected up front so
that an attacker-chosen string can never reach a file path or a database key unvalidated.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
"""Supported algorithms and the exact length of their lowercase hex encoding."""

_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


class DigestError(ValueError):
    """A string is not a valid, supported digest."""


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...
    def copy(self) -> Hasher: ...


@dataclass(frozen=True, slots=True)
class Digest:
    """A validated digest. ``str(d)`` gives the canonical ``algorithm:hex`` form."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, value: object) -> Digest:
        """Parse and validate ``value``; raises :class:`DigestError` with a reason."""
        if not isinstance(value, str):
            raise DigestError(f"{value!r} is not a digest string of the form algorithm:hex")
        match = _DIGEST_RE.match(value)
        if not match:
            raise DigestError(f"{value!r} is not a digest of the form algorithm:hex")
        algorithm, encoded = match.groups()
        if algorithm not in ALGORITHMS:
            raise DigestError(f"digest algorithm {algorithm!r} is not supported (use sha256 or sha512)")
        if len(encoded) != ALGORITHMS[algorithm] or not re.fullmatch(r"[0-9a-f]+", encoded):
            raise DigestError(
                f"{value!r} is not a valid {algorithm} digest "
                f"({ALGORITHMS[algorithm]} lowercase hex characters expected)"
            )
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """Digest of an in-memory byte string (manifests, configs: small things only)."""
        hasher = new_hasher(algorithm)
        hasher.update(data)
        return cls(algorithm, hasher.hexdigest())

    def hasher(self) -> Hasher:
        """A fresh hasher of this digest's algorithm."""
        return new_hasher(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def new_hasher(algorithm: str) -> Hasher:
    if algorithm not in ALGORITHMS:
        raise DigestError(f"digest algorithm {algorithm!r} is not supported (use sha256 or sha512)")
    return hashlib.new(algorithm)


def is_digest(value: str) -> bool:
    """True when ``value`` looks like a digest reference (contains ``:``), valid or not."""
    return ":" in value
