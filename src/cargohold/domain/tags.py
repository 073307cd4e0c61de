"""Tags pushed outside builds: pin, unpin, extend one (the rules are :mod:`cargohold.lifecycle.tag_retention`).

A tag that is gone says why when the audit log knows (expired on ..., deleted by ...), as a missing build does.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cargohold.domain import errors
from cargohold.domain.threads import Runner
from cargohold.lifecycle import audit
from cargohold.lifecycle.retention import LifecycleError
from cargohold.lifecycle.tag_retention import TagNotFound, TagRecord, TagRetention
from cargohold.metadata.db import Database


async def change_tag(
    run: Runner,
    retention: TagRetention,
    db: Database,
    action: str,
    repository: str,
    tag: str,
    actor: str,
    *,
    by: timedelta | None = None,
    until: datetime | None = None,
) -> TagRecord:
    """``pin``, ``unpin`` or ``extend`` (``by`` or ``until``) one tag of ``repository``."""

    def change() -> TagRecord:
        if action == "pin":
            return retention.pin(repository, tag, actor)
        if action == "unpin":
            return retention.unpin(repository, tag, actor)
        return retention.extend(repository, tag, actor, by=by, until=until)

    try:
        return await run(change)
    except LifecycleError as exc:
        raise errors.Conflict(str(exc), subject="tag") from None
    except TagNotFound as exc:
        explained = await run(audit.explain_missing, db, repository, tag)
        raise errors.NotFound(explained or str(exc), subject="tag") from None


__all__ = ["change_tag"]
