"""SQLAlchemy 2 models for registry metadata.

Content (bytes) lives in the blob store; this database records *who may see what*: which repository links
which blob, the manifests stored in each repository (their exact bytes, since they are small and must be
served byte-for-byte), the references each manifest makes (for validation, referrers and garbage
collection), tags, and upload sessions. Alembic migrations in ``migrations/`` create this schema; tests
check that the migrations and these models agree.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use datetime.now(UTC)")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


def byte_ordered(length: int) -> String:
    """A ``String(length)`` that sorts and compares byte-wise on every backend.

    SQLite compares text byte-wise; a PostgreSQL database created with a language locale does not (``B`` sorts
    after ``a``, ``-`` and ``.`` are ignored at first), and OCI listings (tags, the catalog) are in lexical byte
    order, paged with ``last``. PostgreSQL gets ``COLLATE "C"`` on these columns (migration 0010).
    """
    return String(length).with_variant(String(length, collation="C"), "postgresql")


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Repository(Base):
    __tablename__ = "repositories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(byte_ordered(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Blob(Base):
    """Content known to be in the blob store (global: shared by every repository that links it)."""

    __tablename__ = "blobs"

    digest: Mapped[str] = mapped_column(String(140), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RepositoryBlob(Base):
    """A blob readable in a repository: uploaded or mounted there. ``linked_at`` feeds the GC grace window."""

    __tablename__ = "repository_blobs"

    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest"), primary_key=True)
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_repository_blobs_digest", "digest"),)


class Manifest(Base):
    __tablename__ = "manifests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(140))
    media_type: Mapped[str] = mapped_column(String(255))
    artifact_type: Mapped[str | None] = mapped_column(String(255), nullable=True)
    subject_digest: Mapped[str | None] = mapped_column(String(140), nullable=True)
    annotations: Mapped[str | None] = mapped_column(Text, nullable=True)
    size: Mapped[int] = mapped_column(BigInteger)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    pushed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    """The last PUT of these bytes (by tag or by digest): an untagged manifest is kept a retention period from it."""

    references: Mapped[list[ManifestReference]] = relationship(
        back_populates="manifest", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (
        UniqueConstraint("repository_id", "digest", name="uq_manifests_repository_digest"),
        Index("ix_manifests_repository_subject", "repository_id", "subject_digest"),
        # The untagged-manifest sweep reads "this repository's manifests last pushed before the cutoff".
        Index("ix_manifests_repository_pushed", "repository_id", "pushed_at"),
    )


class ManifestReference(Base):
    """One descriptor a manifest points at: a blob (config/layer) or a child manifest (index entry)."""

    __tablename__ = "manifest_references"

    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifests.id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[str] = mapped_column(String(140), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # "blob" | "manifest"

    manifest: Mapped[Manifest] = relationship(back_populates="references")

    __table_args__ = (Index("ix_manifest_references_digest", "digest"),)


class Tag(Base):
    """A tag; ``updated_at`` is its last push. Build retention governs build tags, tag retention the rest."""

    __tablename__ = "tags"

    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(byte_ordered(128), primary_key=True)
    manifest_id: Mapped[int] = mapped_column(ForeignKey("manifests.id", ondelete="CASCADE"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    """When a tag pushed outside builds expires (see :mod:`cargohold.lifecycle.tag_retention`); NULL for build
    tags (their build decides) and in projects that keep images without a time limit."""
    pinned: Mapped[bool] = mapped_column(default=False, server_default=false())

    __table_args__ = (
        Index("ix_tags_manifest_id", "manifest_id"),
        Index("ix_tags_pinned_expires", "pinned", "expires_at"),
    )


class UploadSession(Base):
    """An in-progress blob upload; its bytes are staged in the blob store under the same ID."""

    __tablename__ = "upload_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    credential_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """The credential that opened the session (None without authentication): it may always cancel it, and
    its open sessions count against ``--max-uploads-per-credential``."""

    __table_args__ = (Index("ix_upload_sessions_credential_updated", "credential_id", "updated_at"),)


# --- control plane: projects, builds, credentials, trust ------------------------------------------------------


class Project(Base):
    """A team's registry: its repository is ``<host>/<id>``. Retention settings feed the lifecycle jobs."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    retention_seconds: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Maximum age of a saved build, and of a tag pushed outside builds since its last push; NULL means no time
    limit (builds then leave only by the cap)."""
    max_builds: Mapped[int] = mapped_column(Integer)


class Build(Base):
    """One saved image (or one multi-target build) of a project, tagged ``<projectID>:<buildID>``."""

    __tablename__ = "builds"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))  # pending | saved | failed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    saved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    pinned: Mapped[bool] = mapped_column(default=False)
    manifest_digest: Mapped[str | None] = mapped_column(String(140), nullable=True)
    media_type: Mapped[str | None] = mapped_column(String(255), nullable=True)
    platforms: Mapped[str | None] = mapped_column(Text, nullable=True)
    """JSON list of ``os/arch[/variant]`` strings."""
    targets: Mapped[str | None] = mapped_column(Text, nullable=True)
    """JSON map of bake target name -> manifest digest (tag ``<buildID>-<target>``)."""
    total_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    unique_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    provenance: Mapped[str | None] = mapped_column(Text, nullable=True)
    """JSON: repository, sha, workflow, run_id, run_attempt, actor (from the OIDC claims that created it)."""
    failure: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The ``Idempotency-Key`` of the request that created the build: a repeated request (its first answer
    was lost) gets this build back instead of a second one."""

    __table_args__ = (
        Index("ix_builds_project_created", "project_id", "created_at"),
        Index("ux_builds_project_request_key", "project_id", "request_key", unique=True),
    )


class SaveTag(Base):
    """A save-tag: a name in the project's repository that follows the newest build claiming it."""

    __tablename__ = "save_tags"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)
    build_id: Mapped[str] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_save_tags_build_id", "build_id"),)


class Credential(Base):
    """A token, stored only as its SHA-256; ``permissions`` is the JSON of ``credentials.Permission`` list."""

    __tablename__ = "credentials"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    permissions: Mapped[str] = mapped_column(Text)
    metadata_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    project_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    """The project a project/pull token belongs to (for listing); OIDC tokens may span several."""
    parent_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    """The credential that minted this one; revoking it revokes this one too. NULL: a root (admin tokens,
    OIDC-exchanged ones, and everything created before lineage was recorded)."""
    admin_permissions: Mapped[str | None] = mapped_column(Text, nullable=True)
    """JSON list of server-wide permissions (``admin``, ``metrics``) of an admin credential."""


class CredentialTrust(Base):
    """Which trust relationships produced an OIDC-exchanged credential: deleting one revokes the credential.

    No foreign key to the relationship: the link must outlive its deletion long enough to find what to revoke,
    and a relationship id is never reused.
    """

    __tablename__ = "credential_trusts"

    credential_id: Mapped[str] = mapped_column(ForeignKey("credentials.id", ondelete="CASCADE"), primary_key=True)
    trust_id: Mapped[str] = mapped_column(String(32), primary_key=True)

    __table_args__ = (Index("ix_credential_trusts_trust_id", "trust_id"),)


class TrustRelationship(Base):
    """Lets CI jobs of one GitHub repository exchange their OIDC token for access to a project."""

    __tablename__ = "trust_relationships"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    issuer: Mapped[str] = mapped_column(String(255))
    """Only tokens from this OIDC issuer may match (a GHES issuer must not speak for github.com names)."""
    owner: Mapped[str] = mapped_column(String(100))
    repository: Mapped[str] = mapped_column(String(100))
    owner_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    repository_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    workflow: Mapped[str | None] = mapped_column(String(300), nullable=True)
    environment: Mapped[str | None] = mapped_column(String(255), nullable=True)
    ref_pattern: Mapped[str | None] = mapped_column(String(255), nullable=True)
    runner_environment: Mapped[str | None] = mapped_column(String(32), nullable=True)
    allowed_events: Mapped[str | None] = mapped_column(Text, nullable=True)
    """JSON list of otherwise-refused events (pull_request_target, workflow_run) this relationship allows."""
    pull_only: Mapped[bool] = mapped_column(default=False)
    """Kept equal to ``permissions == ["pull"]`` for older readers; ``permissions`` is what counts."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    permissions: Mapped[str] = mapped_column(Text)
    """JSON list of what exchanged credentials get in the project: ``pull``, ``push``, ``delete``."""

    __table_args__ = (Index("ix_trust_owner_repository", "owner", "repository"),)


class OidcTokenUse(Base):
    """Single-use ``jti`` claims of exchanged OIDC tokens, kept until the token could no longer verify."""

    __tablename__ = "oidc_token_uses"

    issuer: Mapped[str] = mapped_column(String(255), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class SigningKey(Base):
    """An Ed25519 key that signs registry tokens, shared by every replica through this database.

    ``private_key`` is the PKCS#8 PEM: whoever reads this table can mint registry tokens, which is why the
    database is protected like the admin tokens (docs/deploy.md). The key with the highest ``serial`` signs;
    the others keep verifying until they are retired (deleted).
    """

    __tablename__ = "signing_keys"

    serial: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kid: Mapped[str] = mapped_column(String(64), unique=True)
    private_key: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


# --- lifecycle: leases, audit log, storage metering ---------------------------------------------------------


class Lease(Base):
    """A named, time-limited lock shared by every server process (e.g. "only one GC at a time").

    Held while ``expires_at`` is in the future; the holder renews it while working, so a crashed holder's
    lease simply runs out and another process takes over.
    """

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LifecycleEvent(Base):
    """The audit log: one row per eviction, pin, unpin, extension or GC run (what, which rule, when, who).

    No foreign keys on purpose: the record must outlive the build it describes, since explaining a missing
    build ("expired on … (retention 7 days)") is what it is for.
    """

    __tablename__ = "lifecycle_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    build_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    action: Mapped[str] = mapped_column(String(16))
    """evict | pin | unpin | extend | gc"""
    rule: Mapped[str] = mapped_column(String(32))
    """Why: expired | cap | stale | manual | … (see :mod:`cargohold.lifecycle.retention`)."""
    actor: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    """JSON: digest, tags, retention, cap, new expiry, GC totals…"""
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """The request that caused the event (its ``X-Request-ID``); None for background work."""
    client_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The caller's address (behind a trusted proxy: the real client's)."""

    __table_args__ = (
        Index("ix_lifecycle_events_project_at", "project_id", "at"),
        Index("ix_lifecycle_events_build_id", "build_id"),
        Index("ix_lifecycle_events_at", "at"),
    )


class RemovedTag(Base):
    """Tags that eviction removed, pointing at the event that removed them: turns a pull's 404 into a reason."""

    __tablename__ = "removed_tags"

    repository: Mapped[str] = mapped_column(String(255), primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("lifecycle_events.id", ondelete="CASCADE"))

    __table_args__ = (Index("ix_removed_tags_event_id", "event_id"),)


class ProjectStorage(Base):
    """A project's current stored bytes and when usage was last accrued from it (the metering cursor)."""

    __tablename__ = "project_storage"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    stored_bytes: Mapped[int] = mapped_column(BigInteger)
    metered_at: Mapped[datetime] = mapped_column(UTCDateTime)


class UsageMonth(Base):
    """Byte-hours a project accumulated in one calendar month (UTC), the basis of GB-month billing."""

    __tablename__ = "usage_months"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    """``YYYY-MM``"""
    byte_hours: Mapped[float] = mapped_column(Float)


# Indexes the lifecycle sweeps need on the control tables: cap eviction (oldest saved first), expiry, and
# the 24-hour clean-up of builds that never got saved.
Index("ix_builds_project_status_saved", Build.project_id, Build.status, Build.saved_at)
Index("ix_builds_status_expires", Build.status, Build.expires_at)
Index("ix_builds_status_created", Build.status, Build.created_at)


class SchemaInfo(Base):
    """Facts about the schema itself. ``revision:<id>`` -> the Cargohold version that brought the database
    to that migration revision, so an older Cargohold meeting a newer database can say which version it
    needs (cargohold.metadata.schema_version)."""

    __tablename__ = "schema_info"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class UiSession(Base):
    """A signed-in web dashboard session (cargohold.server.ui): stored here so every replica shares it.

    Only the SHA-256 of the session ID (the cookie's value) is kept, like tokens: a copy of the database
    does not sign anyone in. The session acts as ``credential_id`` (no foreign key: the bootstrap
    ``CARGOHOLD_ADMIN_TOKEN`` is stored nowhere) and dies with it (checked on every request)."""

    __tablename__ = "ui_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    credential_id: Mapped[str] = mapped_column(String(32), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    """The absolute end of the session, whatever its activity."""
