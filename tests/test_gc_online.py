"""Online garbage collection against a real database and filesystem store, with an injected clock."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from cargohold.lifecycle.gc import GarbageCollector
from cargohold.lifecycle.lease import Lease
from cargohold.lifecycle.retention import Retention
from cargohold.metadata.models import Blob, RepositoryBlob
from cargohold.oci.digest import Digest
from cargohold.storage.filesystem import FilesystemBlobStore
from s3server import S3_MODE
from test_lifecycle_support import Env, FakeClock, make_env

GRACE = timedelta(hours=1)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def _digest(data: bytes) -> Digest:
    return Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())


def test_gc_frees_only_unreferenced_content_older_than_grace(env: Env) -> None:
    clock = FakeClock(datetime.now(UTC))
    project = env.control.create_project("p", retention=None)
    kept = env.saved_build(project.id, layers=[b"shared", b"kept"], now=clock.now)
    gone = env.saved_build(project.id, layers=[b"shared", b"gone"], now=clock.now)
    env.put_blob("other/repo", b"gone")  # the same content linked elsewhere, unreferenced there
    Retention(env.db, clock=clock).evict_build(gone)
    gc = GarbageCollector(env.db, env.blobs, grace=GRACE, clock=clock, batch_size=2)

    early = gc.run()  # everything is younger than the grace window
    assert (early.links_removed, early.blobs_deleted) == (0, 0)

    # put_blob links at the real time, which a loaded machine may have moved past the fake start.
    clock.now = datetime.now(UTC) + GRACE + timedelta(seconds=1)
    planned = gc.run(dry_run=True)
    assert env.blobs.size(_digest(b"gone")) == 4  # dry run deleted nothing
    report = gc.run()
    assert report.completed
    assert (planned.links_removed, planned.blobs_deleted) == (report.links_removed, report.blobs_deleted)
    assert report.links_removed == 3  # "gone" + its config in p, "gone" in other/repo
    assert report.blobs_deleted == 2 and report.bytes_freed == planned.bytes_freed
    assert env.blobs.size(_digest(b"gone")) is None
    for data in (b"shared", b"kept"):
        assert env.blobs.size(_digest(data)) == len(data)
        assert env.metadata.linked_blob_size(project.id, str(_digest(data))) == len(data)
    assert env.metadata.get_manifest(project.id, kept, by_digest=False) is not None
    assert gc.run().blobs_deleted == 0  # nothing left


def test_touched_link_survives_and_vanished_link_is_reported(env: Env) -> None:
    env.put_blob("repo", b"headed")
    digest = str(_digest(b"headed"))
    with env.db.write() as session:  # the link was made two grace windows ago
        session.execute(update(RepositoryBlob).values(linked_at=datetime.now(UTC) - 2 * GRACE))
        session.execute(update(Blob).values(created_at=datetime.now(UTC) - 2 * GRACE))
    clock = FakeClock(datetime.now(UTC))
    gc = GarbageCollector(env.db, env.blobs, grace=GRACE, clock=clock)
    # A client HEADs the blob now (the route refreshes the stale link), then pushes its manifest later.
    assert env.metadata.touch_link("repo", digest, older_than=clock.now - GRACE / 4)
    assert gc.run().links_removed == 0
    clock.now = datetime.now(UTC) + GRACE + timedelta(seconds=1)  # touch_link stamped the real time
    report = gc.run()
    assert (report.links_removed, report.blobs_deleted) == (1, 1)
    assert not env.metadata.touch_link("repo", digest, older_than=clock.now)


@pytest.mark.skipif(S3_MODE, reason="writes a file into the data dir; test_storage_s3 has the bucket's version")
def test_orphan_files_are_removed_after_grace(env: Env) -> None:
    clock = FakeClock(datetime.now(UTC))
    data = b"crash leftover"
    digest = _digest(data)
    assert isinstance(env.blobs, FilesystemBlobStore)
    path = env.blobs.blob_path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    gc = GarbageCollector(env.db, env.blobs, grace=GRACE, clock=clock)
    assert gc.run().orphan_files == 0
    old = (datetime.now(UTC) - 2 * GRACE).timestamp()
    os.utime(path, (old, old))
    report = gc.run()
    assert report.orphan_files == 1 and report.bytes_freed == len(data)
    assert not path.exists()


def test_only_one_collector_at_a_time(env: Env) -> None:
    held = Lease(env.db, "gc", holder="elsewhere:1:x")
    assert held.acquire()
    report = GarbageCollector(env.db, env.blobs).run()
    assert report.skipped and not report.completed
    held.release()
    assert GarbageCollector(env.db, env.blobs).run().completed


def test_lease_expires_and_renewal_detects_takeover(env: Env) -> None:
    clock = FakeClock(datetime.now(UTC))
    first = Lease(env.db, "gc", ttl=timedelta(seconds=10), clock=clock, holder="a")
    second = Lease(env.db, "gc", ttl=timedelta(seconds=10), clock=clock, holder="b")
    assert first.acquire() and not second.acquire()
    clock.advance(timedelta(seconds=10))
    assert second.acquire()
    from cargohold.lifecycle.lease import LeaseLost

    with pytest.raises(LeaseLost):
        first.renew(force=True)


def test_many_batches_with_a_failing_delete_then_recovery(env: Env) -> None:
    digests = [str(_digest(f"garbage-{i}".encode())) for i in range(40)]
    for i in range(40):
        env.put_blob("repo", f"garbage-{i}".encode())
    clock = FakeClock(datetime.now(UTC) + 2 * GRACE)
    gc = GarbageCollector(env.db, env.blobs, grace=GRACE, clock=clock, batch_size=8, delete_workers=4)
    real_delete = env.blobs.delete
    failing = Digest.parse(digests[20])

    def delete(digest: Digest) -> bool:
        if digest == failing:
            raise PermissionError("read-only file system")
        return real_delete(digest)

    env.blobs.delete = delete  # type: ignore[method-assign]
    with pytest.raises(PermissionError):
        gc.run()
    with env.db.read() as session:  # the failing batch rolled back: its rows are still there
        assert session.get(Blob, digests[20]) is not None
    env.blobs.delete = real_delete  # type: ignore[method-assign]
    report = gc.run()
    assert report.completed and report.orphan_files == 0
    assert gc.counts() == {"blobs": 0, "links": 0}
    assert list(env.blobs.iter_digests()) == []
    # The collector's connection got its checkpoint setting back before returning to the pool.
    connections = [env.db.write_engine.connect() for _ in range(3)]
    try:
        for connection in connections:
            driver = connection.connection.driver_connection
            assert driver is not None
            assert driver.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    finally:
        for connection in connections:
            connection.close()
