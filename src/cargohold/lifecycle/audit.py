"""The lifecycle audit log: every deletion and retention change, and the reasons behind missing builds and tags.

Rows are written inside the same transaction as the change they describe, so the log can never claim an
eviction that was rolled back, nor miss one that happened. Reading it answers two questions: "what
happened to my project" (:func:`history`) and "why does this pull fail" (:func:`explain_missing`), which
turns a bare 404 into "build X expired on … (retention 7 days)" or "tag p/web:1.0 expired on …".

Events about tags pushed outside builds (:mod:`cargohold.lifecycle.tag_retention`) have no ``build_id``; their
``detail`` names the ``repository`` and ``tag``. Collections of untagged manifests (action ``collect``) name the
repository and the digests.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.orm import Session

from cargohold.isotime import iso
from cargohold.lifecycle.durations import format_duration
from cargohold.metadata.db import Database, rowcount, upsert
from cargohold.metadata.models import LifecycleEvent, RemovedTag
from cargohold.requestcontext import current_client_address, current_request_id
from cargohold.storage.space import format_bytes

MAX_HISTORY = 1000


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    project_id: str | None
    build_id: str | None
    action: str
    rule: str
    actor: str
    at: datetime
    detail: dict[str, Any]
    request_id: str | None = None
    """The request behind the event (``X-Request-ID``), None for the server's own housekeeping."""
    client_address: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "project_id": self.project_id,
            "build_id": self.build_id,
            "action": self.action,
            "rule": self.rule,
            "actor": self.actor,
            "at": iso(self.at),
            "detail": self.detail,
            "message": describe(self),
            "request_id": self.request_id,
            "client_address": self.client_address,
        }


def _event(row: LifecycleEvent) -> Event:
    detail = json.loads(row.detail) if row.detail else {}
    return Event(
        row.id,
        row.project_id,
        row.build_id,
        row.action,
        row.rule,
        row.actor,
        row.at,
        detail,
        row.request_id,
        row.client_address,
    )


@dataclass(frozen=True, slots=True)
class Entry:
    """One event to write (see :func:`record_many`)."""

    action: str
    rule: str
    actor: str
    at: datetime
    project_id: str | None = None
    build_id: str | None = None
    detail: dict[str, Any] | None = None
    removed_tags: Sequence[str] = ()
    repository: str | None = None
    """Where ``removed_tags`` were (default: the project's own repository, where builds live)."""


def record(
    session: Session,
    *,
    action: str,
    rule: str,
    actor: str,
    at: datetime,
    project_id: str | None = None,
    build_id: str | None = None,
    detail: dict[str, Any] | None = None,
    removed_tags: Iterable[str] = (),
    repository: str | None = None,
) -> int:
    """Add one event (and remember the tags it removed) in the caller's transaction; returns its id."""
    entry = Entry(action, rule, actor, at, project_id, build_id, detail, tuple(removed_tags), repository)
    return record_many(session, [entry])[0]


def record_many(session: Session, entries: Sequence[Entry]) -> list[int]:
    """Add many events in the caller's transaction with a fixed number of statements; ids in input order.

    Eviction writes one event per build, thousands per sweep: one ``INSERT … RETURNING`` per few hundred
    events (SQLAlchemy's insertmanyvalues, ordered by parameter) instead of an ORM flush per event, and one
    ``executemany`` upsert for all removed tags.
    """
    if not entries:
        return []
    table = LifecycleEvent.__table__
    assert isinstance(table, Table)  # a declarative model's table (the annotation says FromClause)
    # Set while a request is handled (cargohold.edge.requestid); None in background work.
    request_id, client_address = current_request_id(), current_client_address()
    rows = [
        {
            "project_id": entry.project_id,
            "build_id": entry.build_id,
            "action": entry.action,
            "rule": entry.rule,
            "actor": entry.actor[:200],
            "at": entry.at,
            "detail": json.dumps(entry.detail, sort_keys=True) if entry.detail else None,
            "request_id": request_id,
            "client_address": client_address[:64] if client_address else None,
        }
        for entry in entries
    ]
    result = session.execute(insert(table).returning(table.c.id, sort_by_parameter_order=True), rows)
    ids = [int(event_id) for event_id in result.scalars()]
    removed: dict[tuple[str, str], int] = {}
    for entry, event_id in zip(entries, ids, strict=True):
        repository = entry.repository or entry.project_id
        if repository is None:
            continue
        for tag in entry.removed_tags:
            removed[(repository, tag)] = event_id  # a later event wins, as with one upsert per event
    if removed:
        # executemany of one cached statement: a multi-row VALUES upsert is recompiled for every new length.
        statement = upsert(session, RemovedTag)
        statement = statement.on_conflict_do_update(
            index_elements=["repository", "tag"], set_={"event_id": statement.excluded.event_id}
        )
        links = [{"repository": repo, "tag": tag, "event_id": event_id} for (repo, tag), event_id in removed.items()]
        session.execute(statement, links)
    return ids


def history(db: Database, project_id: str, *, limit: int = 100, build_id: str | None = None) -> list[Event]:
    """Newest first."""
    with db.read() as session:
        query = select(LifecycleEvent).where(LifecycleEvent.project_id == project_id)
        if build_id is not None:
            query = query.where(LifecycleEvent.build_id == build_id)
        query = query.order_by(LifecycleEvent.at.desc(), LifecycleEvent.id.desc()).limit(
            max(1, min(limit, MAX_HISTORY))
        )
        return [_event(row) for row in session.scalars(query)]


def prune(db: Database, older_than: datetime) -> int:
    """Forget events (and their removed-tag pointers) older than the history window."""
    with db.write() as session:
        result = session.execute(delete(LifecycleEvent).where(LifecycleEvent.at < older_than))
        return rowcount(result)


def describe(event: Event) -> str:
    """One sentence a person can act on."""
    when = iso(event.at)
    detail = event.detail
    subject = f"build {event.build_id}" if event.build_id else "the project"
    if event.build_id is None and detail.get("tag"):
        subject = f"tag {detail.get('repository')}:{detail['tag']}"
    if event.action == "evict":
        if event.rule == "expired" and event.build_id is None:
            retention = detail.get("retention_seconds")
            why = f"retention {format_duration(retention)} since its last push" if retention else "its expiry passed"
            return f"{subject} expired on {detail.get('expires_at') or when} ({why}); push it again to get it back"
        if event.rule == "expired":
            retention = detail.get("retention_seconds")
            expired_at = detail.get("expires_at") or when
            why = f"retention {format_duration(retention)}" if retention else "its expiry date passed"
            return f"{subject} expired on {expired_at} ({why}); push and save it again to get it back"
        if event.rule == "cap":
            return (
                f"{subject} was evicted on {when}: project {event.project_id} keeps at most "
                f"{detail.get('max_builds')} saved builds and the oldest unpinned ones go first"
            )
        if event.rule == "space":
            return (
                f"{subject} was evicted on {when} to free storage space: the registry had "
                f"{format_bytes(detail.get('free_bytes', 0))} free, below its minimum of "
                f"{format_bytes(detail.get('min_free_bytes', 0))}, and the oldest unpinned builds go first"
            )
        if event.rule == "stale":
            return (
                f"{subject} was cleaned up on {when}: it was {detail.get('status', 'not saved')} for more than "
                f"{format_duration(detail.get('stale_seconds', 86_400))} without being saved"
            )
        return f"{subject} was deleted on {when} by {event.actor}"
    if event.action == "pin":
        return f"{subject} was pinned on {when} by {event.actor}; it will not expire until unpinned"
    if event.action == "unpin":
        return f"{subject} was unpinned on {when} by {event.actor}"
    if event.action == "extend":
        return f"{subject} expiry was moved to {detail.get('expires_at')} on {when} by {event.actor}"
    if event.action == "collect":
        count = int(detail.get("count", 0))
        retention = detail.get("retention_seconds")
        age = f", last pushed more than {format_duration(retention)} before" if retention else ""
        return (
            f"{count} untagged manifest{'s' if count != 1 else ''} in {detail.get('repository')} that nothing "
            f"referenced {'were' if count != 1 else 'was'} removed on {when}{age}"
        )
    if event.action == "gc":
        return (
            f"garbage collection on {when} freed {detail.get('blobs_deleted', 0)} blobs "
            f"({detail.get('bytes_freed', 0)} bytes)"
        )
    return f"{event.action} ({event.rule}) on {when} by {event.actor}"


def explain_missing(db: Database, repository: str | None, reference: str) -> str | None:
    """Why ``repository:reference`` (or build ``reference`` when no repository is given) is gone, if we know.

    Looks at the tags eviction removed first (build IDs, ``<build>-<target>`` tags and save-tags alike),
    then at eviction events for a build of that ID. None means "never existed as far as we know".
    """
    with db.read() as session:
        row = None
        if repository is not None:
            row = session.scalar(
                select(LifecycleEvent)
                .join(RemovedTag, RemovedTag.event_id == LifecycleEvent.id)
                .where(RemovedTag.repository == repository, RemovedTag.tag == reference)
            )
        if row is None:
            build_id = reference.split("-", 1)[0]
            query = select(LifecycleEvent).where(LifecycleEvent.build_id == build_id, LifecycleEvent.action == "evict")
            if repository is not None:
                query = query.where(LifecycleEvent.project_id == repository)
            row = session.scalar(query.order_by(LifecycleEvent.id.desc()).limit(1))
        if row is None:
            return None
        event = _event(row)
    message = describe(event)
    if event.build_id is None:
        return message  # the tag's own event (tags pushed outside builds)
    tag_of_build = reference != event.build_id and not reference.startswith(f"{event.build_id}-")
    if tag_of_build:
        return f"tag {reference} followed {message}"
    return message
