"""What the metadata stores refuse, under one root: :class:`MetadataError`.

Every refusal a store makes inside its transaction (a reference missing, a manifest still listed by an index,
a cap reached, a parent revoked meanwhile) is one of these; the domain layer turns each into a
:class:`~cargohold.domain.errors.DomainError` with the words a client reads. Database failures themselves
(SQLAlchemy's errors, a full disk) are not: they are faults, classified by :mod:`cargohold.storage.faults`.
"""

from __future__ import annotations


class MetadataError(Exception):
    """Root of every refusal of the metadata stores."""


class MissingReferences(MetadataError, LookupError):
    """A manifest names blobs or child manifests that the repository does not hold."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(", ".join(missing))
        self.missing = missing


class SizeMismatch(MetadataError, ValueError):
    """A manifest's descriptor size differs from the stored blob's size."""


class ManifestInUse(MetadataError, RuntimeError):
    """A manifest cannot be deleted while an index in the repository lists it."""

    def __init__(self, parent: str) -> None:
        super().__init__(parent)
        self.parent = parent


class BlobInUse(MetadataError, RuntimeError):
    """A blob cannot be unlinked while a manifest in the repository references it."""


class TooManyUploads(MetadataError, RuntimeError):
    """The credential already holds as many open upload sessions as the server allows."""

    def __init__(self, open_sessions: int) -> None:
        super().__init__(f"{open_sessions} upload sessions open")
        self.open_sessions = open_sessions


class NotFound(MetadataError, LookupError):
    """The project, build, token or relationship does not exist."""


class Conflict(MetadataError, RuntimeError):
    """The request contradicts the current state (e.g. marking a build saved twice)."""


class ParentInactive(MetadataError, RuntimeError):
    """A credential's parent (or the trust relationship behind it) was revoked, expired or removed meanwhile."""


__all__ = [
    "BlobInUse",
    "Conflict",
    "ManifestInUse",
    "MetadataError",
    "MissingReferences",
    "NotFound",
    "ParentInactive",
    "SizeMismatch",
    "TooManyUploads",
]
