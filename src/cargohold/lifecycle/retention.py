"""Retention and eviction: saved builds disappear on schedule, and never one that is still wanted.

Rules (the ``rule`` recorded in the audit log):

* ``expired`` — a saved, unpinned build whose ``expires_at`` is at or before now (``expires_at == now``
  expires; one microsecond earlier does not). ``expires_at`` is set from the project's retention when the
  build is saved; unlimited retention leaves it NULL.
* ``cap`` — a save that takes the project over ``max_builds`` saved builds evicts the oldest unpinned
  saved builds (by save time) until it is back at the cap. Pinned builds are never evicted by the cap (if
  every build is pinned the project simply stays over it).
* ``stale`` — pending or failed builds older than 24 hours (their half-pushed images cost storage).
* ``manual`` — someone deleted the build (``DELETE /api/v1/builds/{id}`` calls :meth:`Retention.evict_build`).

Evicting a build deletes, in one write transaction: its tags (the build-ID tag, ``<build>-<target>`` tags
and its save-tags), then the manifests they reached (index children, and referrers — signatures, SBOMs,
attestations — whose subject is going) unless something else still needs them: a remaining tag, a
remaining manifest listing them as a child, or a remaining subject. Blobs are left to the garbage
collector, which unlinks what no manifest references any more. The build row goes too (its save-tags
follow it); the audit log keeps the story, and :func:`cargohold.lifecycle.audit.explain_missing` tells a
later pull what happened.

Sweeps select candidates with a cheap read, then evict them in batches whose write transaction re-checks
the rule (a build pinned a moment ago is skipped), so the write lock is held only briefly and two server
processes sweeping at once cannot evict a build twice.

**Why the deletion is set-based.** A project can hold 20,000 saved builds and a retention change can expire
all of them at once, so the cost per build must be a handful of rows, not a handful of statements. Each
batch therefore runs a fixed number of statements whatever its size: one read of the batch's builds (plain
rows, not ORM objects), one count per project for the cap rule, one join against a ``VALUES`` list of build
IDs that finds every ID and ``<build>-<target>`` tag with a primary-key range seek per build, chunked
``DELETE … WHERE … IN (…)`` statements, and multi-row inserts for the audit log. Measured with
``bench/lifecycle_bench.py`` the per-statement version spent most of its time in per-build audit flushes
and tag queries; see that file for the numbers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, column, delete, func, select, text, values
from sqlalchemy.orm import Session

from cargohold.clock import WallClock, utc_now
from cargohold.isotime import iso
from cargohold.lifecycle import audit
from cargohold.lifecycle.durations import format_duration
from cargohold.metadata.control import BuildRecord, build_record
from cargohold.metadata.db import CONTENT_LOCK, Database, hold_lock
from cargohold.metadata.models import Build, Manifest, ManifestReference, Project, Repository, SaveTag, Tag

log = logging.getLogger(__name__)

STALE_AFTER = timedelta(hours=24)
BATCH_SIZE = 1000
"""Builds evicted per write transaction: big enough to amortise the fixed statements of a batch, small enough
that the write lock is held well under a second (20,000 builds took 20 batches in 7-11 s on a loaded 2-core
machine, i.e. about 0.35-0.55 s per batch including its read)."""
CHUNK = 500
"""Values per ``IN (…)`` list: far below SQLite's variable limit, and small enough for the statement cache."""


class LifecycleError(RuntimeError):
    """A retention request that cannot be done as asked; the message says why and what to do."""


class BuildNotFound(LookupError):
    """The build does not exist (any more)."""


@dataclass(frozen=True, slots=True)
class Eviction:
    build_id: str
    project_id: str
    rule: str
    reason: str
    tags: list[str] = field(default_factory=list)
    manifests: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "build_id": self.build_id,
            "project_id": self.project_id,
            "rule": self.rule,
            "reason": self.reason,
            "tags": self.tags,
            "manifests": self.manifests,
        }


EvictionListener = Callable[[list[Eviction]], None]


@dataclass(frozen=True, slots=True)
class _BuildRow:
    """The columns eviction reads, loaded as plain rows: ORM objects cost more than the deletion itself."""

    id: str
    project_id: str
    status: str
    pinned: bool
    created_at: datetime
    saved_at: datetime | None
    expires_at: datetime | None
    manifest_digest: str | None
    unique_size: int | None


_BUILD_COLUMNS = (
    Build.id,
    Build.project_id,
    Build.status,
    Build.pinned,
    Build.created_at,
    Build.saved_at,
    Build.expires_at,
    Build.manifest_digest,
    Build.unique_size,
)


class _Batch:
    """Per-transaction lookups the rules share, so re-checking N builds costs O(projects) queries, not O(N)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._projects: dict[str, Project | None] = {}
        self._saved: dict[str, int] = {}

    def project(self, project_id: str) -> Project | None:
        if project_id not in self._projects:
            self._projects[project_id] = self.session.get(Project, project_id)
        return self._projects[project_id]

    def saved_count(self, project_id: str) -> int:
        if project_id not in self._saved:
            self._saved[project_id] = _saved_count(self.session, project_id)
        return self._saved[project_id]


Rule = Callable[[_BuildRow, _Batch, datetime, int], "_Candidate | None"]
"""Re-checks a build inside the eviction transaction; ``int`` is how many of the batch were chosen before it."""


@dataclass(frozen=True, slots=True)
class _Candidate:
    build: _BuildRow
    rule: str
    detail: dict[str, Any]


class Retention:
    def __init__(
        self,
        db: Database,
        *,
        clock: WallClock = utc_now,
        stale_after: timedelta = STALE_AFTER,
        batch_size: int = BATCH_SIZE,
        listeners: Iterable[EvictionListener] = (),
    ) -> None:
        self.db = db
        self.clock = clock
        self.stale_after = stale_after
        self.batch_size = batch_size
        self.listeners = list(listeners)

    # --- single builds --------------------------------------------------------------------------------

    def evict_build(
        self, build_id: str, rule: str = "manual", actor: str = "system", *, dry_run: bool = False
    ) -> Eviction:
        """Delete one build now, whatever its state (pinned too: a person asked). Raises :class:`BuildNotFound`."""
        now = self.clock()
        with self.db.read() if dry_run else self.db.write() as session:
            if not dry_run:
                hold_lock(session, CONTENT_LOCK)  # removes manifests: ordered against pushes referencing them
            row = session.execute(select(*_BUILD_COLUMNS).where(Build.id == build_id)).first()
            if row is None:
                raise BuildNotFound(f"build {build_id} does not exist")
            build = _BuildRow(*row)
            candidate = _Candidate(build, rule, {"status": build.status})
            if dry_run:
                return _planned(candidate, actor)
            evicted = self._evict(session, [candidate], actor, now)
        self._notify(evicted)
        return evicted[0]

    def evict_in(
        self, session: Session, build_ids: list[str], actor: str, *, detail: dict[str, Any] | None = None
    ) -> list[Eviction]:
        """Evict ``build_ids`` (rule ``manual``) inside the caller's write transaction; :meth:`notify` after commit.

        For deletions that must be atomic with another change, such as a build's manifest deleted through
        ``/v2/`` (see :mod:`cargohold.lifecycle.registry_delete`).
        """
        rows = [_BuildRow(*row) for row in session.execute(select(*_BUILD_COLUMNS).where(Build.id.in_(build_ids)))]
        candidates = [_Candidate(build, "manual", {"status": build.status, **(detail or {})}) for build in rows]
        return self._evict(session, candidates, actor, self.clock()) if candidates else []

    def notify(self, evicted: list[Eviction]) -> None:
        """Log and tell the listeners (metrics) about evictions made with :meth:`evict_in`, once committed."""
        self._notify(evicted)

    def pin(self, build_id: str, actor: str) -> BuildRecord:
        """Keep a saved build until unpinned (neither expiry nor the cap removes it)."""
        return self._change(build_id, actor, "pin", lambda build, now: _set(build, pinned=True))

    def unpin(self, build_id: str, actor: str) -> BuildRecord:
        """Let a build expire again; one whose expiry already passed goes at the next sweep."""
        return self._change(build_id, actor, "unpin", lambda build, now: _set(build, pinned=False))

    def extend(
        self, build_id: str, actor: str, *, by: timedelta | None = None, until: datetime | None = None
    ) -> BuildRecord:
        """Push a saved build's expiry out: ``by`` adds to its current expiry (or to now if that passed)."""
        if (by is None) == (until is None):
            raise LifecycleError('give exactly one of "by" (seconds) or "until" (ISO 8601 time)')
        if by is not None and by <= timedelta(0):
            raise LifecycleError(f'"by" must be a positive number of seconds, not {by.total_seconds():g}')

        def apply(build: Build, now: datetime) -> dict[str, Any]:
            if build.expires_at is None:
                raise LifecycleError(
                    f"build {build.id} never expires (its project keeps builds without a time limit); nothing to extend"
                )
            if until is not None:
                if until <= now:
                    raise LifecycleError(f"{iso(until)} is in the past; give a future time")
                build.expires_at = until
            else:
                assert by is not None
                build.expires_at = max(build.expires_at, now) + by
            return {"expires_at": iso(build.expires_at)}

        return self._change(build_id, actor, "extend", apply)

    def _change(
        self, build_id: str, actor: str, action: str, apply: Callable[[Build, datetime], dict[str, Any]]
    ) -> BuildRecord:
        now = self.clock()
        with self.db.write() as session:
            build = session.get(Build, build_id)
            if build is None:
                raise BuildNotFound(f"build {build_id} does not exist")
            if build.status != "saved":
                raise LifecycleError(f"build {build_id} is {build.status}; only saved builds can be {action}ed")
            detail = apply(build, now)
            audit.record(
                session,
                action=action,
                rule="manual",
                actor=actor,
                at=now,
                project_id=build.project_id,
                build_id=build.id,
                detail=detail,
            )
            session.flush()
            return build_record(session, build)

    # --- sweeps ---------------------------------------------------------------------------------------

    def enforce_cap(self, project_id: str, actor: str = "system", *, dry_run: bool = False) -> list[Eviction]:
        """Evict the oldest unpinned saved builds until the project is within ``max_builds``.

        Call right after a build is marked saved (the control API does, through the app's after-save hook).
        """
        evicted: list[Eviction] = []
        while True:
            with self.db.read() as session:
                project = session.get(Project, project_id)
                if project is None:
                    return evicted
                max_builds = project.max_builds
                saved = _saved_count(session, project_id)
                excess = saved - max_builds
                if excess <= 0:
                    return evicted
                ids = list(
                    session.scalars(
                        select(Build.id)
                        .where(Build.project_id == project_id, Build.status == "saved", Build.pinned.is_(False))
                        .order_by(Build.saved_at, Build.created_at, Build.id)
                        .limit(excess if dry_run else min(excess, self.batch_size))
                    )
                )
            if not ids:
                log.warning(
                    "project %s has %d saved builds, over its cap of %d, but all are pinned",
                    project_id,
                    saved,
                    max_builds,
                )
                return evicted
            batch = self._evict_ids(ids, actor, dry_run=dry_run, rule_of=self._cap_rule(max_builds))
            evicted.extend(batch)
            if dry_run or not batch:
                return evicted

    @staticmethod
    def _cap_rule(max_builds: int) -> Rule:
        def rule(build: _BuildRow, batch: _Batch, now: datetime, chosen: int) -> _Candidate | None:
            if build.status != "saved" or build.pinned:
                return None
            if batch.saved_count(build.project_id) - chosen <= max_builds:
                return None
            return _Candidate(build, "cap", {"max_builds": max_builds, "saved_at": iso(build.saved_at)})

        return rule

    def expire(self, actor: str = "system", *, dry_run: bool = False, project_id: str | None = None) -> list[Eviction]:
        """Evict every build past its expiry, and builds left pending or failed for too long."""
        evicted: list[Eviction] = []
        for status_filter in (self._expired_query, self._stale_query):
            offset = 0
            while True:
                now = self.clock()
                with self.db.read() as session:
                    query = status_filter(now)
                    if project_id is not None:
                        query = query.where(Build.project_id == project_id)
                    if dry_run:
                        query = query.offset(offset)
                    ids = list(session.scalars(query.limit(self.batch_size)))
                if not ids:
                    break
                batch = self._evict_ids(ids, actor, dry_run=dry_run, rule_of=self._expiry_rule)
                evicted.extend(batch)
                offset += len(ids)
                if not batch and not dry_run:
                    break  # everything selected was rescued meanwhile; the next sweep looks again
        return evicted

    def _expired_query(self, now: datetime) -> Any:
        return (
            select(Build.id)
            .where(Build.status == "saved", Build.pinned.is_(False), Build.expires_at <= now)
            .order_by(Build.expires_at, Build.id)
        )

    def _stale_query(self, now: datetime) -> Any:
        return (
            select(Build.id)
            .where(Build.status.in_(("pending", "failed")), Build.created_at <= now - self.stale_after)
            .order_by(Build.created_at, Build.id)
        )

    def _expiry_rule(self, build: _BuildRow, batch: _Batch, now: datetime, chosen: int) -> _Candidate | None:
        if build.status == "saved":
            if build.pinned or build.expires_at is None or build.expires_at > now:
                return None
            project = batch.project(build.project_id)
            retention = project.retention_seconds if project is not None else None
            return _Candidate(build, "expired", {"expires_at": iso(build.expires_at), "retention_seconds": retention})
        if build.created_at <= now - self.stale_after:
            return _Candidate(
                build, "stale", {"status": build.status, "stale_seconds": int(self.stale_after.total_seconds())}
            )
        return None

    def _evict_ids(
        self,
        ids: list[str],
        actor: str,
        *,
        dry_run: bool,
        rule_of: Rule,
    ) -> list[Eviction]:
        now = self.clock()
        with self.db.read() if dry_run else self.db.write() as session:
            if not dry_run:
                # Removes manifests (ordered against pushes referencing them), and serialises evictions across
                # processes, so two saves over a project's cap at once re-check each other's work below.
                hold_lock(session, CONTENT_LOCK)
            builds = [
                _BuildRow(*row)
                for start in range(0, len(ids), CHUNK)
                for row in session.execute(select(*_BUILD_COLUMNS).where(Build.id.in_(ids[start : start + CHUNK])))
            ]
            order = {build_id: index for index, build_id in enumerate(ids)}
            batch = _Batch(session)
            candidates: list[_Candidate] = []
            for build in sorted(builds, key=lambda b: order[b.id]):
                candidate = rule_of(build, batch, now, len(candidates))
                if candidate is not None:
                    candidates.append(candidate)
            if dry_run:
                return [_planned(candidate, actor) for candidate in candidates]
            evicted = self._evict(session, candidates, actor, now) if candidates else []
        self._notify(evicted)
        return evicted

    def _notify(self, evicted: list[Eviction]) -> None:
        if not evicted:
            return
        # One line per batch at INFO (a 20,000-build sweep must not flood the log); the audit log and DEBUG
        # keep the per-build story.
        rules = sorted({eviction.rule for eviction in evicted})
        log.info("evicted %d builds (%s), e.g. %s", len(evicted), ", ".join(rules), evicted[0].reason)
        if log.isEnabledFor(logging.DEBUG):
            for eviction in evicted:
                log.debug(
                    "evicted build %s of %s (%s): %s",
                    eviction.build_id,
                    eviction.project_id,
                    eviction.rule,
                    eviction.reason,
                )
        for listener in self.listeners:
            try:
                listener(evicted)
            except Exception:
                log.exception("eviction listener failed")

    # --- the deletion itself ----------------------------------------------------------------------------

    def _evict(self, session: Session, candidates: list[_Candidate], actor: str, now: datetime) -> list[Eviction]:
        by_project: dict[str, list[_Candidate]] = {}
        for candidate in candidates:
            by_project.setdefault(candidate.build.project_id, []).append(candidate)
        evicted: list[Eviction] = []
        for project_id, group in by_project.items():
            evicted.extend(self._evict_in_project(session, project_id, group, actor, now))
        return evicted

    def _evict_in_project(
        self, session: Session, project_id: str, group: list[_Candidate], actor: str, now: datetime
    ) -> list[Eviction]:
        build_ids = [candidate.build.id for candidate in group]
        repository_id = session.scalar(select(Repository.id).where(Repository.name == project_id))
        own_save_tags: list[tuple[str, str]] = []
        for start in range(0, len(build_ids), CHUNK):
            own_save_tags += [
                (build_id, tag)
                for build_id, tag in session.execute(
                    select(SaveTag.build_id, SaveTag.tag).where(
                        SaveTag.project_id == project_id, SaveTag.build_id.in_(build_ids[start : start + CHUNK])
                    )
                )
            ]
        tags_of: dict[str, set[str]] = {build_id: {build_id} for build_id in build_ids}
        save_tag_owner = {tag: build_id for build_id, tag in own_save_tags}
        for build_id, tag in own_save_tags:
            tags_of[build_id].add(tag)
        manifests_removed = 0
        if repository_id is not None:
            tag_rows = self._build_tags(session, repository_id, project_id, build_ids, own_save_tags)
            for name, _ in tag_rows:
                owner = save_tag_owner.get(name) or (name if name in tags_of else name.split("-", 1)[0])
                tags_of.setdefault(owner, {owner}).add(name)
            roots = {manifest_id for _, manifest_id in tag_rows}
            tag_names = [name for name, _ in tag_rows]
            for start in range(0, len(tag_names), CHUNK):
                session.execute(
                    delete(Tag)
                    .where(Tag.repository_id == repository_id, Tag.name.in_(tag_names[start : start + CHUNK]))
                    .execution_options(synchronize_session=False)
                )
            manifests_removed = _delete_unneeded_manifests(session, repository_id, roots)
        for start in range(0, len(build_ids), CHUNK):
            chunk = build_ids[start : start + CHUNK]
            session.execute(
                delete(SaveTag).where(SaveTag.build_id.in_(chunk)).execution_options(synchronize_session=False)
            )
            session.execute(delete(Build).where(Build.id.in_(chunk)).execution_options(synchronize_session=False))
        entries: list[audit.Entry] = []
        for candidate in group:
            build = candidate.build
            tags = sorted(tags_of.get(build.id, {build.id}))
            detail = {
                **candidate.detail,
                "digest": build.manifest_digest,
                "tags": tags,
                "saved_at": iso(build.saved_at),
                "unique_size": build.unique_size,
            }
            entries.append(
                audit.Entry(
                    action="evict",
                    rule=candidate.rule,
                    actor=actor,
                    at=now,
                    project_id=project_id,
                    build_id=build.id,
                    detail=detail,
                    removed_tags=tags,
                )
            )
        event_ids = audit.record_many(session, entries)
        evicted: list[Eviction] = []
        for entry, event_id in zip(entries, event_ids, strict=True):
            event = audit.Event(
                event_id, project_id, entry.build_id, "evict", entry.rule, actor, now, entry.detail or {}
            )
            evicted.append(
                Eviction(entry.build_id or "", project_id, entry.rule, audit.describe(event), list(entry.removed_tags))
            )
        if evicted:
            # Manifest counts are per batch (shared manifests make a per-build split meaningless).
            first = evicted[0]
            evicted[0] = Eviction(
                first.build_id, first.project_id, first.rule, first.reason, first.tags, manifests_removed
            )
        return evicted

    @staticmethod
    def _build_tags(
        session: Session,
        repository_id: int,
        project_id: str,
        build_ids: list[str],
        own_save_tags: list[tuple[str, str]],
    ) -> list[tuple[str, int]]:
        """``(tag, manifest_id)`` for the builds' ID tags, ``<build>-<target>`` tags and save-tags."""
        rows: list[tuple[str, int]] = []
        # Build IDs never contain '-', and '-' is the only tag character below '.', so the half-open range
        # ["<id>", "<id>.") holds exactly the tag "<id>" and the "<id>-…" tags. Joining a list of IDs makes
        # SQLite seek the tags primary key once per ID inside one statement (a big OR of ranges defeats the
        # index; one statement per build was the old bottleneck).
        for start in range(0, len(build_ids), CHUNK):
            rows += _id_and_target_tags(session, repository_id, build_ids[start : start + CHUNK])
        seen = {name for name, _ in rows}
        save_tags = sorted({tag for _, tag in own_save_tags if tag not in seen})
        for start in range(0, len(save_tags), CHUNK):
            rows += [
                (name, manifest_id)
                for name, manifest_id in session.execute(
                    select(Tag.name, Tag.manifest_id).where(
                        Tag.repository_id == repository_id, Tag.name.in_(save_tags[start : start + CHUNK])
                    )
                )
            ]
        # A "<id>-something" tag (or, oddly, a tag spelled like an ID) may be another build's save-tag; it stays.
        names = [name for name, _ in rows]
        others: set[str] = set()
        for start in range(0, len(names), CHUNK):
            others.update(
                session.scalars(
                    select(SaveTag.tag).where(
                        SaveTag.project_id == project_id,
                        SaveTag.tag.in_(names[start : start + CHUNK]),
                        SaveTag.build_id.not_in(build_ids),
                    )
                )
            )
        return [(name, manifest_id) for name, manifest_id in rows if name not in others]


_ID_TAGS_SQLITE = text(
    "SELECT tags.name, tags.manifest_id FROM json_each(:ids) AS evicting CROSS JOIN tags"
    " WHERE tags.repository_id = :repository_id"
    " AND tags.name >= evicting.value AND tags.name < evicting.value || '.'"
)
"""On SQLite the ID list is ``json_each`` over one JSON parameter, so the statement is compiled once and cached
(a ``VALUES`` list is part of the statement and was recompiled per batch, costing more than the query), and
``CROSS JOIN`` pins the join order: the planner otherwise walks every tag of the repository and probes the
ID list, because it cannot estimate a table-valued function. ``EXPLAIN QUERY PLAN``: SCAN evicting, then
SEARCH tags USING INDEX sqlite_autoindex_tags_1 (repository_id=? AND name>? AND name<?)."""


def _id_and_target_tags(session: Session, repository_id: int, build_ids: list[str]) -> list[tuple[str, int]]:
    """``(tag, manifest_id)`` of every tag in the range ["<id>", "<id>.") for each of ``build_ids``."""
    if session.get_bind().dialect.name == "sqlite":
        result = session.execute(_ID_TAGS_SQLITE, {"ids": json.dumps(build_ids), "repository_id": repository_id})
        return [(name, manifest_id) for name, manifest_id in result]
    ids = values(column("value", String), name="evicting").data([(item,) for item in build_ids]).cte("evicting")
    query = (
        select(Tag.name, Tag.manifest_id)
        .select_from(ids)
        .join(
            Tag,
            (Tag.repository_id == repository_id) & (Tag.name >= ids.c.value) & (Tag.name < ids.c.value.concat(".")),
        )
    )
    return [(name, manifest_id) for name, manifest_id in session.execute(query)]


def _saved_count(session: Session, project_id: str) -> int:
    query = select(func.count()).select_from(Build).where(Build.project_id == project_id, Build.status == "saved")
    return session.scalar(query) or 0


def _set(build: Build, **values: Any) -> dict[str, Any]:
    for key, value in values.items():
        setattr(build, key, value)
    return {key: value for key, value in values.items()}


def _planned(candidate: _Candidate, actor: str) -> Eviction:
    build = candidate.build
    detail = dict(candidate.detail)
    if candidate.rule == "expired":
        retention = detail.get("retention_seconds")
        why = f"expired at {detail.get('expires_at')}" + (
            f" (retention {format_duration(retention)})" if retention else ""
        )
    elif candidate.rule == "cap":
        why = f"oldest unpinned saved build over the cap of {detail.get('max_builds')}"
    elif candidate.rule == "stale":
        why = f"{build.status} since {iso(build.created_at)}, never saved"
    else:
        why = f"deleted by {actor}"
    return Eviction(build.id, build.project_id, candidate.rule, why, [build.id])


def _delete_unneeded_manifests(session: Session, repository_id: int, roots: set[int]) -> int:
    """Delete the manifests reachable from ``roots`` that nothing remaining needs; returns how many."""
    doomed = unkept_manifests(session, repository_id, reachable_manifests(session, repository_id, roots))
    delete_manifests(session, doomed)
    return len(doomed)


ManifestInfo = dict[int, tuple[str, str | None]]
"""``manifest id -> (digest, subject digest)`` of manifests being considered for deletion."""


def reachable_manifests(session: Session, repository_id: int, roots: set[int]) -> ManifestInfo:
    """``roots`` and every manifest of the repository they reach: index children and referrers, recursively.

    Every query here is chunked and index-driven (``EXPLAIN QUERY PLAN`` shows a search, never a scan):
    children by ``uq_manifests_repository_digest``, referrers by ``ix_manifests_repository_subject``.
    The child and referrer look-ups are separate statements because an ``OR`` of the two made SQLite scan
    the repository's manifests once per frontier.
    """
    info: ManifestInfo = {}
    frontier = set(roots)
    while frontier:
        ids = sorted(frontier)
        for start in range(0, len(ids), CHUNK):
            for manifest_id, digest, subject in session.execute(
                select(Manifest.id, Manifest.digest, Manifest.subject_digest).where(
                    Manifest.id.in_(ids[start : start + CHUNK])
                )
            ):
                info[manifest_id] = (digest, subject)
        digests = [info[manifest_id][0] for manifest_id in ids if manifest_id in info]
        reached: set[int] = set()
        for start in range(0, len(ids), CHUNK):
            children = select(ManifestReference.digest).where(
                ManifestReference.manifest_id.in_(ids[start : start + CHUNK]), ManifestReference.kind == "manifest"
            )
            reached.update(
                session.scalars(
                    select(Manifest.id).where(Manifest.repository_id == repository_id, Manifest.digest.in_(children))
                )
            )
        for start in range(0, len(digests), CHUNK):
            reached.update(
                session.scalars(
                    select(Manifest.id).where(
                        Manifest.repository_id == repository_id,
                        Manifest.subject_digest.in_(digests[start : start + CHUNK]),
                    )
                )
            )
        frontier = {manifest_id for manifest_id in reached if manifest_id not in info}
    return info


def unkept_manifests(session: Session, repository_id: int, candidates: ManifestInfo) -> set[int]:
    """The ``candidates`` that nothing outside the deletion set keeps; the caller deletes them together.

    A candidate stays if it has a tag, if a manifest of the repository that stays lists it as a child, or if
    it is a referrer whose subject stays (a manifest outside the candidates that exists, or a candidate that
    stays); whatever stays keeps its own children and referrers in turn. Deleting what is left in one
    transaction therefore never leaves a remaining index pointing at a deleted child, nor deletes the
    signature of a remaining image. Lookups: remaining tags by ``ix_tags_manifest_id``, remaining parents by
    ``ix_manifest_references_digest``.
    """
    info = candidates
    deleting = set(info)
    while deleting:
        ids = sorted(deleting)
        digests_of = {info[manifest_id][0]: manifest_id for manifest_id in ids}
        keep: set[int] = set()
        for start in range(0, len(ids), CHUNK):
            keep.update(session.scalars(select(Tag.manifest_id).where(Tag.manifest_id.in_(ids[start : start + CHUNK]))))
        digest_list = list(digests_of)
        parents: dict[int, set[str]] = {}
        for start in range(0, len(digest_list), CHUNK):
            # Driven by ix_manifest_references_digest alone: joining manifests here made SQLite walk every
            # manifest of the repository per chunk. A child has few parents, so filtering after is cheap.
            for digest, parent in session.execute(
                select(ManifestReference.digest, ManifestReference.manifest_id).where(
                    ManifestReference.kind == "manifest",
                    ManifestReference.digest.in_(digest_list[start : start + CHUNK]),
                )
            ):
                if parent not in deleting:
                    parents.setdefault(parent, set()).add(digest)
        parent_ids = sorted(parents)
        for start in range(0, len(parent_ids), CHUNK):
            for parent in session.scalars(
                select(Manifest.id).where(
                    Manifest.id.in_(parent_ids[start : start + CHUNK]), Manifest.repository_id == repository_id
                )
            ):
                keep.update(digests_of[digest] for digest in parents[parent])
        # A referrer stays while its subject stays: a subject outside the deletion set that still exists.
        subjects = sorted({subject for manifest_id in ids if (subject := info[manifest_id][1])} - set(digests_of))
        kept_subjects: set[str] = set()
        for start in range(0, len(subjects), CHUNK):
            kept_subjects.update(
                session.scalars(
                    select(Manifest.digest).where(
                        Manifest.repository_id == repository_id, Manifest.digest.in_(subjects[start : start + CHUNK])
                    )
                )
            )
        keep.update(manifest_id for manifest_id in ids if info[manifest_id][1] in kept_subjects)
        if not keep:
            break
        deleting -= keep
    return deleting


def delete_manifests(session: Session, manifest_ids: Iterable[int]) -> None:
    """Delete manifests with their references and any tags on them (chunked, no ORM bookkeeping)."""
    ids = sorted(manifest_ids)
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        for table in (Tag, ManifestReference):
            session.execute(
                delete(table).where(table.manifest_id.in_(chunk)).execution_options(synchronize_session=False)
            )
        session.execute(delete(Manifest).where(Manifest.id.in_(chunk)).execution_options(synchronize_session=False))


__all__ = [
    "BuildNotFound",
    "Eviction",
    "LifecycleError",
    "ManifestInfo",
    "Retention",
    "delete_manifests",
    "reachable_manifests",
    "unkept_manifests",
]
