"""Online garbage collection: reclaim storage while pushes and pulls keep running.

Three passes, each in small batches (``batch_size`` rows per write transaction, default 500) so the
database write lock is never held for long:

1. **Unlink.** A ``repository_blobs`` link that no manifest in its repository references, and whose
   ``linked_at`` is older than the grace window, is deleted.
2. **Delete content.** A blob that no repository links and whose ``blobs`` row is older than the grace
   window loses its row *and* its file.
3. **Orphan files.** Files in the store with no ``blobs`` row (leftovers of a crash between a file
   operation and its transaction's commit) are deleted once older than the grace window.

**Why pushes cannot lose a blob.** The race to close: a client commits (or finds) a blob, GC deletes it,
and the client's manifest PUT then fails — or, worse, succeeds over a missing blob. The rules:

* Every state change happens inside a SQLite ``BEGIN IMMEDIATE`` write transaction, i.e. under the
  single database write lock: blob commit (``MetadataStore.link_blob`` renames the upload into the
  content store *inside* its transaction), mount, manifest PUT (which checks every referenced link
  inside its transaction), and each GC batch (which re-checks its conditions inside its transaction
  before deleting anything). They are therefore serialised: GC either runs before a manifest PUT —
  which then sees the link gone and answers ``MANIFEST_BLOB_UNKNOWN``, so the client re-uploads — or
  after it, when the new manifest's reference keeps the link. A manifest is never accepted over a blob
  that can still be deleted, and content is only deleted when no link exists at that instant.
* The grace window protects the gap between uploading a blob and pushing the manifest that references
  it: links younger than the window are never unlinked. Clients that HEAD an existing blob and skip the
  upload are protected too: blob HEAD/GET refreshes a link's ``linked_at`` when it is older than a
  quarter of the window (``MetadataStore.touch_link``, a write only when stale, so the hot path stays a
  read), and answers 404 if the link vanished just before, so the client uploads instead of trusting it.
  A client thus has at least three quarters of the window between HEAD and manifest PUT.
* A content-deletion batch re-checks "no link, row older than the window", then deletes the rows and
  the files, then commits. A crash after the files are gone but before the commit leaves rows without
  files and without links: the next pass deletes those rows. Nothing can have linked them meanwhile
  (mounting needs a link; an upload of the same digest writes the file again in its own transaction).
* Orphan-file deletion re-checks inside a write transaction that no row exists, so it cannot race an
  upload whose rename happens inside the (not yet committed) linking transaction.

**Where the time goes, and why the batches look the way they do.** Collecting 100,000 blobs is
100,000 unlinks plus a few hundred transactions. The unlinks are the floor (0.1-0.2 ms of disk time each
with eight threads on the benchmark's virtual disk), and they must happen inside the transaction that
deletes the rows. Everything else is arranged not to add to them, because every millisecond a batch holds
the write lock is a millisecond uploads and manifest PUTs wait:

* Candidates are read outside the lock (the read engine, keyset-paged), one batch ahead: the next
  batch's query runs while this one deletes. The read is only a hint; the write re-checks. Statements
  are built once per pass, with expanding ``IN`` parameters.
* One long-lived pool of :data:`DEFAULT_DELETE_WORKERS` threads drains each batch's file list from a
  shared queue (no future per file: with one per file, thread hand-offs cost more than the unlinks), and
  it does so while SQLite deletes the batch's rows on the calling thread — both before the commit.
* The collector's write transactions run on one connection that does not checkpoint the WAL when it
  commits; a background thread does, overlapping the next batch (see :class:`_BatchWriter`).

Only one GC runs at a time across processes (the ``gc`` database lease, renewed between batches once a
half of its TTL has passed); a pass that loses its lease stops. So does a pass whose :attr:`stop` event is
set (the server is shutting down): after the batch in progress, which is one transaction, so nothing is
left half-done, and with the lease released for the next process. ``dry_run`` reports what a pass would
free without changing anything.

Test hook: ``CARGOHOLD_GC_TEST_DELAY`` (seconds) sleeps inside every content-deletion transaction after
its files are deleted, so a test can ``kill -9`` the server in the worst possible place.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, bindparam, delete, exists, func, select, tuple_

from cargohold.clock import WallClock, utc_now
from cargohold.isotime import iso
from cargohold.lifecycle.lease import Lease, LeaseLost
from cargohold.metadata.db import CONTENT_LOCK, Database, hold_lock
from cargohold.metadata.models import Blob, Manifest, ManifestReference, RepositoryBlob
from cargohold.oci.digest import Digest
from cargohold.storage.base import BlobStore

log = logging.getLogger(__name__)

DEFAULT_GRACE = timedelta(hours=1)
DEFAULT_BATCH = 500
LINK_BATCH_FACTOR = 8
"""Pass-1 (unlink) batches are this many times ``batch_size``."""
DEFAULT_DELETE_WORKERS = 8
"""Threads deleting one batch's files at once (see :meth:`GarbageCollector._deleting_files`)."""
TOUCH_FRACTION = 4
"""Blob HEAD/GET refreshes a link older than grace / TOUCH_FRACTION."""
TEST_DELAY_ENV = "CARGOHOLD_GC_TEST_DELAY"
WAL_RESTART_FRAMES = 4000
"""Once the WAL holds this many frames (16 MiB of 4 KiB pages), the next batch waits for the background
checkpoint so that SQLite can rewind the log (see :class:`_BatchWriter`)."""

K = TypeVar("K")
R = TypeVar("R")


@dataclass
class GcReport:
    dry_run: bool
    started_at: datetime
    links_removed: int = 0
    blobs_deleted: int = 0
    bytes_freed: int = 0
    orphan_files: int = 0
    duration_seconds: float = 0.0
    completed: bool = False
    skipped: str | None = None
    """Why the pass did not run (another process holds the lease)."""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "started_at": iso(self.started_at),
            "links_removed": self.links_removed,
            "blobs_deleted": self.blobs_deleted,
            "bytes_freed": self.bytes_freed,
            "orphan_files": self.orphan_files,
            "duration_seconds": round(self.duration_seconds, 3),
            "completed": self.completed,
            "skipped": self.skipped,
            "error": self.error,
        }


def _unreferenced_in_repository() -> Any:
    """SQL: the link's blob is referenced by no manifest in the link's repository (correlated)."""
    return ~exists().where(
        ManifestReference.digest == RepositoryBlob.digest,
        ManifestReference.kind == "blob",
        ManifestReference.manifest_id == Manifest.id,
        Manifest.repository_id == RepositoryBlob.repository_id,
    )


class _Stopped(Exception):
    """The :attr:`GarbageCollector.stop` event was set: end the pass between two batches."""


class GarbageCollector:
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        *,
        grace: timedelta = DEFAULT_GRACE,
        clock: WallClock = utc_now,
        batch_size: int = DEFAULT_BATCH,
        lease_ttl: timedelta = timedelta(minutes=2),
        delete_workers: int = DEFAULT_DELETE_WORKERS,
        link_batch_size: int | None = None,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.grace = grace
        self.clock = clock
        self.batch_size = batch_size
        self.lease_ttl = lease_ttl
        self.delete_workers = delete_workers
        # Pass 1 only deletes index rows (no files under the lock), so its batches can be bigger: fewer
        # commits, and fewer rewrites of the same pages, for the same work; each still holds the lock for
        # well under the time of a content batch (~0.1-0.3 s for 4,000 links in the benchmark).
        self.link_batch_size = link_batch_size or batch_size * LINK_BATCH_FACTOR
        self.test_delay = float(os.environ.get(TEST_DELAY_ENV) or 0)
        self.stop = threading.Event()
        """Set to end a running pass after its current batch (and to skip passes from then on)."""

    def run(self, *, dry_run: bool = False) -> GcReport:
        """One full pass; returns its report (``skipped`` set if another process is collecting)."""
        started = time.monotonic()
        report = GcReport(dry_run=dry_run, started_at=self.clock())
        lease = Lease(self.db, "gc", ttl=self.lease_ttl, clock=self.clock)
        lost = False
        if self.stop.is_set():
            report.skipped = "the server is shutting down"
            return report
        if not lease.acquire():
            report.skipped = "another garbage collection is running"
            return report
        try:
            cutoff = self.clock() - self.grace
            with _BatchWriter(self.db) as writer:
                self._unlink(report, cutoff, lease, writer, dry_run)
                self._delete_content(report, cutoff, lease, writer, dry_run)
                self._delete_orphans(report, cutoff, lease, writer, dry_run)
            report.completed = True
        except LeaseLost as exc:
            lost = True
            report.error = str(exc)
            log.warning("garbage collection stopped: %s", exc)
        except _Stopped:
            report.error = "stopped between two batches: the server is shutting down"
            log.info("garbage collection %s", report.error)
        finally:
            report.duration_seconds = time.monotonic() - started
            if not lost:
                lease.release()
        log.info(
            "garbage collection %s%s: %d links removed, %d blobs deleted (%d bytes), %d orphan files, %.2f s",
            "dry run " if dry_run else "",
            "finished" if report.completed else "stopped",
            report.links_removed,
            report.blobs_deleted,
            report.bytes_freed,
            report.orphan_files,
            report.duration_seconds,
        )
        return report

    def _between_batches(self, lease: Lease) -> None:
        """After each batch's commit: stop if asked to, else keep the lease."""
        if self.stop.is_set():
            raise _Stopped
        lease.renew()

    # --- 1: links no manifest needs -----------------------------------------------------------------------

    def _unlink(self, report: GcReport, cutoff: datetime, lease: Lease, writer: _BatchWriter, dry_run: bool) -> None:
        def candidates(after: tuple[int, str]) -> Sequence[Row[int, str]]:
            with self.db.read() as session:
                return session.execute(
                    select(RepositoryBlob.repository_id, RepositoryBlob.digest)
                    .where(
                        RepositoryBlob.linked_at < cutoff,
                        # A row-value comparison: SQLite (>= 3.15) seeks the primary key with it, where the
                        # spelled-out "a > x OR (a = x AND b > y)" form scanned the index from the start on
                        # every batch (quadratic in the number of links; EXPLAIN QUERY PLAN says SCAN).
                        tuple_(RepositoryBlob.repository_id, RepositoryBlob.digest) > tuple_(*after),
                        _unreferenced_in_repository(),
                    )
                    .order_by(RepositoryBlob.repository_id, RepositoryBlob.digest)
                    .limit(self.link_batch_size)
                ).all()

        # Built once: a statement per batch cost more to construct and cache-key than SQLite took to run it.
        unlink = delete(RepositoryBlob).where(
            RepositoryBlob.repository_id == bindparam("repository_id"),
            RepositoryBlob.digest.in_(bindparam("digests", expanding=True)),
            RepositoryBlob.linked_at < cutoff,
            _unreferenced_in_repository(),
        )
        with closing(_read_ahead(candidates, (-1, ""), lambda row: (row[0], row[1]))) as batches:
            for rows in batches:
                if dry_run:
                    report.links_removed += len(rows)
                    continue
                by_repository: dict[int, list[str]] = {}
                for repository_id, digest in rows:
                    by_repository.setdefault(repository_id, []).append(digest)
                with writer.transaction() as connection:
                    # One statement per repository: "repository_id = ? AND digest IN (…)" seeks the primary
                    # key, while "(repository_id, digest) IN (VALUES …)" made SQLite scan the links table.
                    for repository_id, digests in by_repository.items():
                        result = connection.execute(unlink, {"repository_id": repository_id, "digests": digests})
                        report.links_removed += int(result.rowcount or 0)
                self._between_batches(lease)

    # --- 2: content no repository links -------------------------------------------------------------------

    def _delete_content(
        self, report: GcReport, cutoff: datetime, lease: Lease, writer: _BatchWriter, dry_run: bool
    ) -> None:
        if dry_run:
            # Nothing was unlinked: count blobs that have no link that would survive pass 1.
            surviving_link = exists().where(
                RepositoryBlob.digest == Blob.digest,
                (RepositoryBlob.linked_at >= cutoff) | ~_unreferenced_in_repository(),
            )
            unlinked = ~surviving_link
        else:
            unlinked = ~exists().where(RepositoryBlob.digest == Blob.digest)

        def candidates(after: str) -> Sequence[Row[str, int]]:
            with self.db.read() as session:
                return session.execute(
                    select(Blob.digest, Blob.size)
                    .where(Blob.digest > after, Blob.created_at < cutoff, unlinked)
                    .order_by(Blob.digest)
                    .limit(self.batch_size)
                ).all()

        # Re-checked under the write lock: a link or a fresh upload may have arrived since the read.
        doomed_rows = select(Blob.digest, Blob.size).where(
            Blob.digest.in_(bindparam("digests", expanding=True)),
            Blob.created_at < cutoff,
            ~exists().where(RepositoryBlob.digest == Blob.digest),
        )
        remove = delete(Blob).where(Blob.digest.in_(bindparam("digests", expanding=True)))
        with ExitStack() as stack:
            batches = stack.enter_context(closing(_read_ahead(candidates, "", lambda row: row[0])))
            pool = None
            if not dry_run and self.delete_workers > 1:
                pool = stack.enter_context(
                    ThreadPoolExecutor(max_workers=self.delete_workers, thread_name_prefix="gc-delete")
                )
            for rows in batches:
                if dry_run:
                    report.blobs_deleted += len(rows)
                    report.bytes_freed += sum(size for _, size in rows)
                    continue
                with writer.transaction() as connection:
                    doomed = connection.execute(doomed_rows, {"digests": [digest for digest, _ in rows]}).all()
                    if doomed:
                        names = [digest for digest, _ in doomed]
                        # The files go while SQLite deletes the rows (it releases the GIL meanwhile); both
                        # happen before the commit, so a crash leaves what the module docstring describes.
                        with self._deleting_files(pool, names):
                            connection.execute(remove, {"digests": names})
                        if self.test_delay:
                            time.sleep(self.test_delay)
                report.blobs_deleted += len(doomed)
                report.bytes_freed += sum(size for _, size in doomed)
                self._between_batches(lease)

    @contextmanager
    def _deleting_files(self, pool: ThreadPoolExecutor | None, names: list[str]) -> Iterator[None]:
        """Delete one batch's files while the body runs; on exit every worker has stopped, and the first
        failure is raised (rolling the transaction back)."""
        if pool is None or len(names) < 2:
            yield
            for name in names:
                self.blobs.delete(Digest.parse(name))
            return
        queue = deque(names)  # deque.popleft is atomic: each worker takes the next file until none is left

        def drain() -> None:
            while True:
                try:
                    name = queue.popleft()
                except IndexError:
                    return
                self.blobs.delete(Digest.parse(name))

        workers = [pool.submit(drain) for _ in range(min(self.delete_workers, len(names)))]
        try:
            yield
        except BaseException:
            queue.clear()
            raise
        finally:
            wait(workers)
        for worker in workers:
            worker.result()

    # --- 3: files without a row ---------------------------------------------------------------------------

    def _delete_orphans(
        self, report: GcReport, cutoff: datetime, lease: Lease, writer: _BatchWriter, dry_run: bool
    ) -> None:
        for chunk in _chunks(self.blobs.iter_digests(), self.batch_size):
            names = [str(digest) for digest in chunk]
            with self.db.read() as session:
                known = set(session.scalars(select(Blob.digest).where(Blob.digest.in_(names))))
            orphans = [digest for digest in chunk if str(digest) not in known and self._old(digest, cutoff)]
            if not orphans:
                continue
            if dry_run:
                report.orphan_files += len(orphans)
                report.bytes_freed += sum(self.blobs.size(digest) or 0 for digest in orphans)
                continue
            with writer.transaction() as connection:
                still_known = set(
                    connection.scalars(select(Blob.digest).where(Blob.digest.in_([str(d) for d in orphans])))
                )
                for digest in orphans:
                    if str(digest) in still_known:
                        continue
                    size = self.blobs.size(digest) or 0
                    if self.blobs.delete(digest):
                        report.orphan_files += 1
                        report.bytes_freed += size
            self._between_batches(lease)

    def _old(self, digest: Digest, cutoff: datetime) -> bool:
        """Older than the grace window: never content a commit stored moments ago whose transaction (and
        ``blobs`` row) may not have committed yet (on a database without SQLite's single writer the row check
        alone cannot see it)."""
        modified = self.blobs.modified(digest)
        return modified is not None and modified < cutoff

    # --- helpers for reporting ----------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Rows and links right now (for tests and the benchmark)."""
        with self.db.read() as session:
            return {
                "blobs": session.scalar(select(func.count()).select_from(Blob)) or 0,
                "links": session.scalar(select(func.count()).select_from(RepositoryBlob)) or 0,
            }


class _BatchWriter:
    """The collector's write transactions: one connection for the run, its WAL checkpoints on a thread.

    SQLite checkpoints the WAL (copies committed pages into the database file and fsyncs it) inside
    whichever commit crosses ``wal_autocheckpoint`` pages, on the committing thread. A GC batch dirties
    hundreds of pages, so every second batch paid a checkpoint, and its fsyncs, with nothing else going on
    (measured: taking checkpoints off that path saved 4-8 s of a 100,000-blob collection, more than the
    checkpoints' own time, as their fsyncs had also been stalling the unlinks of the following batches).
    Here the collector's connection does not checkpoint when it commits: a background
    thread runs ``PRAGMA wal_checkpoint(PASSIVE)`` (which never blocks a writer or a reader) while the next
    batch works. SQLite rewinds the log only in a transaction that began with every frame checkpointed, so
    once the WAL exceeds :data:`WAL_RESTART_FRAMES` the next transaction waits for the checkpoint before it
    begins (outside the write lock); the log stays a few batches long. The connection's own setting is
    restored before it returns to the pool, and other connections checkpoint as always. The connection is
    only opened by the first transaction, so a dry run changes nothing.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._stack = ExitStack()
        self._connection: Connection | None = None
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpoint: Future[None] | None = None
        self._wal_frames = 0

    def __enter__(self) -> _BatchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()  # waits for the checkpoint in flight, restores the setting, returns the connection

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A ``BEGIN IMMEDIATE`` transaction, committed on success and rolled back on any exception."""
        connection = self._connection or self._open()
        if self._checkpoint is not None and self._wal_frames > WAL_RESTART_FRAMES:
            self._checkpoint.result()
        with connection.begin():
            hold_lock(connection, CONTENT_LOCK)  # no link, mount or reference check runs meanwhile
            yield connection
        # At most one checkpoint waits in the queue: when it starts, it covers every commit before it.
        if self._checkpointer is not None and (
            self._checkpoint is None or self._checkpoint.running() or self._checkpoint.done()
        ):
            self._checkpoint = self._checkpointer.submit(self._run_checkpoint)

    def _open(self) -> Connection:
        connection = self._stack.enter_context(self.db.write_engine.connect())
        self._connection = connection
        if self.db.write_engine.dialect.name != "sqlite":
            return connection
        driver = connection.connection.driver_connection
        assert driver is not None
        saved = int(driver.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        driver.execute("PRAGMA wal_autocheckpoint=0")

        def restore() -> None:
            try:
                driver.execute(f"PRAGMA wal_autocheckpoint={saved}")
            except Exception:
                log.warning("could not restore wal_autocheckpoint; discarding the connection", exc_info=True)
                connection.invalidate()

        self._stack.callback(restore)
        self._checkpointer = self._stack.enter_context(
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="gc-checkpoint")
        )
        return connection

    def _run_checkpoint(self) -> None:
        try:
            raw = self.db.write_engine.raw_connection()
            try:
                driver = raw.driver_connection
                assert driver is not None
                _busy, frames, _copied = driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                self._wal_frames = frames
            finally:
                raw.close()
        except Exception:  # an optimisation only: any connection's next commit can checkpoint instead
            log.warning("WAL checkpoint failed", exc_info=True)


def _read_ahead(
    fetch: Callable[[K], Sequence[R]], start: K, key: Callable[[R], K]
) -> Generator[Sequence[R], None, None]:
    """Keyset-paged batches ``fetch(after)``, each next one already being read while the caller works on the
    last (close the generator to stop; it waits for the read in flight)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gc-read") as reader:
        pending = reader.submit(fetch, start)
        while rows := pending.result():
            pending = reader.submit(fetch, key(rows[-1]))
            yield rows


def _chunks(items: Iterator[Digest], size: int) -> Iterator[list[Digest]]:
    chunk: list[Digest] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


__all__ = ["DEFAULT_GRACE", "TOUCH_FRACTION", "GarbageCollector", "GcReport"]
