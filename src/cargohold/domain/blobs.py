"""Reading and unlinking blobs in a repository: the rules the blob GET, the blob DELETE and server-side copies share.

* A blob is readable in a repository only through a link (``repository_blobs``); where its bytes are served
  from is the blob store's answer (:class:`~cargohold.storage.base.LocalFile` for sendfile today).
* Reading a blob through a link older than ``stale_before`` refreshes the link first, keeping it out of the
  garbage collector's reach for a client that HEADs a blob and then skips uploading it (see
  :mod:`cargohold.lifecycle.gc`); fresh links cost one read. A link that vanished in between (GC won) reads
  as unknown. The refresh is best-effort: on a full or failing disk the pull goes on without it.
* A blob a manifest in the repository references cannot be unlinked from it.

:func:`readable_blob` is what the hottest path in the product (every matrix job pulls every layer) does on its
one trip to the thread pool: one indexed read, and a write only when the link is stale.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from cargohold.domain import errors
from cargohold.domain.space import SpaceMonitor
from cargohold.lifecycle.gc import TOUCH_FRACTION
from cargohold.metadata.errors import BlobInUse
from cargohold.metadata.store import MetadataStore
from cargohold.oci.digest import Digest
from cargohold.storage.base import BlobLocation, BlobStore
from cargohold.storage.faults import classify

log = logging.getLogger(__name__)

TOUCH_WARNING_INTERVAL = 60.0
"""Seconds between two log lines about link refreshes failing on a full disk (pulls go on regardless)."""
_last_touch_warning = 0.0


def unknown_blob(digest: Digest | str) -> errors.NotFound:
    return errors.NotFound(
        f"blob {digest} is not known to this repository", subject="blob", detail={"digest": str(digest)}
    )


def stale_before(now: datetime, gc_grace: timedelta) -> datetime:
    """Links older than this are refreshed when read (a fraction of the GC grace, see cargohold.lifecycle.gc)."""
    return now - gc_grace / TOUCH_FRACTION


def readable_blob(
    blobs: BlobStore,
    metadata: MetadataStore,
    space: SpaceMonitor | None,
    name: str,
    digest: Digest,
    stale_before: datetime,
) -> BlobLocation:
    """Where to serve ``digest`` from, if ``name`` may read it (blocking: call it on a worker thread)."""
    linked = metadata.linked_blob(name, str(digest))
    if linked is None:
        raise unknown_blob(digest)
    if linked[1] < stale_before and not _refresh_link(metadata, space, name, digest, stale_before):
        raise unknown_blob(digest)
    return _located(blobs, name, digest, linked[0])


def readable_blob_inline(
    blobs: BlobStore, metadata: MetadataStore, name: str, digest: Digest, stale_before: datetime
) -> BlobLocation | None:
    """:func:`readable_blob` without blocking, for the event loop, or None when only blocking work can answer.

    Only where the metadata read is an embedded one (``Database.reads_inline``) and the store locates a
    blob from memory (``BlobStore.locate_blocks`` false: a presigned URL). A stale link needs a write to
    refresh, so it gets None too, and the caller takes :func:`readable_blob` to a worker thread.
    """
    if blobs.locate_blocks or not metadata.db.reads_inline:  # the filesystem store: decided by one attribute
        return None
    linked = metadata.linked_blob(name, str(digest))
    if linked is None:
        raise unknown_blob(digest)
    if linked[1] < stale_before:
        return None
    return _located(blobs, name, digest, linked[0])


def _located(blobs: BlobStore, name: str, digest: Digest, size: int) -> BlobLocation:
    try:
        location = blobs.locate(digest, known_size=size)
    except OSError as exc:
        if (fault := classify(exc)) is None:
            raise
        log.error("reading blob %s in %s failed: storage I/O error: %s", digest, name, fault.describe())
        raise errors.StorageFailed(
            f"blob {digest} cannot be read: a storage I/O error ({fault.describe()}); an admin should check the "
            "server's disk",
            subject="blob",
            detail={"digest": str(digest)},
        ) from None
    if location is None:
        log.error("blob %s is linked in %s but its content is missing from the store", digest, name)
        raise unknown_blob(digest)
    return location


def _refresh_link(
    metadata: MetadataStore, space: SpaceMonitor | None, name: str, digest: Digest, stale_before: datetime
) -> bool:
    """:meth:`MetadataStore.touch_link`, best-effort: on a full or failing disk the pull goes on without it.

    The link was there a moment ago (we just read it); what a failed refresh costs is only that garbage
    collection's grace window restarts from the older time, which matters to a push skipping an existing
    blob, never to this pull.
    """
    global _last_touch_warning
    try:
        return metadata.touch_link(name, str(digest), stale_before)
    except Exception as exc:
        if (fault := classify(exc)) is None:
            raise
        if space is not None:
            space.on_fault(fault)
        now = time.monotonic()
        if now - _last_touch_warning >= TOUCH_WARNING_INTERVAL:
            _last_touch_warning = now
            log.warning("could not refresh blob links (%s); pulls are served without it", fault.describe())
        return True


def unlink_blob(metadata: MetadataStore, name: str, digest: Digest) -> None:
    """Remove ``digest`` from repository ``name`` (blocking). The bytes stay until garbage collection finds no
    repository linking them."""
    try:
        removed = metadata.unlink_blob(name, str(digest))
    except BlobInUse:
        raise errors.InUse(
            f"blob {digest} is referenced by a manifest in {name}; delete that manifest first",
            subject="blob",
            detail={"digest": str(digest)},
        ) from None
    if not removed:
        raise unknown_blob(digest)


__all__ = ["readable_blob", "readable_blob_inline", "stale_before", "unknown_blob", "unlink_blob"]
