"""Registry-core behaviour not covered by the wire-protocol suite: schema, housekeeping, restart recovery."""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cargohold.config import ServerSettings
from cargohold.metadata.db import Database
from cargohold.metadata.models import Base
from cargohold.metadata.store import MetadataStore
from cargohold.oci import mediatypes as mt
from cargohold.oci.manifest import parse_manifest
from cargohold.server.app import purge_stale_uploads
from cargohold.server.auth.access import OpenAccess
from cargohold.server.state import RegistryState
from cargohold.storage.filesystem import FilesystemBlobStore
from servers import InProcessServer


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_create_exactly_the_models_schema(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    database = Database(url)
    try:
        database.migrate()
        with database.write_engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        database.dispose()
    assert differences == [], f"models and migrations disagree; add a migration: {differences}"


def test_postgresql_orders_names_byte_wise(pg_migrated_url: str) -> None:
    """The cluster's default collation is ICU en-US (tests/pgcluster.py); tag lists and their ``last`` paging
    must still be in byte order, as on SQLite and as the OCI distribution spec asks."""
    database = Database(pg_migrated_url)
    try:
        store = MetadataStore(database)
        names = ["latest", "B", "a_1", "a", "Latest", "a.1", "a-1"]
        config = b'{"c": 1}'
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        store.link_blob("byte/order", config_digest, len(config))
        body = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [],
        }
        payload = json.dumps(body).encode()
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        store.put_manifest("byte/order", digest, payload, parse_manifest(payload, None), names)
        assert store.list_tags("byte/order", last=None, limit=None) == sorted(names)  # Python's sort is byte order
        assert store.list_tags("byte/order", last="a", limit=None) == [name for name in sorted(names) if name > "a"]
        store.link_blob("byte/Order", config_digest, len(config))
        store.link_blob("byte/order-x", config_digest, len(config))
        store.link_blob("byte/orderZ", config_digest, len(config))
        catalog = [name for name in store.list_repositories(last=None, limit=None) if name.startswith("byte/")]
        assert catalog == sorted(catalog)
    finally:
        database.dispose()


def _state(tmp_path: Path, ttl: timedelta) -> RegistryState:
    settings = ServerSettings(data_dir=tmp_path, upload_ttl=ttl)
    database = Database(settings.resolved_database_url())
    database.migrate()
    return RegistryState(
        settings=settings,
        metadata=MetadataStore(database),
        blobs=FilesystemBlobStore(tmp_path, fsync=False),
        access=OpenAccess(),
        executor=ThreadPoolExecutor(1),
    )


def test_stale_upload_sessions_and_orphan_staging_files_are_purged(tmp_path: Path) -> None:
    state = _state(tmp_path, timedelta(hours=24))
    stale, fresh, orphan = "a" * 32, "b" * 32, "c" * 32
    for upload_id in (stale, fresh):
        state.blobs.create_upload(upload_id)
        state.metadata.create_upload("proj/app", upload_id)
    state.blobs.create_upload(orphan)  # staged bytes whose session row never got written (crash)
    old = time.time() - 25 * 3600
    os.utime(state.blobs.uploads_dir / orphan, (old, old))

    later = datetime.now(UTC) + timedelta(hours=24, minutes=1)
    # Only sessions idle past the TTL go; "fresh" is touched right before the check.
    state.metadata.touch_upload(fresh)
    removed = purge_stale_uploads(state, now=later - timedelta(minutes=2))
    assert removed == 1  # the orphan file only: both sessions are younger than 24 h at that moment
    assert state.blobs.upload_size(orphan) is None

    removed = purge_stale_uploads(state, now=later)
    assert removed == 2
    assert state.metadata.get_upload(stale) is None and state.blobs.upload_size(stale) is None
    assert state.metadata.get_upload(fresh) is None


def test_chunked_upload_resumes_after_a_restart_and_verifies(server: InProcessServer) -> None:
    """The running hash lives in memory; after a restart it is rebuilt from the staged bytes once."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with server.client() as http:
        location = http.post("/v2/core/resume/blobs/uploads/").headers["Location"]
        first = http.patch(location, content=data[:2_000_000], headers={"Content-Range": "0-1999999"})
        assert first.status_code == 202 and first.headers["Range"] == "0-1999999"

    server.stop()
    server.start()

    with server.client() as http:
        status = http.get(location)
        assert status.status_code == 204 and status.headers["Range"] == "0-1999999"
        rest = http.put(
            f"{location}?digest={digest}",
            content=data[2_000_000:],
            headers={"Content-Range": f"2000000-{len(data) - 1}"},
        )
        assert rest.status_code == 201, rest.text
        assert http.get(f"/v2/core/resume/blobs/{digest}").content == data

        # A wrong digest after a restart is still caught, and the upload is discarded.
        location = http.post("/v2/core/resume/blobs/uploads/").headers["Location"]
        http.patch(location, content=b"x" * 1000)
    server.stop()
    server.start()
    with server.client() as http:
        bad = http.put(f"{location}?digest=sha256:{'0' * 64}")
        assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == "DIGEST_INVALID"
        assert http.get(location).status_code == 404
