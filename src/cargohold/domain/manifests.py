"""Manifests in a repository: put, get, delete, referrers, tags. The invariants, and where each is enforced:

* **Stored exactly as pushed.** A manifest's digest is its identity, so its bytes are never re-serialised;
  a PUT by digest must hash to that digest.
* **References are present.** A manifest is accepted only if every blob and child manifest it references is
  in the same repository, with the sizes its descriptors claim: checked by
  :meth:`~cargohold.metadata.store.MetadataStore.put_manifest` *inside the write transaction that stores it*,
  so garbage collection (which unlinks under the same write lock) cannot remove a reference in between.
* **Tag retention.** A tag pushed outside builds gets its project's expiry in that transaction too (and a
  later expiry survives a re-push; see :mod:`cargohold.lifecycle.tag_retention`).
* **Deleting a build's image evicts the build** (:mod:`cargohold.lifecycle.registry_delete`), in the write
  transaction that deletes the manifest, so no saved build ever points at nothing; a manifest an index still
  lists cannot be deleted.
* **A missing tag says why.** When lifecycle removed it, the audit log's reason is the answer, not a bare 404.
* **Cached bytes are never served for a manifest that is gone.** Manifest bytes are immutable, so a GET keeps
  them in a bounded in-memory cache (:class:`ManifestCache`, per process); but every GET first asks the
  database, in one indexed read without the bytes, whether the tag or digest still names that manifest in the
  repository. A delete acknowledged by any process (another worker, a retention sweep) is therefore seen by
  the next GET everywhere, and a cache only ever saves the bytes' transfer.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

from cargohold.domain import errors
from cargohold.domain.threads import Runner
from cargohold.lifecycle import audit, registry_delete
from cargohold.lifecycle.metering import Metering
from cargohold.lifecycle.retention import Retention
from cargohold.metadata.errors import ManifestInUse, MissingReferences, SizeMismatch
from cargohold.metadata.store import MetadataStore, StoredManifest
from cargohold.oci.digest import Digest
from cargohold.oci.manifest import ManifestInvalid, parse_manifest
from cargohold.oci.reference import is_valid_tag

log = logging.getLogger(__name__)

TAG_RULE = "up to 128 letters, digits, '_', '.', '-', not starting with '.' or '-'"


@dataclass(frozen=True, slots=True)
class PushedManifest:
    """What a manifest PUT stored."""

    digest: Digest
    subject: Digest | None
    """The manifest's ``subject`` (it is a referrer of that manifest), or None."""
    tags: list[str]


def unknown_manifest(reference: str) -> errors.NotFound:
    return errors.NotFound(
        f"manifest {reference} is not known to this repository", subject="manifest", detail={"reference": reference}
    )


MANIFEST_CACHE_BYTES = 32 * 1024 * 1024
"""Manifest bytes one process keeps (a typical manifest or index is 0.5-10 KiB: thousands of them)."""
MANIFEST_CACHE_LARGEST = 256 * 1024
"""Larger manifests (rare, and cheap to read next to their transfer time) are never cached."""


class ManifestCache:
    """Stored manifests by ``(repository, digest)``, least recently used first out, bounded by total bytes.

    Only ever consulted after the database said the manifest exists (see the module docstring), and only
    touched from the event loop's thread.
    """

    def __init__(self, max_bytes: int = MANIFEST_CACHE_BYTES, largest: int = MANIFEST_CACHE_LARGEST) -> None:
        self.max_bytes = max_bytes
        self.largest = largest
        self.size = 0
        self._entries: OrderedDict[tuple[str, str], StoredManifest] = OrderedDict()

    def get(self, repository: str, digest: str, media_type: str) -> StoredManifest | None:
        entry = self._entries.get((repository, digest))
        if entry is None or entry.media_type != media_type:  # a re-push may have stored it with another type
            return None
        self._entries.move_to_end((repository, digest))
        return entry

    def put(self, repository: str, manifest: StoredManifest) -> None:
        if len(manifest.payload) > self.largest:
            return
        self.discard(repository, manifest.digest)
        self._entries[(repository, manifest.digest)] = manifest
        self.size += len(manifest.payload)
        while self.size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.size -= len(evicted.payload)

    def discard(self, repository: str, digest: str) -> None:
        entry = self._entries.pop((repository, digest), None)
        if entry is not None:
            self.size -= len(entry.payload)

    def __len__(self) -> int:
        return len(self._entries)


class Manifests:
    """Manifest operations of one server process (see the module docstring for the rules they keep)."""

    def __init__(self, metadata: MetadataStore, run: Runner) -> None:
        self.metadata = metadata
        self.run = run
        self.cache = ManifestCache()
        self.retention: Retention | None = None
        """With lifecycle (always, in a served app): deletes evict the builds they hit, and missing tags are
        explained from the audit log."""
        self.metering: Metering | None = None

    def with_lifecycle(self, retention: Retention, metering: Metering) -> None:
        self.retention, self.metering = retention, metering

    async def get(self, repository: str, reference: str, *, by_digest: bool) -> StoredManifest:
        """The manifest ``reference`` (a canonical digest, or a tag) of ``repository``; :class:`NotFound` if none.

        A tag that retention removed gets its reason ("build X expired on ..."), not a bare not-found.
        """
        if self.metadata.db.reads_inline:
            identity = self.metadata.manifest_identity(repository, reference, by_digest=by_digest)
        else:
            identity = await self.run(self.metadata.manifest_identity, repository, reference, by_digest=by_digest)
        if identity is not None:
            digest, media_type = identity
            cached = self.cache.get(repository, digest, media_type)
            if cached is not None:
                return cached
            manifest = await self.run(self.metadata.get_manifest, repository, digest, by_digest=True)
            if manifest is not None:
                self.cache.put(repository, manifest)
                return manifest
            # Deleted between the two reads: as missing as if it had gone before the first.
        if by_digest or self.retention is None:
            raise unknown_manifest(reference)
        explained = await self.run(audit.explain_missing, self.metadata.db, repository, reference)
        if explained is None:
            raise unknown_manifest(reference)
        raise errors.NotFound(explained, subject="manifest", detail={"reference": reference, "reason": explained})

    async def put(
        self,
        repository: str,
        payload: bytes,
        content_type: str | None,
        *,
        digest: Digest | None = None,
        tags: list[str],
    ) -> PushedManifest:
        """Store ``payload`` (by ``digest`` when the URL named one, else as the tag in ``tags``) after checking
        it parses and that every reference is present, atomically with pointing ``tags`` at it."""
        try:
            parsed = parse_manifest(payload, content_type)
        except ManifestInvalid as exc:
            raise errors.Invalid(str(exc), subject="manifest") from None
        if digest is not None:
            actual = Digest.of(payload, digest.algorithm)
            if actual != digest:
                raise errors.Invalid(
                    f"manifest body has digest {actual}, not {digest} named in the URL",
                    subject="digest",
                    detail={"expected": str(digest), "actual": str(actual)},
                )
            bad = [tag for tag in tags if not is_valid_tag(tag)]
            if bad:
                raise errors.Invalid(
                    f"tag {bad[0][:200]!r} in ?tag= is invalid: {TAG_RULE}",
                    subject="manifest",
                    detail={"tag": bad[0][:300]},
                )
        else:
            digest = Digest.of(payload)
        try:
            await self.run(self.metadata.put_manifest, repository, str(digest), payload, parsed, tags)
        except MissingReferences as exc:
            kind = "child manifests or blobs" if parsed.is_index else "blobs"
            raise errors.UnknownReferences(
                f"manifest references {kind} not present in {repository}: {', '.join(exc.missing)}; push them first",
                missing=exc.missing,
            ) from None
        except SizeMismatch as exc:
            raise errors.Invalid(str(exc), subject="manifest") from None
        return PushedManifest(digest, parsed.subject.digest if parsed.subject is not None else None, tags)

    async def delete(self, repository: str, reference: str, *, by_digest: bool, actor: str) -> None:
        """Delete the manifest ``reference`` (a digest: the manifest and its tags; a tag: that tag), evicting
        the saved builds whose image it is (see :mod:`cargohold.lifecycle.registry_delete`)."""
        try:
            removed = await self._delete(repository, reference, by_digest=by_digest, actor=actor)
        except ManifestInUse as exc:
            raise errors.InUse(
                f"manifest {reference} is part of index {exc.parent} in {repository}; delete the index first",
                subject="manifest",
                detail={"reference": reference, "index": exc.parent},
            ) from None
        if by_digest:  # not needed for correctness (GETs check the database first), but the memory is free
            self.cache.discard(repository, reference)
        if not removed:
            raise unknown_manifest(reference)

    async def _delete(self, repository: str, reference: str, *, by_digest: bool, actor: str) -> bool:
        retention, metering = self.retention, self.metering
        if retention is None or metering is None:
            if by_digest:
                return await self.run(self.metadata.delete_manifest, repository, reference)
            return await self.run(self.metadata.delete_tag, repository, reference)
        deletion = await self.run(
            registry_delete.delete_reference,
            self.metadata.db,
            retention,
            repository,
            reference,
            by_digest=by_digest,
            actor=actor,
        )
        if deletion.evicted:
            await self.run(metering.refresh, [repository])
            log.info(
                "%s deleted %s@%s through /v2/, evicting build(s) %s",
                actor,
                repository,
                reference,
                ", ".join(e.build_id for e in deletion.evicted),
            )
        return deletion.removed


__all__ = ["TAG_RULE", "Manifests", "PushedManifest", "unknown_manifest"]
