"""Retention for everything builds do not own: tags pushed outside builds, and manifests nothing needs.

Builds have their own rules (:mod:`cargohold.lifecycle.retention`). Everything else a project stores — a
``docker push <host>/<project>/web:1.0``, a ``skopeo copy`` into ``<project>:nightly``, a manifest pushed by
digest — is governed here, so that nothing in an ephemeral registry stays forever by accident.

**Which tags.** A *build tag* is a tag of the project's own repository ``<project>`` that is a build's ID,
``<build>-<anything>`` for a build of the project (bake targets), or a save-tag
(:func:`cargohold.metadata.store.build_tags`): its build's retention decides, and evicting the build removes
it. Every other tag of the project — every tag of a ``<project>/…`` repository, and the other tags of
``<project>`` — is a *non-build tag*, governed here. Repositories outside any project (only an admin can
push there) have no retention.

**Rules** (the ``rule`` recorded in the audit log):

* ``expired`` — a non-build tag expires the project's retention period after its last push: every push of
  the tag, even of the digest it already had, sets ``Tag.expires_at`` to push time + retention unless it is
  already later (:meth:`cargohold.metadata.store.MetadataStore.put_manifest`; an extension survives a push).
  ``expires_at == now`` expires, one microsecond earlier does not. Pinned tags never expire; ``extend``
  moves the expiry. Like a build's expiry, a tag's is fixed when it is pushed: a change of the project's
  retention applies from the next push. Projects without a time limit give tags no expiry. One exception:
  a tag spelled like a referrer tag (the OCI referrers tag schema's ``sha256-<hex>``, cosign's
  ``sha256-<hex>.sig``/``.att``/``.sbom``) stays while the manifest it names exists in its repository, and
  goes at the first sweep after that (a signature lives as long as its image).
* ``untagged`` — in a project with a retention period, a manifest nothing keeps is collected. A manifest
  is *kept* when

  1. a tag points at it, or it is a build's image (``Build.manifest_digest``); or
  2. it was pushed (by tag or by digest; every push refreshes ``Manifest.pushed_at``) less than the
     retention period ago, so a client that pushes by digest and tags later has the whole period, and a
     manifest pushed by digest and never tagged lives exactly that long; or
  3. a kept index of the same repository lists it (platform manifests, attestation manifests); or
  4. it is a referrer (its ``subject`` names a manifest) whose subject exists in the repository and is
     kept: a signature, SBOM or attestation stays as long as the image it describes, however old it is.

  Nothing else keeps a manifest: a subject is not kept by its referrers, and pulls refresh nothing. In
  projects without a time limit untagged manifests stay (a ``/v2/`` DELETE removes them).
* ``manual`` (or the caller's rule) — :meth:`TagRetention.evict_tag` removes one tag now.

Removing a tag also removes, in the same transaction, the manifests it reached that rule ``untagged`` no
longer keeps; the sweep (:meth:`TagRetention.collect_untagged`) finds the rest. Blobs are left to the garbage
collector, and metering stops counting a blob as soon as no manifest of the project references it. The
project's cap (``max_builds``) counts saved builds only: non-build tags do not count toward it and are
never evicted by it.

**Concurrency.** As for builds: sweeps read candidates outside the write lock, then re-check every rule
inside the ``BEGIN IMMEDIATE`` transaction that deletes. A manifest PUT takes the same lock, so a tag
re-pushed after the read has a later expiry at the re-check and stays; a push that lands after the deletion
recreates the tag and its manifest (the GC grace window keeps its blobs linked). A collection transaction
deletes a manifest only together with every parent and subject of it that still exists
(:func:`cargohold.lifecycle.retention.unkept_manifests`), so no remaining index ever points at a deleted
child and no remaining image loses its signature.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select, tuple_, update
from sqlalchemy.orm import Session, aliased

from cargohold.clock import WallClock, utc_now
from cargohold.isotime import iso
from cargohold.lifecycle import audit
from cargohold.lifecycle.retention import (
    CHUNK,
    LifecycleError,
    ManifestInfo,
    delete_manifests,
    reachable_manifests,
    unkept_manifests,
)
from cargohold.metadata.control import ID_LENGTH
from cargohold.metadata.db import CONTENT_LOCK, Database, hold_lock
from cargohold.metadata.models import Blob, Build, Manifest, ManifestReference, Project, Repository, SaveTag, Tag
from cargohold.metadata.store import build_tags, project_of
from cargohold.oci.digest import Digest, DigestError

log = logging.getLogger(__name__)

BATCH_SIZE = 1000
"""Tags (or manifests) removed per write transaction, as for builds."""
MAX_LISTED_DIGESTS = 100
"""Digests named in one ``collect`` audit event (the count is always exact)."""
REFERRER_TAG = re.compile(r"^(sha256|sha512)-([0-9a-f]+)(?:\.[A-Za-z0-9_.-]+)?$")
"""Tags that name their subject: the referrers tag schema (``sha256-<hex>``) and cosign's ``.sig``/``.att``/…"""


class TagNotFound(LookupError):
    """The tag does not exist (any more)."""


@dataclass(frozen=True, slots=True)
class TagRecord:
    """A non-build tag as ``tags list`` shows it."""

    project_id: str
    repository: str
    tag: str
    digest: str
    media_type: str
    size: int
    """The manifest, the manifests it lists (recursively) and their distinct blobs."""
    pushed_at: datetime
    expires_at: datetime | None
    pinned: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "repository": self.repository,
            "tag": self.tag,
            "digest": self.digest,
            "media_type": self.media_type,
            "size": self.size,
            "pushed_at": iso(self.pushed_at),
            "expires_at": iso(self.expires_at),
            "pinned": self.pinned,
        }


@dataclass(frozen=True, slots=True)
class TagEviction:
    project_id: str
    repository: str
    tag: str
    digest: str
    rule: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "repository": self.repository,
            "tag": self.tag,
            "digest": self.digest,
            "rule": self.rule,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class ManifestCollection:
    """Untagged manifests removed from one repository in one transaction (or that a dry run would remove)."""

    project_id: str
    repository: str
    rule: str
    reason: str
    digests: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "repository": self.repository,
            "rule": self.rule,
            "reason": self.reason,
            "count": len(self.digests),
            "digests": self.digests,
        }


TagListener = Callable[[list[TagEviction], list[ManifestCollection]], None]


@dataclass(frozen=True, slots=True)
class _TagRow:
    repository_id: int
    repository: str
    tag: str
    manifest_id: int
    digest: str
    media_type: str
    pushed_at: datetime
    expires_at: datetime | None
    pinned: bool


_TAG_COLUMNS = (
    Tag.repository_id,
    Repository.name,
    Tag.name,
    Tag.manifest_id,
    Manifest.digest,
    Manifest.media_type,
    Tag.updated_at,
    Tag.expires_at,
    Tag.pinned,
)


def _select_tags() -> Any:
    return (
        select(*_TAG_COLUMNS)
        .join(Repository, Repository.id == Tag.repository_id)
        .join(Manifest, Manifest.id == Tag.manifest_id)
    )


def _in_project(project_id: str) -> ColumnElement[bool]:
    """SQL: the repository (joined) is the project's: ``<project>`` or ``<project>/…``."""
    return or_(Repository.name == project_id, Repository.name.startswith(f"{project_id}/", autoescape=True))


def _build_tag(project_id: str) -> ColumnElement[bool]:
    """SQL twin of :func:`cargohold.metadata.store.build_tags` for a query joining tags and repositories.

    Build IDs are ``ID_LENGTH`` characters without ``-``, so "``<build>-…``" is "the first ``ID_LENGTH``
    characters are a build's ID and a ``-`` follows"; ``substr`` is spelled the same on SQLite and PostgreSQL.
    """
    owner = func.substr(Tag.name, 1, ID_LENGTH)
    return and_(
        Repository.name == project_id,
        or_(
            exists().where(Build.id == Tag.name, Build.project_id == project_id),
            and_(
                func.substr(Tag.name, ID_LENGTH + 1, 1) == "-",
                exists().where(Build.id == owner, Build.project_id == project_id),
            ),
            exists().where(SaveTag.project_id == project_id, SaveTag.tag == Tag.name),
        ),
    )


@dataclass(frozen=True, slots=True)
class _Candidate:
    row: _TagRow
    detail: dict[str, Any]


class TagRetention:
    def __init__(
        self,
        db: Database,
        *,
        clock: WallClock = utc_now,
        batch_size: int = BATCH_SIZE,
        listeners: Iterable[TagListener] = (),
    ) -> None:
        self.db = db
        self.clock = clock
        self.batch_size = batch_size
        self.listeners = list(listeners)

    # --- reading --------------------------------------------------------------------------------------

    def list_tags(
        self,
        project_id: str,
        *,
        repository: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 50,
    ) -> list[TagRecord]:
        """The project's non-build tags ordered by repository and tag; ``after`` is the last ``(repo, tag)`` seen.

        One statement per repository, each a range of the tags primary key (a single join over the project's
        repositories made SQLite scan every tag of every project).
        """
        with self.db.read() as session:
            query = select(Repository.id, Repository.name).where(_in_project(project_id))
            if repository is not None:
                query = query.where(Repository.name == repository)
            if after is not None:
                query = query.where(Repository.name >= after[0])
            rows: list[_TagRow] = []
            for repository_id, name in session.execute(query.order_by(Repository.name)).all():
                tags = _select_tags().where(Tag.repository_id == repository_id, ~_build_tag(project_id))
                if after is not None and name == after[0]:
                    tags = tags.where(Tag.name > after[1])
                rows += [_TagRow(*row) for row in session.execute(tags.order_by(Tag.name).limit(limit - len(rows)))]
                if len(rows) >= limit:
                    break
            sizes = _total_sizes(session, {row.manifest_id for row in rows})
        return [_record(row, sizes[row.manifest_id]) for row in rows]

    def get_tag(self, repository: str, tag: str) -> TagRecord:
        with self.db.read() as session:
            row = self._row(session, repository, tag)
            return _record(row, _total_sizes(session, {row.manifest_id})[row.manifest_id])

    @staticmethod
    def _row(session: Session, repository: str, tag: str) -> _TagRow:
        found = session.execute(_select_tags().where(Repository.name == repository, Tag.name == tag)).first()
        if found is None:
            raise TagNotFound(f"tag {repository}:{tag} does not exist")
        return _TagRow(*found)

    @staticmethod
    def _refuse_build_tag(session: Session, row: _TagRow, action: str) -> None:
        project_id = project_of(row.repository)
        if row.repository != project_id or not build_tags(session, project_id, [row.tag]):
            return
        held = session.get(SaveTag, (project_id, row.tag))
        build_id = held.build_id if held is not None else row.tag.split("-", 1)[0]
        command = "rm" if action == "evict" else action
        raise LifecycleError(
            f"{row.repository}:{row.tag} is a tag of build {build_id}, which its build's retention governs; "
            f"use `cargohold builds {command} {build_id}` instead"
        )

    # --- single tags ----------------------------------------------------------------------------------

    def pin(self, repository: str, tag: str, actor: str) -> TagRecord:
        """Keep a tag until unpinned (it does not expire, so neither do the manifests it keeps)."""
        return self._change(repository, tag, actor, "pin", lambda row, now: {"pinned": True})

    def unpin(self, repository: str, tag: str, actor: str) -> TagRecord:
        """Let a tag expire again; one whose expiry already passed goes at the next sweep."""
        return self._change(repository, tag, actor, "unpin", lambda row, now: {"pinned": False})

    def extend(
        self, repository: str, tag: str, actor: str, *, by: timedelta | None = None, until: datetime | None = None
    ) -> TagRecord:
        """Move a tag's expiry: ``by`` past its current expiry (or now if that passed), or to ``until``."""
        if (by is None) == (until is None):
            raise LifecycleError('give exactly one of "by" (seconds) or "until" (ISO 8601 time)')
        if by is not None and by <= timedelta(0):
            raise LifecycleError(f'"by" must be a positive number of seconds, not {by.total_seconds():g}')

        def apply(row: _TagRow, now: datetime) -> dict[str, Any]:
            if row.expires_at is None:
                raise LifecycleError(
                    f"{row.repository}:{row.tag} never expires (its project keeps images without a time limit); "
                    "nothing to extend"
                )
            if until is not None:
                if until <= now:
                    raise LifecycleError(f"{iso(until)} is in the past; give a future time")
                return {"expires_at": until}
            assert by is not None
            return {"expires_at": max(row.expires_at, now) + by}

        return self._change(repository, tag, actor, "extend", apply)

    def _change(
        self,
        repository: str,
        tag: str,
        actor: str,
        action: str,
        apply: Callable[[_TagRow, datetime], dict[str, Any]],
    ) -> TagRecord:
        now = self.clock()
        with self.db.write() as session:
            row = self._row(session, repository, tag)
            self._refuse_build_tag(session, row, action)
            values = apply(row, now)
            session.execute(
                update(Tag).where(Tag.repository_id == row.repository_id, Tag.name == row.tag).values(**values)
            )
            audit.record(
                session,
                action=action,
                rule="manual",
                actor=actor,
                at=now,
                project_id=project_of(repository),
                detail={
                    "repository": repository,
                    "tag": tag,
                    "digest": row.digest,
                    **{key: iso(value) if isinstance(value, datetime) else value for key, value in values.items()},
                },
            )
            changed = self._row(session, repository, tag)
            return _record(changed, _total_sizes(session, {changed.manifest_id})[changed.manifest_id])

    def evict_tag(
        self,
        repository: str,
        tag: str,
        rule: str = "manual",
        actor: str = "system",
        *,
        dry_run: bool = False,
        unreferenced_before: datetime | None = None,
    ) -> tuple[TagEviction, list[ManifestCollection]]:
        """Remove one non-build tag now, pinned or not, and the manifests it reached that nothing keeps.

        ``unreferenced_before`` overrides rule 2 of ``untagged`` for this call (e.g. space eviction passes
        now, so the image's manifests go even when pushed recently or in a project without a time limit).
        Raises :class:`TagNotFound`, or :class:`LifecycleError` for a build tag (evict the build instead).
        """
        now = self.clock()
        with self.db.read() if dry_run else self.db.write() as session:
            if not dry_run:
                hold_lock(session, CONTENT_LOCK)  # removes manifests: ordered against pushes referencing them
            row = self._row(session, repository, tag)
            self._refuse_build_tag(session, row, "evict")
            candidate = _Candidate(row, {"pushed_at": iso(row.pushed_at), "pinned": row.pinned})
            if dry_run:
                return _planned(candidate, rule, actor, now), []
            evicted, collected = self._evict(session, [candidate], rule, actor, now, unreferenced_before)
        self._notify(evicted, collected)
        return evicted[0], collected

    # --- sweeps ---------------------------------------------------------------------------------------

    def expire(
        self, actor: str = "system", *, dry_run: bool = False, project_id: str | None = None
    ) -> tuple[list[TagEviction], list[ManifestCollection]]:
        """Remove every unpinned non-build tag whose expiry has come, and the manifests only they kept.

        A dry run lists the tags only: the manifests they alone keep are found once the tags are gone.
        """
        evicted: list[TagEviction] = []
        collected: list[ManifestCollection] = []
        after: tuple[int, str] | None = None
        while True:
            now = self.clock()
            with self.db.read() as session:
                query = select(Tag.repository_id, Tag.name).where(Tag.pinned.is_(False), Tag.expires_at <= now)
                if project_id is not None:
                    query = query.join(Repository, Repository.id == Tag.repository_id).where(_in_project(project_id))
                if after is not None:
                    # Keyset paging: tags the re-check keeps (referrer tags of a living image) are not read again.
                    query = query.where(tuple_(Tag.repository_id, Tag.name) > tuple_(*after))
                query = query.order_by(Tag.repository_id, Tag.name).limit(self.batch_size)
                keys = [(repository_id, name) for repository_id, name in session.execute(query)]
            if not keys:
                return evicted, collected
            after = keys[-1]
            tags, manifests = self._expire_batch(keys, actor, dry_run=dry_run)
            evicted += tags
            collected += manifests

    def _expire_batch(
        self, keys: list[tuple[int, str]], actor: str, *, dry_run: bool
    ) -> tuple[list[TagEviction], list[ManifestCollection]]:
        now = self.clock()
        with self.db.read() if dry_run else self.db.write() as session:
            if not dry_run:
                hold_lock(session, CONTENT_LOCK)  # removes manifests: ordered against pushes referencing them
            candidates = self._expired(session, _load(session, keys), now)
            if dry_run:
                return [_planned(candidate, "expired", actor, now) for candidate in candidates], []
            evicted, collected = self._evict(session, candidates, "expired", actor, now) if candidates else ([], [])
        self._notify(evicted, collected)
        return evicted, collected

    @staticmethod
    def _expired(session: Session, rows: list[_TagRow], now: datetime) -> list[_Candidate]:
        """The rows rule ``expired`` removes, re-checked in the caller's (write) transaction."""
        due = [row for row in rows if not row.pinned and row.expires_at is not None and row.expires_at <= now]
        # Build tags carry no expiry of their own; a save-tag claimed after the read is skipped here.
        roots: dict[str, list[str]] = {}
        for row in due:
            if row.repository == project_of(row.repository):
                roots.setdefault(row.repository, []).append(row.tag)
        owned = {(project, tag) for project, names in roots.items() for tag in build_tags(session, project, names)}
        due = [row for row in due if (row.repository, row.tag) not in owned]
        # Referrer tags stay while the manifest they name exists in their repository.
        named = {row: _referrer_subject(row.tag) for row in due}
        subjects: set[tuple[int, str]] = set()
        by_repository: dict[int, list[str]] = {}
        for row, subject in named.items():
            if subject is not None:
                by_repository.setdefault(row.repository_id, []).append(subject)
        for repository_id, digests in by_repository.items():
            for start in range(0, len(digests), CHUNK):
                subjects.update(
                    (repository_id, digest)
                    for digest in session.scalars(
                        select(Manifest.digest).where(
                            Manifest.repository_id == repository_id, Manifest.digest.in_(digests[start : start + CHUNK])
                        )
                    )
                )
        retention: dict[str, int | None] = {}
        candidates: list[_Candidate] = []
        for row in due:
            if (row.repository_id, named[row]) in subjects:
                continue
            project_id = project_of(row.repository)
            if project_id not in retention:
                retention[project_id] = session.scalar(
                    select(Project.retention_seconds).where(Project.id == project_id)
                )
            detail = {
                "expires_at": iso(row.expires_at),
                "pushed_at": iso(row.pushed_at),
                "retention_seconds": retention[project_id],
            }
            candidates.append(_Candidate(row, detail))
        return candidates

    def collect_untagged(
        self, actor: str = "system", *, dry_run: bool = False, project_id: str | None = None
    ) -> list[ManifestCollection]:
        """Remove the manifests rule ``untagged`` no longer keeps, in every project with a retention period."""
        now = self.clock()
        with self.db.read() as session:
            query = select(Project.id, Project.retention_seconds).where(Project.retention_seconds.is_not(None))
            if project_id is not None:
                query = query.where(Project.id == project_id)
            projects = [
                (pid, int(seconds))
                for pid, seconds in session.execute(query.order_by(Project.id))
                if seconds is not None  # the query's own condition; spelled out for the type checker
            ]
            repositories = {
                pid: [
                    (repository_id, name)
                    for repository_id, name in session.execute(
                        select(Repository.id, Repository.name).where(_in_project(pid)).order_by(Repository.name)
                    )
                ]
                for pid, _ in projects
            }
        collected: list[ManifestCollection] = []
        for pid, seconds in projects:
            for repository_id, name in repositories[pid]:
                collected += self._collect_repository(pid, repository_id, name, seconds, now, actor, dry_run=dry_run)
        return collected

    def _collect_repository(
        self,
        project_id: str,
        repository_id: int,
        repository: str,
        retention_seconds: int,
        now: datetime,
        actor: str,
        *,
        dry_run: bool,
    ) -> list[ManifestCollection]:
        cutoff = now - timedelta(seconds=retention_seconds)
        collected: list[ManifestCollection] = []
        while True:
            # Plan on a snapshot (cheap, no lock): the common sweep finds nothing and never writes.
            with self.db.read() as session:
                candidates = _untagged(session, project_id, repository_id, repository, cutoff)
                planned = unkept_manifests(session, repository_id, candidates) if candidates else set()
            if not planned:
                return collected
            if dry_run:
                digests = sorted(candidates[manifest_id][0] for manifest_id in planned)
                return [_collection(project_id, repository, digests, retention_seconds, now, "untagged")]
            removed_any = False
            # Newest first: an index is pushed after its children, so a batch tends to hold whole images.
            ordered = sorted(planned, reverse=True)
            for start in range(0, len(ordered), self.batch_size):
                with self.db.write() as session:
                    hold_lock(session, CONTENT_LOCK)  # removes manifests: ordered against pushes referencing them
                    # Re-checked under the write lock: a push since the plan may have tagged or refreshed some,
                    # or listed them in a new index; whatever stays keeps what it needs.
                    chunk = ordered[start : start + self.batch_size]
                    batch = _untagged(session, project_id, repository_id, repository, cutoff, only=chunk)
                    doomed = unkept_manifests(session, repository_id, batch)
                    if not doomed:
                        continue
                    delete_manifests(session, doomed)
                    digests = sorted(batch[manifest_id][0] for manifest_id in doomed)
                    collection = self._record_collection(
                        session, project_id, repository, digests, retention_seconds, actor, now
                    )
                collected.append(collection)
                self._notify([], [collection])
                removed_any = True
            if not removed_any:
                return collected  # everything planned was rescued meanwhile (or waits for a parent batch)

    # --- the deletion itself ----------------------------------------------------------------------------

    def _evict(
        self,
        session: Session,
        candidates: Sequence[_Candidate],
        rule: str,
        actor: str,
        now: datetime,
        unreferenced_before: datetime | None = None,
    ) -> tuple[list[TagEviction], list[ManifestCollection]]:
        by_repository: dict[int, list[_Candidate]] = {}
        for candidate in candidates:
            by_repository.setdefault(candidate.row.repository_id, []).append(candidate)
        evicted: list[TagEviction] = []
        collected: list[ManifestCollection] = []
        for repository_id, group in by_repository.items():
            repository = group[0].row.repository
            project_id = project_of(repository)
            names = [candidate.row.tag for candidate in group]
            for start in range(0, len(names), CHUNK):
                session.execute(
                    delete(Tag)
                    .where(Tag.repository_id == repository_id, Tag.name.in_(names[start : start + CHUNK]))
                    .execution_options(synchronize_session=False)
                )
            entries = [
                audit.Entry(
                    action="evict",
                    rule=rule,
                    actor=actor,
                    at=now,
                    project_id=project_id,
                    detail={"repository": repository, "tag": c.row.tag, "digest": c.row.digest, **c.detail},
                    removed_tags=[c.row.tag],
                    repository=repository,
                )
                for c in group
            ]
            event_ids = audit.record_many(session, entries)
            for candidate, entry, event_id in zip(group, entries, event_ids, strict=True):
                event = audit.Event(event_id, project_id, None, "evict", rule, actor, now, entry.detail or {})
                evicted.append(
                    TagEviction(
                        project_id, repository, candidate.row.tag, candidate.row.digest, rule, audit.describe(event)
                    )
                )
            seconds = session.scalar(select(Project.retention_seconds).where(Project.id == project_id))
            cutoff = unreferenced_before
            if cutoff is None and seconds is not None:
                cutoff = now - timedelta(seconds=seconds)
            if cutoff is None:
                continue  # no time limit: untagged manifests stay
            reached = reachable_manifests(session, repository_id, {c.row.manifest_id for c in group})
            batch = _untagged(session, project_id, repository_id, repository, cutoff, only=sorted(reached))
            doomed = unkept_manifests(session, repository_id, batch)
            if doomed:
                delete_manifests(session, doomed)
                digests = sorted(batch[manifest_id][0] for manifest_id in doomed)
                collected.append(self._record_collection(session, project_id, repository, digests, seconds, actor, now))
        return evicted, collected

    @staticmethod
    def _record_collection(
        session: Session,
        project_id: str,
        repository: str,
        digests: list[str],
        retention_seconds: int | None,
        actor: str,
        now: datetime,
    ) -> ManifestCollection:
        detail = {
            "repository": repository,
            "count": len(digests),
            "digests": digests[:MAX_LISTED_DIGESTS],
            "retention_seconds": retention_seconds,
        }
        event_id = audit.record(
            session, action="collect", rule="untagged", actor=actor, at=now, project_id=project_id, detail=detail
        )
        event = audit.Event(event_id, project_id, None, "collect", "untagged", actor, now, detail)
        return ManifestCollection(project_id, repository, "untagged", audit.describe(event), digests)

    def _notify(self, evicted: list[TagEviction], collected: list[ManifestCollection]) -> None:
        if not evicted and not collected:
            return
        if evicted:
            log.info("removed %d tags pushed outside builds, e.g. %s", len(evicted), evicted[0].reason)
        for collection in collected:
            log.info("%s", collection.reason)
        for listener in self.listeners:
            try:
                listener(evicted, collected)
            except Exception:
                log.exception("tag retention listener failed")


# --- helpers ----------------------------------------------------------------------------------------------


def _record(row: _TagRow, size: int) -> TagRecord:
    return TagRecord(
        project_id=project_of(row.repository),
        repository=row.repository,
        tag=row.tag,
        digest=row.digest,
        media_type=row.media_type,
        size=size,
        pushed_at=row.pushed_at,
        expires_at=row.expires_at,
        pinned=row.pinned,
    )


def _load(session: Session, keys: list[tuple[int, str]]) -> list[_TagRow]:
    by_repository: dict[int, list[str]] = {}
    for repository_id, name in keys:
        by_repository.setdefault(repository_id, []).append(name)
    rows: list[_TagRow] = []
    for repository_id, names in by_repository.items():
        for start in range(0, len(names), CHUNK):
            query = _select_tags().where(Tag.repository_id == repository_id, Tag.name.in_(names[start : start + CHUNK]))
            rows.extend(_TagRow(*row) for row in session.execute(query))
    return rows


def _referrer_subject(tag: str) -> str | None:
    """The digest a referrer-schema tag names (``sha256-<hex>[.sig]`` -> ``sha256:<hex>``), if it is one."""
    match = REFERRER_TAG.match(tag)
    if match is None:
        return None
    try:
        return str(Digest.parse(f"{match.group(1)}:{match.group(2)}"))
    except DigestError:
        return None


def _untagged(
    session: Session,
    project_id: str,
    repository_id: int,
    repository: str,
    cutoff: datetime,
    *,
    only: Sequence[int] | None = None,
) -> ManifestInfo:
    """Manifests of the repository rules 1 and 2 of ``untagged`` do not keep: no tag, not a build's image,
    last pushed at or before ``cutoff`` (all of them, or those among ``only``)."""
    base = select(Manifest.id, Manifest.digest, Manifest.subject_digest).where(
        Manifest.repository_id == repository_id,
        Manifest.pushed_at <= cutoff,
        ~exists().where(Tag.manifest_id == Manifest.id),
    )
    info: ManifestInfo = {}
    if only is None:
        info.update((manifest_id, (digest, subject)) for manifest_id, digest, subject in session.execute(base))
    else:
        for start in range(0, len(only), CHUNK):
            query = base.where(Manifest.id.in_(only[start : start + CHUNK]))
            info.update((manifest_id, (digest, subject)) for manifest_id, digest, subject in session.execute(query))
    if info and repository == project_id:
        digests = sorted({digest for digest, _ in info.values()})
        images: set[str] = set()
        for start in range(0, len(digests), CHUNK):
            images.update(
                session.scalars(
                    select(Build.manifest_digest).where(
                        Build.project_id == project_id, Build.manifest_digest.in_(digests[start : start + CHUNK])
                    )
                )
            )
        info = {manifest_id: entry for manifest_id, entry in info.items() if entry[0] not in images}
    return info


def _total_sizes(session: Session, roots: set[int]) -> dict[int, int]:
    """Bytes each of ``roots`` needs: itself, the manifests it lists (recursively, same repository) and their
    distinct blobs. A fixed number of chunked statements for a whole page of tags."""
    parent = aliased(Manifest)
    children: dict[int, set[int]] = {}
    seen = set(roots)
    frontier = sorted(roots)
    while frontier:
        found: set[int] = set()
        for start in range(0, len(frontier), CHUNK):
            for parent_id, child_id in session.execute(
                select(ManifestReference.manifest_id, Manifest.id)
                .join(parent, parent.id == ManifestReference.manifest_id)
                .join(
                    Manifest,
                    and_(Manifest.repository_id == parent.repository_id, Manifest.digest == ManifestReference.digest),
                )
                .where(ManifestReference.manifest_id.in_(frontier[start : start + CHUNK]))
                .where(ManifestReference.kind == "manifest")
            ):
                children.setdefault(parent_id, set()).add(child_id)
                found.add(child_id)
        frontier = sorted(found - seen)
        seen |= found
    ids = sorted(seen)
    own: dict[int, int] = {}
    blobs: dict[int, dict[str, int]] = {}
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        for manifest_id, size in session.execute(select(Manifest.id, Manifest.size).where(Manifest.id.in_(chunk))):
            own[manifest_id] = size
        for manifest_id, digest, size in session.execute(
            select(ManifestReference.manifest_id, Blob.digest, Blob.size)
            .join(Blob, Blob.digest == ManifestReference.digest)
            .where(ManifestReference.manifest_id.in_(chunk), ManifestReference.kind == "blob")
        ):
            blobs.setdefault(manifest_id, {})[digest] = size
    sizes: dict[int, int] = {}
    for root in roots:
        reached = {root}
        stack = [root]
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in reached:
                    reached.add(child)
                    stack.append(child)
        distinct: dict[str, int] = {}
        for manifest_id in reached:
            distinct.update(blobs.get(manifest_id, {}))
        sizes[root] = sum(own.get(manifest_id, 0) for manifest_id in reached) + sum(distinct.values())
    return sizes


def _collection(
    project_id: str, repository: str, digests: list[str], retention_seconds: int | None, now: datetime, rule: str
) -> ManifestCollection:
    """What a dry run reports (no event is written, so the sentence is built from a transient one)."""
    detail = {"repository": repository, "count": len(digests), "retention_seconds": retention_seconds}
    event = audit.Event(0, project_id, None, "collect", rule, "dry run", now, detail)
    return ManifestCollection(project_id, repository, rule, audit.describe(event), digests)


def _planned(candidate: _Candidate, rule: str, actor: str, now: datetime) -> TagEviction:
    """What a dry run reports (no event is written, so the sentence is built from a transient one)."""
    row = candidate.row
    detail = {"repository": row.repository, "tag": row.tag, "digest": row.digest, **candidate.detail}
    event = audit.Event(0, project_of(row.repository), None, "evict", rule, actor, now, detail)
    return TagEviction(project_of(row.repository), row.repository, row.tag, row.digest, rule, audit.describe(event))


__all__ = [
    "ManifestCollection",
    "TagEviction",
    "TagNotFound",
    "TagRecord",
    "TagRetention",
]
