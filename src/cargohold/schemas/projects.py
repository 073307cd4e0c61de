"""Projects: ``/api/v1/projects`` (docs/api.md, "Projects")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cargohold.schemas.wire import Schema, optional_key


@dataclass(frozen=True)
class Project(Schema):
    """A project; its ID is also its repository name in image references."""

    id: str
    name: str
    created_at: datetime
    retention_seconds: int | None
    """How long saved builds and tags pushed outside builds are kept; ``None``: no time limit."""
    max_builds: int
    registry: str | None = optional_key()
    """``<host:port>/<id>``, where images of the project are pushed: in the answers to create and show only."""


@dataclass(frozen=True)
class ProjectList(Schema):
    """``GET /api/v1/projects``: the projects the caller can see, oldest first."""

    projects: list[Project]
