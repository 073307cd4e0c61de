"""Builds: one CI run's image (docs/api.md, "Builds"), and what ``pull-info`` answers about a saved one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cargohold.schemas.wire import Schema, optional_key


@dataclass(frozen=True)
class Build(Schema):
    """A build, as ``GET /api/v1/builds/{build}`` answers it: the one shape of a build everywhere."""

    id: str
    project_id: str
    status: str
    """``pending``, ``saved`` or ``failed``."""
    created_at: datetime
    saved_at: datetime | None
    expires_at: datetime | None
    """``None``: no expiry (not saved yet, or a project without a time limit)."""
    pinned: bool
    digest: str | None
    """The image's manifest digest, once saved."""
    media_type: str | None
    platforms: list[str]
    """Read from the stored manifest or index by the server, never from the client."""
    targets: dict[str, str]
    """Bake target name -> manifest digest (``<build>-<target>`` in the registry)."""
    total_size: int | None
    unique_size: int | None
    provenance: dict[str, str]
    failure: str | None
    created_by: str | None
    save_tags: list[str]
    reference: str
    """``<host>/<project>:<build>``."""


@dataclass(frozen=True)
class BuildPage(Schema):
    """``GET /api/v1/projects/{project}/builds``: newest first; ``next`` (when the page is full) is the
    ``before`` of the next page."""

    builds: list[Build]
    next: str | None = optional_key()


@dataclass(frozen=True)
class BuildCreated(Schema):
    """``POST /api/v1/projects/{project}/builds``: the new build and a push token for its image."""

    build_id: str
    project_id: str
    registry: str
    repository: str
    reference: str
    token: str
    """A project token (pull and push, never delete) for pushing the image: a child of the caller's credential."""
    token_expires_at: datetime


@dataclass(frozen=True)
class PullInfo(Schema):
    """``GET /api/v1/pull-info``: where a saved build lives, with a pull token scoped to that build."""

    build_id: str
    project_id: str
    registry: str
    repository: str
    reference: str
    digest: str
    media_type: str
    platforms: list[str]
    targets: dict[str, str]
    username: str
    token: str
    token_expires_at: datetime
