"""The settings of one ``cargohold serve`` process, whatever they came from.

Flags, ``CARGOHOLD_*`` environment variables and a TOML file (``--config``) all end up here; where each value
came from is the business of :mod:`cargohold.config.layers`, what is valid that of
:mod:`cargohold.config.validate`. Field names are the keys of the configuration file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from cargohold.storage.space import MinFreeSpace


def default_data_dir() -> Path:
    """``$CARGOHOLD_DATA_DIR``, else ``$XDG_DATA_HOME/cargohold``, else ``~/.local/share/cargohold``."""
    if env := os.environ.get("CARGOHOLD_DATA_DIR"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cargohold"


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 5000
    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str | None = None
    """SQLAlchemy URL; default ``sqlite:///<data-dir>/metadata.db``."""
    public_url: str | None = None
    """The URL clients use to reach this server (for token realms and OIDC audience); default from host/port."""
    log_level: str = "info"
    log_format: str = "text"
    """``text`` (one human-readable line per record, the access log in logfmt) or ``json`` (one object per line)."""
    access_log: bool = True
    tls_cert: Path | None = None
    """PEM certificate chain to serve HTTPS with (re-read with ``tls_key`` on SIGHUP); None: plain HTTP."""
    tls_key: Path | None = None
    trusted_proxies: tuple[str, ...] = ()
    """Networks (CIDRs) of reverse proxies whose forwarding headers name the real client (see
    cargohold.edge.proxies); requests from anyone else are taken at their TCP peer address."""
    proxy_header: str = "x-forwarded-for"
    """Which forwarding header trusted proxies set: ``x-forwarded-for`` (with ``X-Forwarded-Proto``) or
    ``forwarded`` (RFC 7239). Only one is read, so a client cannot smuggle the other through a proxy that
    passes it on unchanged."""
    upload_ttl: timedelta = timedelta(hours=24)
    """Upload sessions idle for longer are purged with their staged bytes."""
    max_uploads_per_credential: int = 256
    """Open upload sessions one credential may hold (0: no cap). Generous on purpose: one project token shared
    by a CI matrix pushes many images at once, each with 3-6 parallel layer uploads (docker 5, skopeo 6,
    crane 4); 256 covers ~40 such pushes while still bounding what a leaked credential can pin down."""
    max_blob_size: int = 64 * 1024**3
    """Largest blob accepted; protects the disk from an endless upload."""
    chunk_min_length: int = 1024**2
    """Advertised as ``OCI-Chunk-Min-Length`` (0: not sent) so chunked clients pick efficient chunk sizes.

    The filesystem store accepts smaller chunks too; an object store advertises its multipart minimum when it
    is larger (cargohold.storage.base.BlobStore.chunk_min_length).
    """
    fsync: bool = True
    """fsync blobs before they become visible, so a power loss cannot leave a torn blob under a digest."""
    storage_url: str | None = None
    """Where blobs live: None for ``<data-dir>`` (filesystem), ``s3://BUCKET[/PREFIX]`` for a bucket
    (see cargohold.storage.open_blob_store)."""
    blob_redirect: bool = True
    """Object storage: blob GETs answer 307 to a presigned URL (True) or stream through the server (False)."""
    blob_redirect_url: str | None = None
    """Object storage: a CDN base URL to redirect blob GETs to (plus the object key) instead of presigning."""
    io_threads: int = 16
    workers: int = 0
    """Server processes sharing the port (``SO_REUSEPORT``); 0: one per CPU this process may run on. 1 is a
    single process without a supervisor (see cargohold.server.workers)."""
    admin_token: str | None = None
    """Bootstrap admin token (``CARGOHOLD_ADMIN_TOKEN``); otherwise one is generated on an empty data dir."""
    oidc_issuers: tuple[str, ...] = ("https://token.actions.githubusercontent.com",)
    oidc_audience: str | None = None
    """Audience OIDC tokens must carry; default the public URL."""
    oidc_token_ttl: timedelta = timedelta(hours=1)
    registry_token_ttl: int = 300
    gc_interval: timedelta = timedelta(hours=1)
    """How often the server collects garbage (zero: only on demand, ``cargohold gc``)."""
    gc_grace: timedelta = timedelta(hours=1)
    """Blobs linked or uploaded more recently are never collected: the window a push has to finish in."""
    retention_interval: timedelta = timedelta(minutes=1)
    """How often expired builds and tags are evicted, untagged manifests collected and stored bytes re-measured."""
    storage_price_per_gb_month: float = 0.20
    free_gb_months: float = 50.0
    """Free storage allowance per project per calendar month, in GB-months (10^9 bytes for a month)."""
    server_push: bool = True
    """Let ``cargohold push`` ask this server to upload blobs to the destination itself (see
    cargohold.server.control.blob_copies); off, clients stream every blob through themselves."""
    push_allow_networks: tuple[str, ...] = ()
    """Networks (CIDRs) server-side pushes may connect to besides public addresses, e.g. ``10.0.0.0/8`` for
    a registry on the private network. Loopback, private and link-local addresses are refused otherwise."""
    push_threads: int = 8
    """Server-side blob pushes running at once; more wait their turn."""
    history_retention: timedelta = timedelta(days=90)
    """How long the lifecycle audit log (and the reasons given for missing builds) is kept."""
    header_timeout: timedelta = timedelta(seconds=75)
    """A connection must send a complete request head this soon after it opens or after its previous
    response (aiohttp's keep-alive timeout: also how long an idle keep-alive connection stays open)."""
    body_idle_timeout: timedelta = timedelta(seconds=60)
    """Longest pause inside any request body, uploads included (see cargohold.server.http.bodies)."""
    body_timeout: timedelta = timedelta(seconds=120)
    """Longest time a whole JSON, form or manifest body may take; blob uploads have only the idle limit."""
    min_free_space: MinFreeSpace = field(default_factory=MinFreeSpace.default)
    """Free space kept on the blob store's and the database's filesystems; uploads are refused below it
    (see cargohold.storage.space). Default: 5% of the filesystem, at most 2 GiB."""
    evict_for_space: bool = True
    """Under the minimum, evict the oldest unpinned builds and collect garbage (see cargohold.lifecycle.space)."""
    space_check_interval: timedelta = timedelta(seconds=10)
    """How often free space is measured in the background (refusals and faults trigger a check at once)."""
    key_reload_interval: timedelta = timedelta(seconds=10)
    """How often the registry-token signing keys are re-read from the database: a key rotated or retired by
    another replica (or `cargohold admin rotate-signing-key`) is used or refused here within this long."""
    shutdown_timeout: float = 30.0
    """Seconds from SIGTERM/SIGINT to exit: requests already received finish within it, uploads are cut at
    a resumable point at once, and a watchdog ends the process at the deadline (see cargohold.server.drain)."""

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'metadata.db'}"

    def database_file(self) -> Path | None:
        """The SQLite database file (whose filesystem needs free space too), or None for a database server."""
        from sqlalchemy.engine import make_url  # imported here: only the server needs it

        url = make_url(self.resolved_database_url())
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return None
        return Path(url.database).absolute()

    def resolved_oidc_audience(self) -> str:
        return self.oidc_audience or self.resolved_public_url()

    def resolved_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls_cert is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"
