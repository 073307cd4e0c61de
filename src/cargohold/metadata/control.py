"""Control-plane metadata: projects, builds, save-tags, credentials, trust relationships, OIDC jti claims.

Lives next to :mod:`cargohold.metadata.store` (the registry's own tables) and shares its database, so
operations that touch both (marking a build saved, moving a save-tag) run in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cargohold.clock import utc_now
from cargohold.metadata.db import LINEAGE_LOCK, Database, hold_lock, rowcount, upsert
from cargohold.metadata.errors import Conflict, NotFound, ParentInactive
from cargohold.metadata.models import (
    Blob,
    Build,
    Credential,
    CredentialTrust,
    Manifest,
    ManifestReference,
    OidcTokenUse,
    Project,
    Repository,
    SaveTag,
    Tag,
    TrustRelationship,
)
from cargohold.metadata.store import MetadataStore

ID_ALPHABET = string.ascii_lowercase + string.digits
ID_LENGTH = 10
"""36**10 ~= 2**51.7: unguessable enough for names that are not secrets, short enough to type."""

DEFAULT_RETENTION = timedelta(days=7)
DEFAULT_MAX_BUILDS = 20_000


def new_id() -> str:
    # First character a letter so an ID never looks like a number (or a digest prefix) to people.
    return secrets.choice(string.ascii_lowercase) + "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH - 1))


@dataclass(frozen=True, slots=True)
class ProjectRecord:
    id: str
    name: str
    created_at: datetime
    retention: timedelta | None
    max_builds: int


@dataclass(frozen=True, slots=True)
class BuildRecord:
    id: str
    project_id: str
    status: str
    created_at: datetime
    saved_at: datetime | None
    expires_at: datetime | None
    pinned: bool
    manifest_digest: str | None
    media_type: str | None
    platforms: list[str]
    targets: dict[str, str]
    total_size: int | None
    unique_size: int | None
    provenance: dict[str, Any]
    failure: str | None
    created_by: str | None
    save_tags: list[str]
    replayed: bool = False
    """Returned for a repeated create request (same ``Idempotency-Key``), not created by it."""


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    """A stored credential (never its plaintext: ``token_hash`` is the SHA-256 of the token).

    ``permissions`` is the list of ``{"project", "actions", "build_id"}`` grants as stored; the auth package
    turns it into its own types (``cargohold.server.auth.credentials``).
    """

    id: str
    kind: str
    name: str
    token_hash: str
    created_at: datetime
    permissions: tuple[dict[str, Any], ...] = ()
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    """Recorded facts about the credential: who created it, the CI provenance of an OIDC exchange."""
    project_id: str | None = None
    """The project a project/pull token belongs to (for listing); OIDC tokens may span several."""
    parent_id: str | None = None
    admin_permissions: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class TrustRecord:
    """A trust relationship: which CI jobs of one repository may exchange their OIDC token for a project."""

    id: str
    project_id: str
    provider: str
    issuer: str
    owner: str
    repository: str
    created_at: datetime
    permissions: frozenset[str]
    owner_id: str | None = None
    repository_id: str | None = None
    workflow: str | None = None
    environment: str | None = None
    ref_pattern: str | None = None
    runner_environment: str | None = None
    allowed_events: frozenset[str] = frozenset()
    pull_only: bool = False


def _credential_record(row: Credential) -> CredentialRecord:
    admin = frozenset(str(item) for item in json.loads(row.admin_permissions)) if row.admin_permissions else frozenset()
    return CredentialRecord(
        id=row.id,
        kind=row.kind,
        name=row.name,
        token_hash=row.token_hash,
        created_at=row.created_at,
        permissions=tuple(json.loads(row.permissions)),
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        metadata=json.loads(row.metadata_json) if row.metadata_json else {},
        project_id=row.project_id,
        parent_id=row.parent_id,
        admin_permissions=admin,
    )


def _credential_row(record: CredentialRecord) -> Credential:
    return Credential(
        id=record.id,
        kind=record.kind,
        name=record.name,
        token_hash=record.token_hash,
        permissions=json.dumps(list(record.permissions), sort_keys=True),
        metadata_json=json.dumps(record.metadata) if record.metadata else None,
        created_at=record.created_at,
        expires_at=record.expires_at,
        revoked_at=record.revoked_at,
        project_id=record.project_id,
        parent_id=record.parent_id,
        admin_permissions=json.dumps(sorted(record.admin_permissions)) if record.admin_permissions else None,
    )


def _trust_record(row: TrustRelationship) -> TrustRecord:
    return TrustRecord(
        id=row.id,
        project_id=row.project_id,
        provider=row.provider,
        issuer=row.issuer,
        owner=row.owner,
        repository=row.repository,
        created_at=row.created_at,
        permissions=frozenset(json.loads(row.permissions)),
        owner_id=row.owner_id,
        repository_id=row.repository_id,
        workflow=row.workflow,
        environment=row.environment,
        ref_pattern=row.ref_pattern,
        runner_environment=row.runner_environment,
        allowed_events=frozenset(json.loads(row.allowed_events)) if row.allowed_events else frozenset(),
        pull_only=row.pull_only,
    )


def _trust_row(record: TrustRecord) -> TrustRelationship:
    return TrustRelationship(
        id=record.id,
        project_id=record.project_id,
        provider=record.provider,
        issuer=record.issuer,
        owner=record.owner,
        repository=record.repository,
        owner_id=record.owner_id,
        repository_id=record.repository_id,
        workflow=record.workflow,
        environment=record.environment,
        ref_pattern=record.ref_pattern,
        runner_environment=record.runner_environment,
        allowed_events=json.dumps(sorted(record.allowed_events)) if record.allowed_events else None,
        pull_only=record.pull_only,
        permissions=json.dumps(sorted(record.permissions)),
        created_at=record.created_at,
    )


def build_record(session: Session, row: Build, save_tags: list[str] | None = None) -> BuildRecord:
    """The record of a build row, read in ``session`` (its save-tags too, unless the caller read them)."""
    tags = (
        sorted(session.scalars(select(SaveTag.tag).where(SaveTag.build_id == row.id)))
        if save_tags is None
        else save_tags
    )
    return BuildRecord(
        id=row.id,
        project_id=row.project_id,
        status=row.status,
        created_at=row.created_at,
        saved_at=row.saved_at,
        expires_at=row.expires_at,
        pinned=row.pinned,
        manifest_digest=row.manifest_digest,
        media_type=row.media_type,
        platforms=json.loads(row.platforms) if row.platforms else [],
        targets=json.loads(row.targets) if row.targets else {},
        total_size=row.total_size,
        unique_size=row.unique_size,
        provenance=json.loads(row.provenance) if row.provenance else {},
        failure=row.failure,
        created_by=row.created_by,
        save_tags=tags,
    )


def _with_save_tags(session: Session, rows: list[Build]) -> list[BuildRecord]:
    """Records of a page of builds with their save-tags read in one query (not one per build)."""
    tags: dict[str, list[str]] = {row.id: [] for row in rows}
    if rows:
        found = session.execute(
            select(SaveTag.build_id, SaveTag.tag).where(SaveTag.build_id.in_(list(tags))).order_by(SaveTag.tag)
        )
        for build_id, tag in found:
            tags[build_id].append(tag)
    return [build_record(session, row, tags[row.id]) for row in rows]


def _project_record(row: Project) -> ProjectRecord:
    retention = None if row.retention_seconds is None else timedelta(seconds=row.retention_seconds)
    return ProjectRecord(row.id, row.name, row.created_at, retention, row.max_builds)


class ControlStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- projects -----------------------------------------------------------------------------------------

    def create_project(
        self, name: str, *, retention: timedelta | None = DEFAULT_RETENTION, max_builds: int = DEFAULT_MAX_BUILDS
    ) -> ProjectRecord:
        now = utc_now()
        with self.db.write() as session:
            project = Project(
                id=new_id(),
                name=name,
                created_at=now,
                retention_seconds=None if retention is None else int(retention.total_seconds()),
                max_builds=max_builds,
            )
            session.add(project)
            session.flush()
            return _project_record(project)

    def get_project(self, project_id: str) -> ProjectRecord | None:
        with self.db.read() as session:
            row = session.get(Project, project_id)
            return _project_record(row) if row else None

    def list_projects(self, only: Iterable[str] | None = None) -> list[ProjectRecord]:
        with self.db.read() as session:
            query = select(Project).order_by(Project.created_at, Project.id)
            if only is not None:
                query = query.where(Project.id.in_(list(only)))
            return [_project_record(row) for row in session.scalars(query)]

    def update_project(
        self,
        project_id: str,
        *,
        name: str | None = None,
        retention: timedelta | bool | None = False,
        max_builds: int | None = None,
    ) -> ProjectRecord:
        """Change settings; ``retention=None`` means unlimited, ``False`` (default) leaves it alone."""
        with self.db.write() as session:
            row = session.get(Project, project_id)
            if row is None:
                raise NotFound(f"project {project_id} does not exist")
            if name is not None:
                row.name = name
            if retention is not False:
                row.retention_seconds = int(retention.total_seconds()) if isinstance(retention, timedelta) else None
            if max_builds is not None:
                row.max_builds = max_builds
            session.flush()
            return _project_record(row)

    # --- builds -------------------------------------------------------------------------------------------

    def create_build(
        self,
        project_id: str,
        *,
        provenance: dict[str, Any] | None = None,
        created_by: str | None = None,
        request_key: str | None = None,
    ) -> BuildRecord:
        """A new pending build; with ``request_key``, the build an earlier request with that key created, if
        any (:attr:`BuildRecord.replayed` is then true). The look-up and the insert share one write
        transaction, and the key is unique per project, so two requests with one key make one build."""
        now = utc_now()
        with self.db.write() as session:
            if session.get(Project, project_id) is None:
                raise NotFound(f"project {project_id} does not exist")
            if request_key is not None:
                earlier = session.scalar(
                    select(Build).where(Build.project_id == project_id, Build.request_key == request_key)
                )
                if earlier is not None:
                    if earlier.created_by != created_by:
                        raise Conflict("this Idempotency-Key was used by another caller; send a new random key")
                    return replace(build_record(session, earlier), replayed=True)
            build = Build(
                id=new_id(),
                project_id=project_id,
                status="pending",
                created_at=now,
                provenance=json.dumps(provenance) if provenance else None,
                created_by=created_by,
                request_key=request_key,
            )
            session.add(build)
            session.flush()
            return build_record(session, build)

    def get_build(self, build_id: str) -> BuildRecord | None:
        with self.db.read() as session:
            row = session.get(Build, build_id)
            return build_record(session, row) if row else None

    def list_builds(
        self,
        project_id: str,
        *,
        limit: int = 50,
        before: str | None = None,
        tag: str | None = None,
        status: str | None = None,
        pinned: bool | None = None,
        id_contains: str | None = None,
    ) -> list[BuildRecord]:
        """Newest first. ``before`` is the ID of the last build of the previous page (keyset pagination: a deep
        page costs what the first does). ``id_contains`` matches part of the build ID, case-insensitively."""
        with self.db.read() as session:
            query = select(Build).where(Build.project_id == project_id)
            if tag is not None:
                query = query.join(SaveTag, SaveTag.build_id == Build.id).where(SaveTag.tag == tag)
            if status is not None:
                query = query.where(Build.status == status)
            if pinned is not None:
                query = query.where(Build.pinned.is_(pinned))
            if id_contains:
                query = query.where(Build.id.contains(id_contains.lower(), autoescape=True))
            if before is not None:
                anchor = session.get(Build, before)
                if anchor is None or anchor.project_id != project_id:
                    raise NotFound(f"build {before} (the page cursor) does not exist in project {project_id}")
                query = query.where(
                    or_(
                        Build.created_at < anchor.created_at,
                        (Build.created_at == anchor.created_at) & (Build.id < anchor.id),
                    )
                )
            query = query.order_by(Build.created_at.desc(), Build.id.desc()).limit(limit)
            rows = list(session.scalars(query))
            return _with_save_tags(session, rows)

    def count_builds(self, project_ids: Iterable[str]) -> dict[str, int]:
        """How many builds (any status) each project holds."""
        ids = list(project_ids)
        with self.db.read() as session:
            rows = session.execute(
                select(Build.project_id, func.count()).where(Build.project_id.in_(ids)).group_by(Build.project_id)
            ).all()
        counts = {project_id: 0 for project_id in ids}
        counts.update({project_id: int(count) for project_id, count in rows})
        return counts

    def largest_builds(self, project_id: str, limit: int = 10) -> list[BuildRecord]:
        """The project's saved builds by size, largest first (what to look at when storage grew)."""
        with self.db.read() as session:
            query = (
                select(Build)
                .where(Build.project_id == project_id, Build.status == "saved")
                .order_by(Build.total_size.desc(), Build.id)
                .limit(limit)
            )
            return _with_save_tags(session, list(session.scalars(query)))

    def mark_saved(
        self,
        build_id: str,
        *,
        platforms: list[str],
        targets: dict[str, str] | None = None,
        save_tags: Iterable[str] = (),
        now: datetime | None = None,
    ) -> BuildRecord:
        """Record a build as saved once ``<project>:<build>`` exists in the registry.

        Reads the manifest digest and media type from the registry's tag, computes the total and unique
        sizes from the manifests it references, and points the save-tags at it — all in one transaction.
        """
        now = now or utc_now()
        with self.db.write() as session:
            build = session.get(Build, build_id)
            if build is None:
                raise NotFound(f"build {build_id} does not exist")
            if build.status == "failed":
                raise Conflict(f"build {build_id} was marked failed; start a new build")
            project = session.get(Project, build.project_id)
            assert project is not None
            row = session.execute(
                select(Manifest.id, Manifest.digest, Manifest.media_type)
                .join(Tag, Tag.manifest_id == Manifest.id)
                .join(Repository, Repository.id == Manifest.repository_id)
                .where(Repository.name == build.project_id, Tag.name == build_id)
            ).first()
            if row is None:
                raise Conflict(
                    f"{build.project_id}:{build_id} is not in the registry; push the image with that tag first"
                )
            manifest_id, digest, media_type = row
            total, unique = _sizes(session, manifest_id)
            build.status = "saved"
            build.saved_at = build.saved_at or now
            if build.expires_at is None and project.retention_seconds is not None:
                build.expires_at = now + timedelta(seconds=project.retention_seconds)
            build.manifest_digest = digest
            build.media_type = media_type
            build.platforms = json.dumps(platforms)
            build.targets = json.dumps(targets) if targets else None
            build.total_size = total
            build.unique_size = unique
            session.flush()
            self._claim_save_tags(session, build, list(save_tags), now)
            return build_record(session, build)

    def mark_failed(self, build_id: str, reason: str) -> BuildRecord:
        with self.db.write() as session:
            build = session.get(Build, build_id)
            if build is None:
                raise NotFound(f"build {build_id} does not exist")
            if build.status == "saved":
                raise Conflict(f"build {build_id} is already saved")
            build.status = "failed"
            build.failure = reason[:2000]
            session.flush()
            return build_record(session, build)

    def add_save_tags(self, build_id: str, tags: Iterable[str]) -> BuildRecord:
        now = utc_now()
        with self.db.write() as session:
            build = session.get(Build, build_id)
            if build is None:
                raise NotFound(f"build {build_id} does not exist")
            if build.status != "saved":
                raise Conflict(f"build {build_id} is {build.status}; only saved builds can carry save-tags")
            self._claim_save_tags(session, build, list(tags), now, force=True)
            return build_record(session, build)

    def remove_save_tag(self, build_id: str, tag: str) -> BuildRecord:
        with self.db.write() as session:
            build = session.get(Build, build_id)
            if build is None:
                raise NotFound(f"build {build_id} does not exist")
            held = session.get(SaveTag, (build.project_id, tag))
            if held is None or held.build_id != build_id:
                raise NotFound(f"build {build_id} has no save-tag {tag!r}")
            session.delete(held)
            repository_id = session.scalar(select(Repository.id).where(Repository.name == build.project_id))
            session.execute(delete(Tag).where(Tag.repository_id == repository_id, Tag.name == tag))
            session.flush()
            return build_record(session, build)

    def _claim_save_tags(
        self, session: Session, build: Build, tags: list[str], now: datetime, *, force: bool = False
    ) -> None:
        """Point each save-tag at ``build`` unless a newer build holds it (``force``: explicit re-tag)."""
        if not tags:
            return
        repository_id = session.scalar(select(Repository.id).where(Repository.name == build.project_id))
        manifest_id = session.scalar(
            select(Manifest.id).where(Manifest.repository_id == repository_id, Manifest.digest == build.manifest_digest)
        )
        assert repository_id is not None and manifest_id is not None
        for tag in tags:
            if tag == build.id:
                continue
            held = session.get(SaveTag, (build.project_id, tag))
            if held is not None and held.build_id != build.id and not force:
                holder = session.get(Build, held.build_id)
                if holder is not None and holder.created_at > build.created_at:
                    continue  # a newer build already claimed it
            session.execute(
                upsert(session, SaveTag)
                .values(project_id=build.project_id, tag=tag, build_id=build.id, updated_at=now)
                .on_conflict_do_update(
                    index_elements=["project_id", "tag"], set_={"build_id": build.id, "updated_at": now}
                )
            )
            # A save-tag is a build tag: its build's retention decides, so it has no expiry of its own.
            session.execute(
                upsert(session, Tag)
                .values(repository_id=repository_id, name=tag, manifest_id=manifest_id, updated_at=now, expires_at=None)
                .on_conflict_do_update(
                    index_elements=["repository_id", "name"],
                    set_={"manifest_id": manifest_id, "updated_at": now, "expires_at": None},
                )
            )

    def find_build_by_tag(self, project_id: str, tag: str) -> BuildRecord | None:
        """The build a ``project:tag`` names: the build ID itself, a bake target tag, or a save-tag."""
        with self.db.read() as session:
            build = session.get(Build, tag)
            if build is not None and build.project_id == project_id:
                return build_record(session, build)
            held = session.get(SaveTag, (project_id, tag))
            if held is not None:
                build = session.get(Build, held.build_id)
                return build_record(session, build) if build else None
            return None

    def build_reachable(self, repository: str, build_id: str) -> tuple[set[str], set[str]]:
        """What a pull credential narrowed to ``build_id`` may read in ``repository`` (save-tags included)."""
        with self.db.read() as session:
            save_tags = list(session.scalars(select(SaveTag.tag).where(SaveTag.build_id == build_id)))
        return MetadataStore(self.db).build_reachable(repository, build_id, save_tags)

    # --- credentials --------------------------------------------------------------------------------------

    def add_credential(self, record: CredentialRecord, trust_ids: Iterable[str] = ()) -> CredentialRecord:
        """Store a new credential, enforcing its lineage in the same write transaction; returns the row stored.

        The parent must still exist, be unrevoked and unexpired, and the child's expiry is capped at the
        parent's; every trust relationship the credential came from must still exist. Because revocation
        (:meth:`revoke_credential`) and trust removal (:meth:`remove_trust`) cascade in write transactions
        too, the two serialise: either the cascade sees the new child, or the child sees the revoked parent
        and is refused with :class:`ParentInactive`. Nothing needs checking at authentication time.
        """
        trust_ids = sorted(set(trust_ids))
        now = utc_now()
        row = _credential_row(record)
        with self.db.write() as session:
            if row.parent_id is not None or trust_ids:
                hold_lock(session, LINEAGE_LOCK, shared=True)  # a revocation's walk waits for this child
            if row.parent_id is not None:
                parent = session.execute(
                    select(Credential.revoked_at, Credential.expires_at)
                    .where(Credential.id == row.parent_id)
                    .with_for_update()
                ).first()
                if parent is None or parent.revoked_at is not None:
                    raise ParentInactive("the credential minting this token has been revoked")
                if parent.expires_at is not None:
                    if parent.expires_at <= now:
                        raise ParentInactive("the credential minting this token has expired")
                    if row.expires_at is None or row.expires_at > parent.expires_at:
                        row.expires_at = parent.expires_at
            if trust_ids:
                found = set(
                    session.scalars(
                        select(TrustRelationship.id).where(TrustRelationship.id.in_(trust_ids)).with_for_update()
                    )
                )
                if found != set(trust_ids):
                    raise ParentInactive("the trust relationship that matched this token was removed meanwhile")
            session.add(row)
            session.flush()
            for trust_id in trust_ids:
                session.add(CredentialTrust(credential_id=row.id, trust_id=trust_id))
            session.flush()
            return _credential_record(row)

    def credential_by_hash(self, token_hash: str) -> CredentialRecord | None:
        with self.db.read() as session:
            row = session.scalar(select(Credential).where(Credential.token_hash == token_hash))
            return None if row is None else _credential_record(row)

    def credential_revoked(self, credential_id: str) -> bool:
        """True if the credential is revoked or gone (registry tokens derived from it stop working)."""
        with self.db.read() as session:
            row = session.execute(
                select(Credential.revoked_at, Credential.expires_at).where(Credential.id == credential_id)
            ).first()
            if row is None:
                return True
            revoked_at, expires_at = row
            return revoked_at is not None or (expires_at is not None and expires_at <= utc_now())

    def list_credentials(
        self, project_id: str | None = None, *, include_inactive: bool = False
    ) -> list[CredentialRecord]:
        with self.db.read() as session:
            query = select(Credential).order_by(Credential.created_at)
            if project_id is not None:
                query = query.where(Credential.project_id == project_id)
            if not include_inactive:
                now = utc_now()
                query = query.where(
                    Credential.revoked_at.is_(None),
                    or_(Credential.expires_at.is_(None), Credential.expires_at > now),
                )
            return [_credential_record(row) for row in session.scalars(query)]

    def get_credential(self, credential_id: str) -> CredentialRecord | None:
        with self.db.read() as session:
            row = session.get(Credential, credential_id)
            return None if row is None else _credential_record(row)

    def revoke_credential(self, credential_id: str, *, keep_an_admin: bool = False) -> int:
        """Revoke a credential and, in the same transaction, every credential minted from it (transitively).

        Returns how many credentials this revoked (0: it was unknown or already revoked, as were its
        descendants). ``keep_an_admin``: raise :class:`Conflict` instead when it is the last live admin
        credential with full control (checked in the revoking transaction, so two revocations racing for
        the last two admins cannot both win).
        """
        with self.db.write() as session:
            hold_lock(session, LINEAGE_LOCK)  # first: two revocations of the last two admins serialise here
            now = utc_now()
            if keep_an_admin and _is_last_admin(session, credential_id, now):
                raise Conflict(f"token {credential_id} is the last admin token")
            return _revoke_lineage(session, select(Credential.id).where(Credential.id == credential_id), now)

    def count_admin_credentials(self) -> int:
        """Admin credentials with full control (a metrics-only token does not count: it cannot manage)."""
        with self.db.read() as session:
            query = (
                select(func.count())
                .select_from(Credential)
                .where(Credential.kind == "admin", Credential.admin_permissions.like('%"admin"%'))
            )
            return session.scalar(query) or 0

    # --- trust relationships ------------------------------------------------------------------------------

    def add_trust(self, record: TrustRecord) -> TrustRecord:
        with self.db.write() as session:
            if session.get(Project, record.project_id) is None:
                raise NotFound(f"project {record.project_id} does not exist")
            row = _trust_row(record)
            session.add(row)
            session.flush()
            return _trust_record(row)

    def list_trust(self, project_id: str | None = None) -> list[TrustRecord]:
        with self.db.read() as session:
            query = select(TrustRelationship).order_by(TrustRelationship.created_at)
            if project_id is not None:
                query = query.where(TrustRelationship.project_id == project_id)
            return [_trust_record(row) for row in session.scalars(query)]

    def trust_for_repository(self, issuer: str, owner: str, repository: str) -> list[TrustRecord]:
        """Relationships of ``issuer`` naming ``owner/repository`` (names stored lowercased: GitHub ignores case)."""
        with self.db.read() as session:
            query = select(TrustRelationship).where(
                TrustRelationship.issuer == issuer,
                TrustRelationship.owner == owner.lower(),
                TrustRelationship.repository == repository.lower(),
            )
            return [_trust_record(row) for row in session.scalars(query)]

    def remove_trust(self, project_id: str, trust_id: str) -> int | None:
        """Delete a trust relationship and revoke every credential exchanged through it (and their children).

        Returns how many credentials were revoked, or None if the relationship did not exist. One write
        transaction, so an exchange running at the same time either stores its credential before (and it is
        revoked here) or finds the relationship gone (:meth:`add_credential` refuses it).
        """
        with self.db.write() as session:
            hold_lock(session, LINEAGE_LOCK)  # before the trust row's lock, in the order add_credential takes them
            result = session.execute(
                delete(TrustRelationship).where(
                    TrustRelationship.id == trust_id, TrustRelationship.project_id == project_id
                )
            )
            if not rowcount(result):
                return None
            now = utc_now()
            # Credentials exchanged long ago have expired: nothing to revoke there, however long the history.
            exchanged = (
                select(CredentialTrust.credential_id)
                .join(Credential, Credential.id == CredentialTrust.credential_id)
                .where(CredentialTrust.trust_id == trust_id, _live(now))
            )
            return _revoke_lineage(session, exchanged, now)

    def learn_trust_ids(self, trust_id: str, owner_id: str, repository_id: str) -> None:
        """Pin the immutable GitHub IDs on first use; never overwrite IDs already pinned."""
        with self.db.write() as session:
            session.execute(
                update(TrustRelationship)
                .where(TrustRelationship.id == trust_id, TrustRelationship.owner_id.is_(None))
                .values(owner_id=owner_id)
            )
            session.execute(
                update(TrustRelationship)
                .where(TrustRelationship.id == trust_id, TrustRelationship.repository_id.is_(None))
                .values(repository_id=repository_id)
            )

    # --- OIDC jti single use ------------------------------------------------------------------------------

    def claim_jti(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """Atomically record a token id; False if it was already used. Purges long-expired claims.

        ``jti`` comes from the token (any length its issuer likes); one longer than the column holds is stored
        as its SHA-256, which keeps it unique without a 500 from a database that enforces lengths."""
        if len(jti) > MAX_STORED_JTI:
            jti = "sha256:" + hashlib.sha256(jti.encode()).hexdigest()
        now = utc_now()
        try:
            with self.db.write() as session:
                session.execute(delete(OidcTokenUse).where(OidcTokenUse.expires_at < now))
                session.add(OidcTokenUse(issuer=issuer, jti=jti, expires_at=expires_at))
            return True
        except IntegrityError:
            return False


MAX_STORED_JTI = 255
"""The ``oidc_token_uses.jti`` column's length."""


def _live_full_admins(now: datetime) -> Select[str]:
    return select(Credential.id).where(
        Credential.kind == "admin",
        Credential.admin_permissions.like('%"admin"%'),
        Credential.revoked_at.is_(None),
        or_(Credential.expires_at.is_(None), Credential.expires_at > now),
    )


def _is_last_admin(session: Session, credential_id: str, now: datetime) -> bool:
    """Whether ``credential_id`` is a live full admin and no other one is left."""
    admins = set(session.scalars(_live_full_admins(now).limit(2)))
    return admins == {credential_id}


def _revoke_lineage(session: Session, seed: Select[str], now: datetime) -> int:
    """Revoke the credentials ``seed`` selects and all their live descendants; returns how many were revoked.

    One recursive query finds the tree (each step an ``ix_credentials_parent_id`` search), then chunked
    UPDATEs revoke it: a handful of statements in the caller's write transaction, whatever its depth. The
    walk skips credentials already revoked or expired: their descendants were revoked with them or expired
    no later (a child's expiry is capped at its parent's), so the tree stays as small as what is still live.
    """
    # Before the walk: a child minted meanwhile (holding the lock shared) is either committed and walked, or
    # waits and then finds its parent revoked.
    hold_lock(session, LINEAGE_LOCK)
    roots = select(Credential.id).where(Credential.id.in_(seed), Credential.revoked_at.is_(None))
    tree = roots.cte("lineage", recursive=True)
    tree = tree.union(select(Credential.id).join(tree, Credential.parent_id == tree.c.id).where(_live(now)))
    ids = list(session.scalars(select(tree.c.id)))
    revoked = 0
    for start in range(0, len(ids), _CHUNK):
        result = session.execute(
            update(Credential)
            .where(Credential.id.in_(ids[start : start + _CHUNK]), Credential.revoked_at.is_(None))
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
        revoked += rowcount(result)
    return revoked


def _live(now: datetime) -> ColumnElement[bool]:
    """Credentials neither revoked nor expired at ``now``."""
    return Credential.revoked_at.is_(None) & (Credential.expires_at.is_(None) | (Credential.expires_at > now))


_CHUNK = 500
"""IDs per ``IN (…)`` list, far below SQLite's variable limit."""


def _sizes(session: Session, manifest_id: int) -> tuple[int, int]:
    """Total bytes reachable from a manifest, and the bytes no other manifest in the repository references."""
    manifest_ids = {manifest_id}
    frontier = [manifest_id]
    repository_id = session.scalar(select(Manifest.repository_id).where(Manifest.id == manifest_id))
    while frontier:
        children = list(
            session.scalars(
                select(Manifest.id)
                .join(ManifestReference, ManifestReference.digest == Manifest.digest)
                .where(
                    ManifestReference.manifest_id.in_(frontier),
                    ManifestReference.kind == "manifest",
                    Manifest.repository_id == repository_id,
                )
            )
        )
        frontier = [child for child in children if child not in manifest_ids]
        manifest_ids.update(frontier)
    manifest_bytes = session.scalar(select(func.sum(Manifest.size)).where(Manifest.id.in_(manifest_ids))) or 0
    blob_rows = session.execute(
        select(Blob.digest, Blob.size)
        .join(ManifestReference, ManifestReference.digest == Blob.digest)
        .where(ManifestReference.manifest_id.in_(manifest_ids), ManifestReference.kind == "blob")
        .distinct()
    ).all()
    total = manifest_bytes + sum(size for _, size in blob_rows)
    unique = manifest_bytes
    for digest, size in blob_rows:
        shared = session.scalar(
            select(func.count())
            .select_from(ManifestReference)
            .join(Manifest, Manifest.id == ManifestReference.manifest_id)
            .where(
                ManifestReference.digest == digest,
                ManifestReference.kind == "blob",
                Manifest.repository_id == repository_id,
                Manifest.id.not_in(manifest_ids),
            )
        )
        if not shared:
            unique += size
    return total, unique


__all__ = [
    "BuildRecord",
    "Conflict",
    "ControlStore",
    "CredentialRecord",
    "MetadataStore",
    "NotFound",
    "ProjectRecord",
    "TrustRecord",
    "build_record",
    "new_id",
]
