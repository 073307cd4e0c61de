"""Projects: their settings and their usage, with the stores' refusals phrased as domain errors."""

from __future__ import annotations

from datetime import timedelta

from cargohold.domain import errors
from cargohold.domain.threads import Runner
from cargohold.lifecycle.metering import Metering, Usage
from cargohold.metadata.control import ControlStore, ProjectRecord
from cargohold.metadata.errors import NotFound


async def update_project(
    run: Runner,
    control: ControlStore,
    project_id: str,
    *,
    name: str | None = None,
    retention: timedelta | bool | None = False,
    max_builds: int | None = None,
) -> ProjectRecord:
    """Change a project's settings (``retention=None``: unlimited; ``False``: leave it alone)."""

    def update() -> ProjectRecord:
        return control.update_project(project_id, name=name, retention=retention, max_builds=max_builds)

    try:
        return await run(update)
    except NotFound as exc:
        raise errors.NotFound(str(exc), subject="project") from None


async def usage(run: Runner, metering: Metering, project_id: str, month: str | None) -> Usage:
    """A project's storage use and cost for ``month`` (``YYYY-MM``; None: this month)."""
    try:
        return await run(metering.usage, project_id, month)
    except ValueError as exc:
        raise errors.Invalid(str(exc), subject="month") from None
    except LookupError as exc:
        raise errors.NotFound(str(exc), subject="project") from None


__all__ = ["update_project", "usage"]
