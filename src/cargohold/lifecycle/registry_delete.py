"""Deleting manifests through ``/v2/`` without leaving a build that points at nothing.

A credential holding ``delete`` may run ``skopeo delete``/``crane delete``/``regctl`` against a project. When
what it deletes is a saved build's image, the build is evicted in the same write transaction, exactly like
``DELETE /api/v1/builds/{id}``: rule ``manual``, the caller as actor, an audit entry (with ``"via":
"registry"``) and the reason a later pull of the build's tags is given. Which deletes hit a build:

* by digest: the manifest (or a bake target's manifest) of saved builds of that project — every build that
  shares the digest goes, since its image is gone;
* by tag: the build-ID tag ``<build>`` or a target tag ``<build>-<target>`` of a saved build.

Deleting a save-tag (``latest``, ``main``) removes only the tag and the build's claim on it; the build keeps
its image. Tags of builds that are not saved yet are deleted plainly (saving then says the image is
missing). Deleting a manifest an index still lists is refused (``ManifestInUse``) and nothing is evicted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from cargohold.lifecycle.retention import Eviction, Retention
from cargohold.metadata.db import CONTENT_LOCK, Database, hold_lock, rowcount
from cargohold.metadata.models import Build, Repository, SaveTag, Tag
from cargohold.metadata.store import MetadataStore

VIA = {"via": "registry"}


@dataclass(frozen=True, slots=True)
class ManifestDeletion:
    removed: bool
    """Whether anything named by the request existed (else the route answers MANIFEST_UNKNOWN)."""
    evicted: list[Eviction] = field(default_factory=list)


def delete_reference(
    db: Database, retention: Retention, repository: str, reference: str, *, by_digest: bool, actor: str
) -> ManifestDeletion:
    """Delete ``repository``'s manifest ``reference`` (a digest, or a tag) and evict the builds it was."""
    with db.write() as session:
        hold_lock(session, CONTENT_LOCK)  # removes manifests: ordered against pushes referencing them
        repository_id = session.scalar(select(Repository.id).where(Repository.name == repository))
        if repository_id is None:
            return ManifestDeletion(False)
        builds = _builds_of(session, repository, reference, by_digest=by_digest)
        evicted = retention.evict_in(session, builds, actor, detail=VIA) if builds else []
        if by_digest:
            removed = MetadataStore.delete_manifest_in(session, repository_id, reference)
        else:
            session.execute(delete(SaveTag).where(SaveTag.project_id == repository, SaveTag.tag == reference))
            result = session.execute(delete(Tag).where(Tag.repository_id == repository_id, Tag.name == reference))
            removed = bool(rowcount(result))
    retention.notify(evicted)
    return ManifestDeletion(removed or bool(evicted), evicted)


def _builds_of(session: Session, project_id: str, reference: str, *, by_digest: bool) -> list[str]:
    """Saved builds of ``project_id`` whose image the reference is (builds live in the project's own repository)."""
    saved = select(Build.id, Build.targets).where(Build.project_id == project_id, Build.status == "saved")
    if by_digest:
        query = saved.where(or_(Build.manifest_digest == reference, Build.targets.contains(f'"{reference}"')))
        return [build_id for build_id, _ in session.execute(query)]
    if session.get(SaveTag, (project_id, reference)) is not None:
        return []  # a save-tag: only the tag goes
    build_id, _, target = reference.partition("-")
    row = session.execute(saved.where(Build.id == build_id)).first()
    if row is None:
        return []
    if not target:
        return [build_id]
    targets = row.targets or ""
    return [build_id] if f'"{target}"' in targets else []
