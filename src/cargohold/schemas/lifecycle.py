"""Lifecycle: evictions, tags pushed outside builds, history, usage, server storage, expiry sweeps and garbage
collection (docs/api.md, "Tags pushed outside builds", "Retention of non-build tags", "Health … and storage")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cargohold.schemas.wire import Schema, optional_key


@dataclass(frozen=True)
class Eviction(Schema):
    """A build that was (or, in a dry run, would be) evicted, with the rule and the reason."""

    build_id: str
    project_id: str
    rule: str
    """``expired``, ``cap``, ``stale``, ``space`` or ``manual``."""
    reason: str
    tags: list[str]
    manifests: int


@dataclass(frozen=True)
class BuildDeletion(Schema):
    """``DELETE /api/v1/builds/{build}``."""

    dry_run: bool
    evicted: list[Eviction]


@dataclass(frozen=True)
class Tag(Schema):
    """A tag pushed outside builds, with its own expiry."""

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
    reference: str


@dataclass(frozen=True)
class TagPage(Schema):
    """``GET /api/v1/projects/{project}/tags``: by repository, then tag; ``next`` is the ``after`` of the next
    page (``<repository>:<tag>``)."""

    project_id: str
    tags: list[Tag]
    next: str | None = optional_key()


@dataclass(frozen=True)
class TagEviction(Schema):
    project_id: str
    repository: str
    tag: str
    digest: str
    rule: str
    reason: str


@dataclass(frozen=True)
class ManifestCollection(Schema):
    """Untagged manifests removed from one repository (or that a dry run would remove)."""

    project_id: str
    repository: str
    rule: str
    reason: str
    count: int
    digests: list[str]


@dataclass(frozen=True)
class ExpiryReport(Schema):
    """``POST /api/v1/expire``: what one expiry sweep evicted (builds, then tags, then untagged manifests)."""

    dry_run: bool
    evicted: list[Eviction]
    tags: list[TagEviction]
    manifests: list[ManifestCollection]


@dataclass(frozen=True)
class GcReport(Schema):
    """``POST /api/v1/gc``: one garbage-collection pass."""

    dry_run: bool
    started_at: datetime
    links_removed: int
    blobs_deleted: int
    bytes_freed: int
    orphan_files: int
    duration_seconds: float
    completed: bool
    skipped: str | None
    error: str | None


@dataclass(frozen=True)
class HistoryEvent(Schema):
    """One lifecycle event: an eviction, a pin, an extension, a deletion through ``/v2/``..."""

    id: int
    project_id: str | None
    build_id: str | None
    action: str
    rule: str
    actor: str
    at: datetime
    detail: dict[str, Any]
    message: str
    """The event as one sentence."""
    request_id: str | None = optional_key()
    """The ID of the request that caused it (``X-Request-ID``); None for background work and from servers
    older than the request-ID log fields, which do not send the key."""
    client_address: str | None = optional_key()
    """The caller's address (the real client behind trusted proxies); None for background work (and absent
    from older servers)."""


@dataclass(frozen=True)
class History(Schema):
    """``GET /api/v1/projects/{project}/history``: newest first."""

    project_id: str
    events: list[HistoryEvent]


@dataclass(frozen=True)
class Filesystem(Schema):
    """One filesystem the server writes to, measured when asked."""

    role: str
    """``blob store and database``, or ``blob store`` and ``database`` when they differ."""
    path: str
    free_bytes: int
    total_bytes: int
    min_free_bytes: int
    low: bool


@dataclass(frozen=True)
class ServerStorage(Schema):
    """``GET /api/v1/storage`` (admin): free space, the minimum, and whether uploads are refused."""

    status: str
    """``ok`` or ``degraded``."""
    reason: str | None
    filesystems: list[Filesystem]
    reserve_bytes: int
    evict_for_space: bool


@dataclass(frozen=True)
class Usage(Schema):
    """``GET /api/v1/projects/{project}/usage``: storage used in a month and what it costs."""

    project_id: str
    month: str
    stored_bytes: int
    byte_hours: float
    gb_months: float
    free_gb_months: float
    billable_gb_months: float
    price_per_gb_month: float
    estimated_cost: float
    currency: str
    as_of: datetime
    server_storage: ServerStorage | None = optional_key()  # noqa: RUF009 - a dataclasses.field
    """The server's free space, in answers to admins only."""
