"""Registry metadata operations: the only place that knows the schema.

Every method is one short transaction. The HTTP layer calls them from a thread pool (they block), and a
PostgreSQL implementation later keeps the same methods. Integrity rules enforced here, inside the write
transaction so nothing can slip between check and commit:

* a blob is readable in a repository only through a ``repository_blobs`` link;
* a manifest is accepted only if every blob and child manifest it references is in that repository;
* a blob referenced by a manifest cannot be unlinked from the manifest's repository.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, case, delete, exists, func, literal, select, update
from sqlalchemy.orm import Session

from cargohold.clock import WallClock, utc_now
from cargohold.metadata.db import CONTENT_LOCK, Database, hold_lock, rowcount, upsert
from cargohold.metadata.errors import BlobInUse, ManifestInUse, MissingReferences, SizeMismatch, TooManyUploads
from cargohold.metadata.models import (
    Blob,
    Build,
    Manifest,
    ManifestReference,
    Project,
    Repository,
    RepositoryBlob,
    SaveTag,
    Tag,
    UploadSession,
    UTCDateTime,
)
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.manifest import ParsedManifest

IN_CHUNK = 500
"""Values per ``IN (…)`` list: far below SQLite's variable limit."""


def project_of(repository: str) -> str:
    """The project a repository belongs to: ``<project>`` and ``<project>/…`` are the project's."""
    return repository.split("/", 1)[0]


def build_tags(session: Session, project_id: str, names: Collection[str]) -> set[str]:
    """Which of ``names``, tags in the project's own repository, build retention governs.

    A build tag is a build's ID, ``<build>-<anything>`` for a build of the project (bake targets), or a
    save-tag: evicting the build removes exactly these (:mod:`cargohold.lifecycle.retention`). Every other tag,
    and every tag of a ``<project>/…`` repository, is governed by tag retention instead.
    """
    names = sorted(set(names))
    owners = sorted({name.split("-", 1)[0] for name in names})
    found: set[str] = set()
    held: set[str] = set()
    for start in range(0, len(owners), IN_CHUNK):
        chunk = owners[start : start + IN_CHUNK]
        found.update(session.scalars(select(Build.id).where(Build.project_id == project_id, Build.id.in_(chunk))))
    for start in range(0, len(names), IN_CHUNK):
        chunk = names[start : start + IN_CHUNK]
        held.update(
            session.scalars(select(SaveTag.tag).where(SaveTag.project_id == project_id, SaveTag.tag.in_(chunk)))
        )
    return {name for name in names if name.split("-", 1)[0] in found or name in held}


def tag_expiry(session: Session, repository: str, tags: Collection[str], now: datetime) -> dict[str, datetime | None]:
    """When each of ``tags``, pushed into ``repository`` at ``now``, expires (None: no expiry of its own).

    A tag pushed outside builds expires the project's retention period after this push; build tags and
    projects without a time limit (and repositories outside any project) get None.
    """
    project_id = project_of(repository)
    seconds = session.scalar(select(Project.retention_seconds).where(Project.id == project_id)) if tags else None
    if seconds is None:
        return dict.fromkeys(tags)
    owned = build_tags(session, project_id, tags) if repository == project_id else set()
    expires_at = now + timedelta(seconds=seconds)
    return {tag: None if tag in owned else expires_at for tag in tags}


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: str
    media_type: str
    payload: bytes
    subject_digest: str | None


@dataclass(frozen=True, slots=True)
class UploadRecord:
    id: str
    repository: str
    created_at: datetime
    credential_id: str | None = None


@dataclass(frozen=True, slots=True)
class PutResult:
    created: bool
    """False when the same digest was already stored in the repository (the PUT only (re)tagged it)."""


class MetadataTransaction:
    """The writes of :meth:`MetadataStore.transaction`, all in its one write transaction.

    On SQLite the transaction holds the database's write lock from its first statement (``BEGIN IMMEDIATE``),
    and garbage collection deletes content only under that lock too: whatever the caller does inside the
    block (a blob-store rename) is ordered against collection as one step.
    """

    def __init__(self, session: Session) -> None:
        self._session = session

    def link_blob(self, repository: str, digest: str, size: int) -> bool:
        """Record content of ``size`` bytes and make it readable in ``repository`` (idempotent); True if the
        content is new to the registry, False if another upload recorded it first (``RETURNING``, not the row
        count, which psycopg does not report for ``ON CONFLICT DO NOTHING``)."""
        now = utc_now()
        repository_id = MetadataStore._ensure_repository(self._session, repository)
        created = self._session.scalar(
            upsert(self._session, Blob)
            .values(digest=digest, size=size, created_at=now)
            .on_conflict_do_nothing(index_elements=["digest"])
            .returning(Blob.digest)
        )
        MetadataStore._link(self._session, repository_id, digest, now)
        return created is not None

    def delete_upload(self, upload_id: str) -> bool:
        """Forget an upload session; False if it was gone already."""
        result = self._session.execute(delete(UploadSession).where(UploadSession.id == upload_id))
        return bool(rowcount(result))


# The hot reads' statements, built once (see Database.read_one); parameters: repository, reference/digest.
_REPOSITORY_ID = select(Repository.id).where(Repository.name == bindparam("repository"))
_LINKED_BLOB = (
    select(Blob.size, RepositoryBlob.linked_at)
    .join(RepositoryBlob, RepositoryBlob.digest == Blob.digest)
    .join(Repository, Repository.id == RepositoryBlob.repository_id)
    .where(Repository.name == bindparam("repository"), Blob.digest == bindparam("digest"))
)


def _manifest_query(*columns: Any, by_digest: bool) -> Select[*tuple[Any, ...]]:
    query = (
        select(*columns)
        .join(Repository, Repository.id == Manifest.repository_id)
        .where(Repository.name == bindparam("repository"))
    )
    if by_digest:
        return query.where(Manifest.digest == bindparam("reference"))
    return query.join(Tag, Tag.manifest_id == Manifest.id).where(Tag.name == bindparam("reference"))


_MANIFEST_COLUMNS = (Manifest.digest, Manifest.media_type, Manifest.payload, Manifest.subject_digest)
_MANIFEST_BY_DIGEST = _manifest_query(*_MANIFEST_COLUMNS, by_digest=True)
_MANIFEST_BY_TAG = _manifest_query(*_MANIFEST_COLUMNS, by_digest=False)
_IDENTITY_BY_DIGEST = _manifest_query(Manifest.digest, Manifest.media_type, by_digest=True)
_IDENTITY_BY_TAG = _manifest_query(Manifest.digest, Manifest.media_type, by_digest=False)
_TAGS = (
    select(Tag.name)
    .join(Repository, Repository.id == Tag.repository_id)
    .where(Repository.name == bindparam("repository"))
    .order_by(Tag.name)
)


class MetadataStore:
    def __init__(self, db: Database, *, clock: WallClock = utc_now) -> None:
        self.db = db
        # The time of a manifest PUT, which retention counts from; injectable so tests can stand on boundaries.
        self.clock = clock

    # --- repositories -------------------------------------------------------------------------------------

    @staticmethod
    def _repository_id(session: Session, name: str) -> int | None:
        return session.scalar(select(Repository.id).where(Repository.name == name))

    @staticmethod
    def _ensure_repository(session: Session, name: str) -> int:
        session.execute(
            upsert(session, Repository)
            .values(name=name, created_at=utc_now())
            .on_conflict_do_nothing(index_elements=["name"])
        )
        repository_id = session.scalar(select(Repository.id).where(Repository.name == name))
        assert repository_id is not None
        return repository_id

    def repository_exists(self, name: str) -> bool:
        return self.db.read_one(_REPOSITORY_ID, {"repository": name}) is not None

    def list_repositories(self, *, last: str | None, limit: int | None) -> list[str]:
        with self.db.read() as session:
            query = select(Repository.name).order_by(Repository.name)
            if last:
                query = query.where(Repository.name > last)
            if limit is not None:
                query = query.limit(limit)
            return list(session.scalars(query))

    # --- blobs --------------------------------------------------------------------------------------------

    def linked_blob_size(self, repository: str, digest: str) -> int | None:
        """Size of ``digest`` if the repository may read it, else None."""
        with self.db.read() as session:
            return session.scalar(
                select(Blob.size)
                .join(RepositoryBlob, RepositoryBlob.digest == Blob.digest)
                .join(Repository, Repository.id == RepositoryBlob.repository_id)
                .where(Repository.name == repository, Blob.digest == digest)
            )

    def linked_blob(self, repository: str, digest: str) -> tuple[int, datetime] | None:
        """``(size, linked_at)`` if the repository may read ``digest``: the blob GET path's one read."""
        row = self.db.read_one(_LINKED_BLOB, {"repository": repository, "digest": digest})
        return (row[0], row[1]) if row else None

    def touch_link(self, repository: str, digest: str, older_than: datetime) -> bool:
        """Refresh a link's ``linked_at`` if it is older than ``older_than``; False if the link is gone.

        A client that HEADs a blob and then skips uploading it relies on the link surviving until its
        manifest PUT; refreshing restarts the garbage collector's grace window. Runs in a write
        transaction, so it is ordered against GC's unlinking: True means the link exists and is fresh.
        """
        with self.db.write() as session:
            repository_id = self._repository_id(session, repository)
            if repository_id is None:
                return False
            link = (RepositoryBlob.repository_id == repository_id) & (RepositoryBlob.digest == digest)
            result = session.execute(
                update(RepositoryBlob).where(link, RepositoryBlob.linked_at < older_than).values(linked_at=utc_now())
            )
            if rowcount(result):
                return True
            return bool(session.scalar(select(exists().where(link))))

    def link_blob(self, repository: str, digest: str, size: int) -> None:
        """Record content and make it readable in ``repository`` (idempotent), in a transaction of its own."""
        with self.transaction() as transaction:
            transaction.link_blob(repository, digest, size)

    @contextmanager
    def transaction(self) -> Iterator[MetadataTransaction]:
        """One write transaction for several changes that must land together, e.g. an upload's commit:
        link the blob, drop the session, and (between the two, while the write lock is held) move the bytes
        into the content store. Everything commits when the block ends, or nothing does if it raises."""
        with self.db.write() as session:
            hold_lock(session, CONTENT_LOCK, shared=True)
            yield MetadataTransaction(session)

    @staticmethod
    def _link(session: Session, repository_id: int, digest: str, now: datetime) -> None:
        statement = upsert(session, RepositoryBlob).values(repository_id=repository_id, digest=digest, linked_at=now)
        session.execute(
            statement.on_conflict_do_update(index_elements=["repository_id", "digest"], set_={"linked_at": now})
        )

    def mount_blob(self, repository: str, source: str, digest: str) -> int | None:
        """Link ``digest`` into ``repository`` if ``source`` may read it; returns its size or None."""
        now = utc_now()
        with self.db.write() as session:
            hold_lock(session, CONTENT_LOCK, shared=True)
            size = session.scalar(
                select(Blob.size)
                .join(RepositoryBlob, RepositoryBlob.digest == Blob.digest)
                .join(Repository, Repository.id == RepositoryBlob.repository_id)
                .where(Repository.name == source, Blob.digest == digest)
            )
            if size is None:
                return None
            repository_id = self._ensure_repository(session, repository)
            self._link(session, repository_id, digest, now)
            return size

    def unlink_blob(self, repository: str, digest: str) -> bool:
        """Remove ``digest`` from ``repository``; raises :class:`BlobInUse` if a manifest there needs it."""
        with self.db.write() as session:
            hold_lock(session, CONTENT_LOCK)  # ordered against a manifest PUT's reference check
            repository_id = self._repository_id(session, repository)
            if repository_id is None:
                return False
            in_use = session.scalar(
                select(
                    exists()
                    .where(ManifestReference.digest == digest, ManifestReference.kind == "blob")
                    .where(ManifestReference.manifest_id == Manifest.id, Manifest.repository_id == repository_id)
                )
            )
            if in_use:
                raise BlobInUse(digest)
            result = session.execute(
                delete(RepositoryBlob).where(
                    RepositoryBlob.repository_id == repository_id, RepositoryBlob.digest == digest
                )
            )
            return bool(rowcount(result))

    # --- upload sessions ----------------------------------------------------------------------------------

    def create_upload(
        self,
        repository: str,
        upload_id: str,
        *,
        credential_id: str | None = None,
        max_open: int = 0,
        active_since: datetime | None = None,
        now: datetime | None = None,
    ) -> None:
        """Record a new session opened by ``credential_id``.

        With ``max_open`` > 0, refuse with :class:`TooManyUploads` when the credential already has that many
        sessions touched at or after ``active_since`` (older ones have expired, even if the purge has not run
        yet). Counting and inserting share the write transaction, so parallel requests cannot overshoot.
        """
        now = now or utc_now()
        with self.db.write() as session:
            if credential_id is not None and max_open > 0:
                hold_lock(session, f"cargohold:uploads:{credential_id}")
                query = (
                    select(func.count()).select_from(UploadSession).where(UploadSession.credential_id == credential_id)
                )
                if active_since is not None:
                    query = query.where(UploadSession.updated_at >= active_since)
                open_sessions = session.scalar(query) or 0
                if open_sessions >= max_open:
                    raise TooManyUploads(open_sessions)
            repository_id = self._ensure_repository(session, repository)
            session.add(
                UploadSession(
                    id=upload_id,
                    repository_id=repository_id,
                    created_at=now,
                    updated_at=now,
                    credential_id=credential_id,
                )
            )

    def get_upload(self, upload_id: str) -> UploadRecord | None:
        with self.db.read() as session:
            row = session.execute(
                select(UploadSession.id, Repository.name, UploadSession.created_at, UploadSession.credential_id)
                .join(Repository, Repository.id == UploadSession.repository_id)
                .where(UploadSession.id == upload_id)
            ).first()
            return UploadRecord(row[0], row[1], row[2], row[3]) if row else None

    def touch_upload(self, upload_id: str) -> None:
        with self.db.write() as session:
            session.execute(update(UploadSession).where(UploadSession.id == upload_id).values(updated_at=utc_now()))

    def delete_upload(self, upload_id: str) -> bool:
        with self.transaction() as transaction:
            return transaction.delete_upload(upload_id)

    def stale_uploads(self, older_than: datetime) -> list[str]:
        with self.db.read() as session:
            return list(session.scalars(select(UploadSession.id).where(UploadSession.updated_at < older_than)))

    def upload_ids(self) -> set[str]:
        with self.db.read() as session:
            return set(session.scalars(select(UploadSession.id)))

    # --- manifests and tags -------------------------------------------------------------------------------

    def put_manifest(
        self,
        repository: str,
        digest: str,
        payload: bytes,
        parsed: ParsedManifest,
        tags: Iterable[str] = (),
    ) -> PutResult:
        """Store a manifest (and point ``tags`` at it) after checking every reference, atomically."""
        now = self.clock()
        tags = list(tags)
        with self.db.write() as session:
            # Shared with other pushes; garbage collection cannot unlink what the check below finds until commit.
            hold_lock(session, CONTENT_LOCK, shared=True)
            repository_id = self._ensure_repository(session, repository)
            self._check_references(session, repository_id, parsed)
            manifest_id = session.scalar(
                select(Manifest.id).where(Manifest.repository_id == repository_id, Manifest.digest == digest)
            )
            created = manifest_id is None
            if manifest_id is not None:
                # A push refreshes the manifest even when its bytes were already here (retention counts from it).
                session.execute(update(Manifest).where(Manifest.id == manifest_id).values(pushed_at=now))
            else:
                manifest = Manifest(
                    repository_id=repository_id,
                    digest=digest,
                    media_type=parsed.media_type,
                    artifact_type=parsed.artifact_type,
                    subject_digest=str(parsed.subject.digest) if parsed.subject else None,
                    annotations=json.dumps(parsed.annotations) if parsed.annotations else None,
                    size=len(payload),
                    payload=payload,
                    created_at=now,
                    pushed_at=now,
                )
                manifest.references = [
                    *(ManifestReference(digest=str(d.digest), kind="blob") for d in _unique(parsed.blobs)),
                    *(ManifestReference(digest=str(d.digest), kind="manifest") for d in _unique(parsed.children)),
                ]
                session.add(manifest)
                session.flush()
                manifest_id = manifest.id
            for tag, expires_at in tag_expiry(session, repository, tags, now).items():
                statement = upsert(session, Tag).values(
                    repository_id=repository_id,
                    name=tag,
                    manifest_id=manifest_id,
                    updated_at=now,
                    expires_at=expires_at,
                )
                session.execute(
                    statement.on_conflict_do_update(
                        index_elements=["repository_id", "name"],
                        set_={"manifest_id": manifest_id, "updated_at": now, "expires_at": _no_earlier(expires_at)},
                    )
                )
            return PutResult(created=created)

    @staticmethod
    def _check_references(session: Session, repository_id: int, parsed: ParsedManifest) -> None:
        missing: list[str] = []
        wanted_blobs = {str(d.digest): d for d in parsed.blobs}
        if wanted_blobs:
            rows = session.execute(
                select(Blob.digest, Blob.size)
                .join(RepositoryBlob, RepositoryBlob.digest == Blob.digest)
                .where(RepositoryBlob.repository_id == repository_id, Blob.digest.in_(list(wanted_blobs)))
            ).all()
            found = {digest: size for digest, size in rows}
            for digest, descriptor in wanted_blobs.items():
                if digest not in found:
                    missing.append(digest)
                elif found[digest] != descriptor.size:
                    raise SizeMismatch(
                        f"descriptor for {digest} says {descriptor.size} bytes, the blob has {found[digest]}"
                    )
        wanted_children = {str(d.digest) for d in parsed.children}
        if wanted_children:
            present = set(
                session.scalars(
                    select(Manifest.digest).where(
                        Manifest.repository_id == repository_id, Manifest.digest.in_(list(wanted_children))
                    )
                )
            )
            missing.extend(sorted(wanted_children - present))
        if missing:
            raise MissingReferences(missing)

    def get_manifest(self, repository: str, reference: str, *, by_digest: bool) -> StoredManifest | None:
        query = _MANIFEST_BY_DIGEST if by_digest else _MANIFEST_BY_TAG
        row = self.db.read_one(query, {"repository": repository, "reference": reference})
        return StoredManifest(row[0], row[1], bytes(row[2]), row[3]) if row else None

    def manifest_identity(self, repository: str, reference: str, *, by_digest: bool) -> tuple[str, str] | None:
        """``(digest, media type)`` of the manifest a tag points at, or of the digest if that manifest is in the
        repository: one indexed read without the manifest's bytes (the check before serving cached ones)."""
        query = _IDENTITY_BY_DIGEST if by_digest else _IDENTITY_BY_TAG
        row = self.db.read_one(query, {"repository": repository, "reference": reference})
        return (str(row[0]), str(row[1])) if row else None

    def delete_manifest(self, repository: str, digest: str) -> bool:
        """Delete a manifest and every tag pointing at it."""
        with self.db.write() as session:
            hold_lock(session, CONTENT_LOCK)  # ordered against a push of an index referencing it
            repository_id = self._repository_id(session, repository)
            if repository_id is None:
                return False
            return self.delete_manifest_in(session, repository_id, digest)

    @staticmethod
    def delete_manifest_in(session: Session, repository_id: int, digest: str) -> bool:
        """:meth:`delete_manifest` inside the caller's write transaction (raises :class:`ManifestInUse`)."""
        manifest_id = session.scalar(
            select(Manifest.id).where(Manifest.repository_id == repository_id, Manifest.digest == digest)
        )
        if manifest_id is None:
            return False
        parent = session.scalar(
            select(Manifest.digest)
            .join(ManifestReference, ManifestReference.manifest_id == Manifest.id)
            .where(
                Manifest.repository_id == repository_id,
                ManifestReference.digest == digest,
                ManifestReference.kind == "manifest",
            )
            .limit(1)
        )
        if parent is not None:
            raise ManifestInUse(parent)
        session.execute(delete(Tag).where(Tag.manifest_id == manifest_id))
        session.execute(delete(ManifestReference).where(ManifestReference.manifest_id == manifest_id))
        session.execute(delete(Manifest).where(Manifest.id == manifest_id))
        return True

    def delete_tag(self, repository: str, tag: str) -> bool:
        with self.db.write() as session:
            repository_id = self._repository_id(session, repository)
            if repository_id is None:
                return False
            result = session.execute(delete(Tag).where(Tag.repository_id == repository_id, Tag.name == tag))
            return bool(rowcount(result))

    def list_tags(self, repository: str, *, last: str | None, limit: int | None) -> list[str] | None:
        """Tags in lexical order after ``last``; None if the repository does not exist.

        One statement when there are tags to list; only an empty page asks whether the repository exists.
        """
        query = _TAGS.where(Tag.name > last) if last else _TAGS
        if limit is not None:
            query = query.limit(limit)
        tags = [str(row[0]) for row in self.db.read_rows(query, {"repository": repository})]
        if not tags and not self.repository_exists(repository):
            return None
        return tags

    def referrers(self, repository: str, subject: str, artifact_type: str | None) -> list[Descriptor]:
        """Descriptors of manifests in ``repository`` whose ``subject`` is ``subject``."""
        with self.db.read() as session:
            query = (
                select(
                    Manifest.media_type,
                    Manifest.digest,
                    Manifest.size,
                    Manifest.artifact_type,
                    Manifest.annotations,
                )
                .join(Repository, Repository.id == Manifest.repository_id)
                .where(Repository.name == repository, Manifest.subject_digest == subject)
                .order_by(Manifest.created_at, Manifest.id)
            )
            if artifact_type is not None:
                query = query.where(Manifest.artifact_type == artifact_type)
            return [
                Descriptor(
                    media_type=row.media_type,
                    digest=Digest.parse(row.digest),
                    size=row.size,
                    artifact_type=row.artifact_type,
                    annotations=json.loads(row.annotations) if row.annotations else None,
                )
                for row in session.execute(query)
            ]

    def build_reachable(
        self, repository: str, build_id: str, extra_tags: Iterable[str] = ()
    ) -> tuple[set[str], set[str]]:
        """What a pull credential narrowed to one build may read: ``(manifest references, blob digests)``.

        Starts from the build's tags (``<build>``, bake targets ``<build>-<target>``, and ``extra_tags``: the
        save-tags the build holds), follows index
        children and referrers (signatures, SBOMs) of everything reached, and collects their blobs.
        """
        with self.db.read() as session:
            repository_id = self._repository_id(session, repository)
            if repository_id is None:
                return set(), set()
            rows = session.execute(
                select(Tag.name, Manifest.id, Manifest.digest)
                .join(Manifest, Manifest.id == Tag.manifest_id)
                .where(
                    Tag.repository_id == repository_id,
                    (Tag.name == build_id)
                    | Tag.name.startswith(f"{build_id}-", autoescape=True)
                    | Tag.name.in_(list(extra_tags)),
                )
            ).all()
            references = {name for name, _, _ in rows}
            seen: dict[int, str] = {manifest_id: digest for _, manifest_id, digest in rows}
            frontier = list(seen.items())
            while frontier:
                digests = [digest for _, digest in frontier]
                ids = [manifest_id for manifest_id, _ in frontier]
                found = session.execute(
                    select(Manifest.id, Manifest.digest).where(
                        Manifest.repository_id == repository_id,
                        (
                            Manifest.digest.in_(
                                select(ManifestReference.digest).where(
                                    ManifestReference.manifest_id.in_(ids), ManifestReference.kind == "manifest"
                                )
                            )
                        )
                        | Manifest.subject_digest.in_(digests),
                    )
                ).all()
                frontier = [(manifest_id, digest) for manifest_id, digest in found if manifest_id not in seen]
                seen.update(frontier)
            blobs = set(
                session.scalars(
                    select(ManifestReference.digest).where(
                        ManifestReference.manifest_id.in_(list(seen)), ManifestReference.kind == "blob"
                    )
                )
            )
            return references | set(seen.values()), blobs

    def count_manifests(self, repository: str) -> int:
        with self.db.read() as session:
            return (
                session.scalar(
                    select(func.count(Manifest.id))
                    .join(Repository, Repository.id == Manifest.repository_id)
                    .where(Repository.name == repository)
                )
                or 0
            )


def _no_earlier(expires_at: datetime | None) -> Any:
    """SQL for a re-pushed tag's expiry: ``expires_at``, or the current one if that is later (an extension
    survives a push; None, for build tags and unlimited retention, always wins)."""
    if expires_at is None:
        return None
    pushed = literal(expires_at, UTCDateTime())
    return case((Tag.expires_at > pushed, Tag.expires_at), else_=pushed)


def _unique(descriptors: list[Descriptor]) -> list[Descriptor]:
    seen: dict[str, Descriptor] = {}
    for descriptor in descriptors:
        seen.setdefault(str(descriptor.digest), descriptor)
    return list(seen.values())
