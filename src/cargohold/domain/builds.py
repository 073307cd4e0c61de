"""Builds: create, save, fail, save-tags, pin/unpin/extend, evict — and the one way a build is rendered.

A build is a row in the control tables *and* an image in the registry (``<project>:<build>``, bake targets
``<project>:<build>-<target>``). The rules that span both are kept here and in the stores' transactions:

* **Saving** reads the image as the registry stores it (never what the client claims): its digest, media type
  and sizes come from the tag in the same write transaction that marks the build saved
  (:meth:`~cargohold.metadata.control.ControlStore.mark_saved`); its platforms from the stored manifest and
  image config. After a save the project's build cap is enforced and its storage re-measured.
* **Lineage and retention**: saved builds expire, are capped and are evicted by
  :mod:`cargohold.lifecycle.retention`; a person may pin, unpin, extend or evict one now.
* **Rendering** is not here: the control plane writes a build as :class:`cargohold.schemas.Build`
  (:func:`cargohold.server.control.render.build`), the one shape of a build, whichever route answers with one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from cargohold.domain import errors
from cargohold.domain.space import SpaceMonitor
from cargohold.domain.threads import Runner
from cargohold.lifecycle.retention import BuildNotFound, Eviction, LifecycleError, Retention
from cargohold.metadata.control import BuildRecord, Conflict, ControlStore, NotFound
from cargohold.metadata.store import MetadataStore
from cargohold.oci import mediatypes as mt
from cargohold.oci import strictjson
from cargohold.oci.digest import Digest, DigestError
from cargohold.storage.base import BlobStore, UnknownUpload
from cargohold.storage.faults import classify

log = logging.getLogger(__name__)

BUILD_STATUSES = ("pending", "saved", "failed")
"""Every status a build has (the filters of the builds list accept these)."""
MAX_ID_SEARCH = 40
"""Longest text searched for in build IDs."""

MAX_CONFIG_READ = 4 * 1024**2
"""Largest image config read to find a build's platform."""


class Builds:
    """Build operations of one server process (see the module docstring)."""

    def __init__(
        self,
        control: ControlStore,
        metadata: MetadataStore,
        blobs: BlobStore,
        run: Runner,
        *,
        space: SpaceMonitor | None = None,
    ) -> None:
        self.control = control
        self.metadata = metadata
        self.blobs = blobs
        self.run = run
        self.space = space
        self.retention: Retention | None = None
        self.after_save: Callable[[str], object] | None = None
        """Blocking, with the project's ID, right after a save: enforce the build cap, re-measure storage."""
        self.after_evict: Callable[[list[str]], object] | None = None
        """Blocking, with the projects whose builds were evicted: re-measure their storage."""

    def with_lifecycle(
        self, retention: Retention, after_save: Callable[[str], object], after_evict: Callable[[list[str]], object]
    ) -> None:
        self.retention, self.after_save, self.after_evict = retention, after_save, after_evict

    # --- reading ------------------------------------------------------------------------------------------

    async def get(self, build_id: str) -> BuildRecord | None:
        return await self.run(self.control.get_build, build_id)

    async def find_by_tag(self, project_id: str, tag: str) -> BuildRecord | None:
        """The build ``tag`` names in the project: its ID, or a save-tag it holds."""
        return await self.run(self.control.find_build_by_tag, project_id, tag)

    async def list_page(
        self,
        project_id: str,
        *,
        limit: int,
        before: str | None = None,
        tag: str | None = None,
        status: str | None = None,
        pinned: bool | None = None,
        id_contains: str | None = None,
    ) -> list[BuildRecord]:
        """Newest first; ``before`` is the last build of the previous page; the rest filter."""
        try:
            return await self.run(
                lambda: self.control.list_builds(
                    project_id,
                    limit=limit,
                    before=before,
                    tag=tag,
                    status=status,
                    pinned=pinned,
                    id_contains=id_contains,
                )
            )
        except NotFound as exc:
            raise errors.Invalid(str(exc), subject="build") from None

    # --- changing -----------------------------------------------------------------------------------------

    async def create(
        self, project_id: str, *, provenance: dict[str, Any] | None, created_by: str, request_key: str | None
    ) -> BuildRecord:
        """A new pending build (or, for a repeated ``request_key``, the build the first request created)."""
        try:
            return await self.run(
                self.control.create_build,
                project_id,
                provenance=provenance,
                created_by=created_by,
                request_key=request_key,
            )
        except Conflict as exc:
            raise errors.Conflict(str(exc), subject="build") from None
        except NotFound as exc:
            raise errors.NotFound(str(exc), subject="project") from None

    async def save(self, build: BuildRecord, *, save_tags: list[str], targets: list[str]) -> BuildRecord:
        """Mark ``build`` saved from its image in the registry; then enforce its project's cap."""
        saved = await self.run(self._save, build, save_tags, targets)
        if self.after_save is not None:
            try:
                await self.run(self.after_save, build.project_id)
            except Exception as exc:
                # The build is saved already; on a full disk the cap and the metering catch up at the next sweep.
                if (fault := classify(exc)) is None:
                    raise
                if self.space is not None:
                    self.space.on_fault(fault)
                log.warning("after saving build %s: enforcing the cap failed: %s", build.id, fault.describe())
            reread = await self.run(self.control.get_build, build.id)
            saved = reread if reread is not None else saved
        return saved

    def _save(self, build: BuildRecord, save_tags: list[str], targets: list[str]) -> BuildRecord:
        stored = self.metadata.get_manifest(build.project_id, build.id, by_digest=False)
        if stored is None:
            raise errors.Conflict(
                f"{build.project_id}:{build.id} is not in the registry; push the image with that tag, then save",
                subject="build",
            )
        platforms = self._platforms_of(stored.payload, stored.media_type)
        target_digests: dict[str, str] = {}
        for target in targets:
            found = self.metadata.get_manifest(build.project_id, f"{build.id}-{target}", by_digest=False)
            if found is None:
                raise errors.Conflict(f"target {target}: push {build.project_id}:{build.id}-{target} first")
            target_digests[target] = found.digest
        try:
            return self.control.mark_saved(build.id, platforms=platforms, targets=target_digests, save_tags=save_tags)
        except Conflict as exc:
            raise errors.Conflict(str(exc), subject="build") from None

    def _platforms_of(self, payload: bytes, media_type: str) -> list[str]:
        """Platforms of a saved image, read from the stored manifest (never from what the client claims).

        The registry accepts any config blob and (before manifest validation checked it) any ``platform``
        value, so whatever cannot be read as a platform is skipped: the build is saved with fewer platforms
        (none, for an image whose config is not a JSON object) rather than failing.
        """
        try:
            body = strictjson.loads(payload)
        except strictjson.JsonInvalid:
            return []
        if not isinstance(body, dict):
            return []
        if media_type in mt.INDEXES:
            found: list[str] = []
            entries = body.get("manifests")
            for entry in entries if isinstance(entries, list) else []:
                text = platform_text(entry.get("platform")) if isinstance(entry, dict) else None
                if text and text != "unknown/unknown" and text not in found:
                    found.append(text)
            return found
        config = body.get("config")
        if not isinstance(config, dict) or config.get("mediaType") not in (mt.OCI_CONFIG, mt.DOCKER_CONFIG):
            return []
        size = config.get("size")
        if not isinstance(size, int) or size > MAX_CONFIG_READ:
            return []
        try:
            digest = Digest.parse(config.get("digest"))
            image_config = strictjson.loads(b"".join(self.blobs.open_blob(digest)))
        except (DigestError, strictjson.JsonInvalid, FileNotFoundError, UnknownUpload):
            return []
        text = platform_text(image_config)
        return [text] if text else []

    async def fail(self, build_id: str, reason: str) -> BuildRecord:
        try:
            return await self.run(self.control.mark_failed, build_id, reason)
        except Conflict as exc:
            raise errors.Conflict(str(exc), subject="build") from None
        except NotFound as exc:
            raise errors.NotFound(str(exc), subject="build") from None

    async def add_save_tags(self, build_id: str, tags: Iterable[str]) -> BuildRecord:
        try:
            return await self.run(self.control.add_save_tags, build_id, list(tags))
        except Conflict as exc:
            raise errors.Conflict(str(exc), subject="build") from None
        except NotFound as exc:
            raise errors.NotFound(str(exc), subject="build") from None

    async def remove_save_tag(self, build_id: str, tag: str) -> BuildRecord:
        try:
            return await self.run(self.control.remove_save_tag, build_id, tag)
        except NotFound as exc:
            raise errors.NotFound(str(exc), subject="build") from None

    # --- retention ----------------------------------------------------------------------------------------

    def _retention(self) -> Retention:
        if self.retention is None:
            raise errors.NotFound("this server runs without lifecycle management", subject="build")
        return self.retention

    async def pin(self, build_id: str, actor: str) -> BuildRecord:
        """Keep a saved build until unpinned (neither expiry nor the cap removes it)."""
        return await self._change(self._retention().pin, build_id, actor)

    async def unpin(self, build_id: str, actor: str) -> BuildRecord:
        return await self._change(self._retention().unpin, build_id, actor)

    async def extend(
        self, build_id: str, actor: str, *, by: timedelta | None = None, until: datetime | None = None
    ) -> BuildRecord:
        """Push a saved build's expiry out (exactly one of ``by`` or ``until``)."""
        retention = self._retention()

        def extend(build_id: str, actor: str) -> BuildRecord:
            return retention.extend(build_id, actor, by=by, until=until)

        return await self._change(extend, build_id, actor)

    async def _change(self, change: Callable[[str, str], BuildRecord], build_id: str, actor: str) -> BuildRecord:
        try:
            return await self.run(change, build_id, actor)
        except LifecycleError as exc:
            raise errors.Conflict(str(exc), subject="build") from None
        except BuildNotFound as exc:
            raise errors.NotFound(str(exc), subject="build") from None

    async def evict(self, build_id: str, actor: str, *, dry_run: bool) -> Eviction:
        """Delete a build now, pinned or not (a person asked); ``dry_run`` says what would go."""
        retention = self._retention()
        try:
            eviction = await self.run(retention.evict_build, build_id, "manual", actor, dry_run=dry_run)
        except BuildNotFound as exc:
            raise errors.NotFound(str(exc), subject="build") from None
        if not dry_run and self.after_evict is not None:
            await self.run(self.after_evict, [eviction.project_id])
        return eviction


def platform_text(platform: Any) -> str | None:
    """``os/arch[/variant]`` of an OCI platform object (an index entry's or an image config's), else None."""
    if not isinstance(platform, dict):
        return None
    os_name, arch = platform.get("os"), platform.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        return None
    variant = platform.get("variant")
    return f"{os_name}/{arch}/{variant}" if isinstance(variant, str) and variant else f"{os_name}/{arch}"


__all__ = ["MAX_CONFIG_READ", "Builds"]
