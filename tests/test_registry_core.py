"""Registry-core behaviour not covered by the wire-protocol suite: schema, housekeeping, restart recovery."""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cargohold.config import ServerSettings
from cargohold.metadata.db import Database
from cargohold.metadata.models import Base
from cargohold.metadata.store import MetadataStore
from cargohold.server.app import purge_stale_uploads
from cargohold.server.auth.access import OpenAccess
from cargohold.server.state import RegistryState
from cargohold.storage.filesystem import FilesystemBlobStore
from servers import InProcessServer


def test_migrations_create_exactly_the_models_schema(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'm.db'}")
    database.migrate()
    with database.write_engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == [], f"models and migrations disagree; add a migration: {differences}"


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
