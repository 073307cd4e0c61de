"""Upload sessions: open, append, status, commit (-> the stored blob), cancel. One owner for one upload.

An upload session lives in three places: its row in the metadata store (which repository, which credential,
when it was last touched), its staged bytes in the blob store, and its running hash in this process's
memory. :class:`UploadSessions` is the only code that touches all three, so every rule that spans them is
here:

* **Staging and hashing.** Bytes stream from the request to the staging area in batches, each batch written
  and hashed together on a worker thread, so memory stays flat whatever the blob size and the digest is
  known the moment the last byte lands. The staged bytes only ever grow by whole writes, so their size is
  always a consistent offset to resume from: after a dropped connection, a server shutdown (which cuts bodies
  being received) or a crash. Python's hash objects cannot be serialised, so the running hash lives in
  memory next to the byte count it covers; if it is missing or stale (a restart, a failed write) it is
  rebuilt once from the staged bytes. The algorithm is sha256 unless the client chose another when it
  opened the session; committing with a digest of another algorithm costs one pass over the staged bytes.
* **Locking.** :meth:`UploadSessions.session` holds the session's lock for the whole request, which keeps
  concurrent PATCHes from interleaving bytes and keeps the staged size and the running hash in step. With
  several server processes (replicas) sharing the blob store, the lock is two: an ``asyncio.Lock`` orders
  this process's requests, and the blob store's cross-process lock (``BlobStore.lock_upload``; ``flock`` on
  the staged file) keeps another process from writing while this one appends or commits. Without it, bytes
  another replica appended after the digest check would be renamed into the blob, under a digest they do
  not match, replacing a good copy other repositories link.
* **The per-credential cap.** Opening a session counts the credential's open sessions in the same write
  transaction that records the new one, so parallel requests cannot overshoot.
* **Space admission.** A request is measured against the free-space minimum before its first byte is staged
  (:mod:`cargohold.domain.space`), and re-measured while it streams.
* **Storage faults.** A full disk, an I/O error or a staging area that vanished leaves nothing worth
  resuming, and staged bytes left behind would keep the disk full until the TTL passes: the session and its
  bytes go at once, with one log line, and the caller gets one :class:`~cargohold.domain.errors.DomainError`.
* **Commit.** The digest is checked against the running hash, the staged bytes are made durable, and then
  one metadata write transaction links the blob into the repository, forgets the session and, while it holds
  the write lock, moves the bytes into the content store. Garbage collection deletes content only under the
  same lock, so it can never remove a blob between its commit and its link. All of that is one trip to the
  thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from cargohold.clock import WallClock, utc_now
from cargohold.domain import errors
from cargohold.domain.space import SpaceMonitor, admit_upload, refused_for_space, storage_error
from cargohold.domain.threads import Runner
from cargohold.isotime import format_iso
from cargohold.metadata.errors import TooManyUploads
from cargohold.metadata.store import MetadataStore, UploadRecord
from cargohold.oci.digest import Digest, Hasher, new_hasher
from cargohold.storage.base import BlobStore, UnknownUpload, UploadBusy, UploadWriter
from cargohold.storage.faults import classify
from cargohold.storage.space import Claim
from cargohold.storage.space import StorageFull as BelowMinimum

log = logging.getLogger(__name__)

STREAM_BATCH = 1 << 20
"""Bytes gathered from the request before one write+hash step on a worker thread."""
CAP_RETRY_AFTER_SECONDS = 5
"""What a client over the per-credential session cap is told to wait: slots free as its other uploads end."""
UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")
BUSY_WAIT_SECONDS = 5.0
"""How long a request waits for another process's request on the same upload to finish before answering 429."""
BUSY_POLL_SECONDS = 0.05
BUSY_RETRY_AFTER_SECONDS = 1
"""Session IDs are ours (``uuid4().hex``); anything else names no session."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class UploadLimits:
    max_blob_size: int
    """Largest blob accepted; protects the disk from an endless upload."""
    max_per_credential: int
    """Open sessions one credential may hold (0: no cap)."""
    ttl: timedelta
    """Sessions idle for longer have expired (and are purged with their staged bytes)."""


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """What a commit produced: the blob, now readable in the session's repository."""

    digest: Digest
    size: int


@dataclass
class _Progress:
    algorithm: str
    hasher: Hasher
    offset: int = 0
    """Bytes covered by ``hasher``; equals the staged size when the state is current."""


def _release_nothing() -> None:
    return None


def unknown_upload(upload_id: str) -> errors.NotFound:
    return errors.NotFound(
        f"upload {upload_id} is not in progress here (finished, cancelled or expired); start a new upload",
        subject="upload",
        detail={"upload": upload_id},
    )


def too_large(limit: int) -> errors.TooLarge:
    return errors.TooLarge(f"blob exceeds this registry's limit of {limit} bytes", limit=limit)


class UploadSessions:
    """Every upload session of one server process (see the module docstring for what it guarantees)."""

    def __init__(
        self,
        blobs: BlobStore,
        metadata: MetadataStore,
        run: Runner,
        limits: UploadLimits,
        *,
        space: SpaceMonitor | None = None,
        clock: WallClock = utc_now,
    ) -> None:
        self.blobs = blobs
        self.metadata = metadata
        self.run = run
        self.limits = limits
        self.space = space
        self.clock = clock
        self._progress: dict[str, _Progress] = {}
        self._algorithms: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # --- opening and finding sessions ---------------------------------------------------------------------

    async def open(
        self, repository: str, *, credential_id: str | None, algorithm: str = "sha256", incoming: int = 0
    ) -> UploadSession:
        """Start a session (counted against ``credential_id``'s cap) with an empty staging area.

        Refused up front when storage is low, before the session exists or a byte is staged; ``incoming`` is
        what the opening request announces it will send right away (a monolithic upload).
        """
        try:
            (await admit_upload(self.space, self.run, incoming)).release()
        except BelowMinimum as exc:
            raise refused_for_space(self.space, exc, f"a new upload to {repository}") from None
        upload_id = uuid.uuid4().hex
        session = UploadSession(self, UploadRecord(upload_id, repository, self.clock(), credential_id))
        await session._guarded(self.run(self._create, repository, upload_id, credential_id))
        self._progress[upload_id] = _Progress(algorithm, new_hasher(algorithm))
        self._algorithms[upload_id] = algorithm
        return session

    def _create(self, repository: str, upload_id: str, credential_id: str | None) -> None:
        """Record the session, then create its staging area (one worker-thread step; no row without a file)."""
        cap = self.limits.max_per_credential if credential_id is not None else 0
        now = self.clock()
        try:
            self.metadata.create_upload(
                repository,
                upload_id,
                credential_id=credential_id,
                max_open=cap,
                active_since=now - self.limits.ttl,
                now=now,
            )
        except TooManyUploads:
            raise errors.TooMany(
                f"this credential already has {cap} upload sessions open, the most this registry allows; finish or "
                "cancel some (DELETE their Location) and retry",
                retry_after=CAP_RETRY_AFTER_SECONDS,
                subject="upload",
                detail={"limit": cap},
            ) from None
        try:
            self.blobs.create_upload(upload_id)
        except BaseException:
            self.metadata.delete_upload(upload_id)
            raise

    async def find(self, repository: str, upload_id: str) -> UploadRecord:
        """The session ``upload_id`` of ``repository`` (no lock taken); :class:`NotFound` if there is none."""
        if not UPLOAD_ID_RE.match(upload_id):
            raise unknown_upload(upload_id)
        record = await self.run(self.metadata.get_upload, upload_id)
        if record is None or record.repository != repository:
            raise unknown_upload(upload_id)
        return record

    async def staged_size(self, repository: str, upload_id: str) -> int:
        """How many bytes the session holds (what a client resumes from): one worker-thread step.

        Under the session's lock, like every other request on the session: a client whose PATCH broke off
        asks this at once, while the server may still be staging the bytes that did arrive. Without the lock
        it would read a size in between, and resuming from there is either refused or (from 0, where a client
        may send no ``Content-Range``) appended to the bytes staged meanwhile: a corrupt upload.
        """
        if not UPLOAD_ID_RE.match(upload_id):
            raise unknown_upload(upload_id)
        async with self._held(upload_id):
            record, size = await self.run(self._load, upload_id)
        if record is None or record.repository != repository or size is None:
            raise unknown_upload(upload_id)
        return size

    def _load(self, upload_id: str) -> tuple[UploadRecord | None, int | None]:
        record = self.metadata.get_upload(upload_id)
        return record, (self.blobs.upload_size(upload_id) if record is not None else None)

    @contextlib.asynccontextmanager
    async def _held(self, upload_id: str) -> AsyncIterator[None]:
        """Hold the session's lock; forget the lock afterwards if the session ended meanwhile."""
        lock = self._locks.setdefault(upload_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and upload_id not in self._progress:
                self._locks.pop(upload_id, None)

    @contextlib.asynccontextmanager
    async def session(self, repository: str, upload_id: str) -> AsyncIterator[UploadSession]:
        """Hold session ``upload_id`` of ``repository`` for one request: its lock, its record, its hash state.

        Raises :class:`NotFound` when there is no such session, or when its staging area vanished (the session
        is then removed).
        """
        if not UPLOAD_ID_RE.match(upload_id):
            raise unknown_upload(upload_id)
        async with self._held(upload_id):
            release, record, size = await self._lock_and_load(upload_id)
            try:
                if record is None or record.repository != repository:
                    raise unknown_upload(upload_id)
                session = UploadSession(self, record)
                await session._guarded(session._catch_up(size))
                yield session
            finally:
                release()

    async def _lock_and_load(self, upload_id: str) -> tuple[Callable[[], None], UploadRecord | None, int | None]:
        """The session's cross-process lock (another replica may be serving a request of this upload; wait
        up to :data:`BUSY_WAIT_SECONDS` for it), then its record and staged size: one worker-thread step."""
        deadline = time.monotonic() + BUSY_WAIT_SECONDS
        while True:
            try:
                return await self.run(self._locked_load, upload_id)
            except UploadBusy:
                if time.monotonic() >= deadline:
                    raise errors.TooMany(
                        f"upload {upload_id} is being written by another request (through another server); "
                        "retry in a moment, from the offset GET on the upload reports",
                        retry_after=BUSY_RETRY_AFTER_SECONDS,
                        subject="upload",
                        detail={"upload": upload_id},
                    ) from None
                await asyncio.sleep(BUSY_POLL_SECONDS)

    def _locked_load(self, upload_id: str) -> tuple[Callable[[], None], UploadRecord | None, int | None]:
        try:
            release = self.blobs.lock_upload(upload_id)
        except UnknownUpload:  # the staging area is gone: _load reports it, and the session goes
            release = _release_nothing
        try:
            record, size = self._load(upload_id)
        except BaseException:
            release()
            raise
        return release, record, size

    async def upload_whole(
        self,
        repository: str,
        digest: Digest,
        chunks: AsyncIterable[bytes],
        *,
        declared: int | None,
        credential_id: str | None,
    ) -> StoredBlob:
        """A monolithic upload (``POST ?digest=``): open a session, stage the body, commit it as ``digest``.

        Nothing of it stays behind when any step fails: the session is discarded, whatever the error.
        """
        session = await self.open(
            repository, credential_id=credential_id, algorithm=digest.algorithm, incoming=declared or 0
        )
        async with self._held(session.id):
            try:
                await session.append(chunks, declared=declared)
            except BaseException:
                await session._discard()
                raise
            return await session.commit(digest)

    async def mount(self, repository: str, source: str, digest: Digest) -> int | None:
        """Link ``digest`` into ``repository`` if ``source`` holds it (the caller checked it may read ``source``);
        its size, or None when ``source`` does not have it."""
        return await self.run(self.metadata.mount_blob, repository, source, str(digest))

    async def cancel(self, record: UploadRecord) -> None:
        """Remove a session: its staged bytes first (that is what frees space), then its row."""
        await UploadSession(self, record)._discard()

    # --- housekeeping -------------------------------------------------------------------------------------

    def purge_stale(self, now: datetime | None = None) -> int:
        """Remove sessions idle for longer than the TTL, and staged bytes no session owns (blocking)."""
        now = now or self.clock()
        cutoff = now - self.limits.ttl
        removed = 0
        for upload_id in self.metadata.stale_uploads(cutoff):
            self.blobs.remove_upload(upload_id)
            self.metadata.delete_upload(upload_id)
            removed += 1
        known = self.metadata.upload_ids()
        for upload_id, modified in list(self.blobs.iter_uploads()):
            if upload_id not in known and modified < cutoff:
                self.blobs.remove_upload(upload_id)
                removed += 1
        if removed:
            log.info("purged %d stale upload session(s) idle since before %s", removed, format_iso(cutoff))
        return removed

    def _forget(self, upload_id: str) -> None:
        self._progress.pop(upload_id, None)
        self._algorithms.pop(upload_id, None)
        lock = self._locks.get(upload_id)
        if lock is not None and not lock.locked():
            del self._locks[upload_id]


class UploadSession:
    """One upload session, held for one request (see :meth:`UploadSessions.session`)."""

    def __init__(self, sessions: UploadSessions, record: UploadRecord) -> None:
        self._sessions = sessions
        self.record = record
        self._writer: UploadWriter | None = None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def repository(self) -> str:
        return self.record.repository

    @property
    def offset(self) -> int:
        """Bytes staged so far: where the next chunk starts."""
        progress = self._sessions._progress.get(self.id)
        return progress.offset if progress is not None else 0

    async def append(self, chunks: AsyncIterable[bytes], *, declared: int | None) -> int:
        """Stream ``chunks`` onto the staged bytes; returns how many arrived.

        ``declared`` is the length the request announced (its ``Content-Length``), checked against the size
        limit and the free space before a byte is staged. If ``chunks`` stops with an error (the client
        stalled or went away, the server is draining), every byte that did arrive is staged before the error
        goes on: the session stays resumable from :attr:`offset`.
        """
        return await self._guarded(self._receive(chunks, declared))

    async def touch(self) -> None:
        """Mark the session active now (its TTL counts from the last request)."""
        await self._guarded(self._sessions.run(self._sessions.metadata.touch_upload, self.id))

    async def commit(self, digest: Digest) -> StoredBlob:
        """Verify the staged bytes against ``digest`` and store them as that blob in the session's repository.

        A mismatch discards the upload (:class:`Invalid`, subject ``digest``). Otherwise one worker-thread
        step makes the bytes durable and runs one write transaction that links the blob, forgets the session
        and moves the bytes into the content store.
        """
        return await self._guarded(self._commit(digest))

    async def cancel(self) -> None:
        await self._discard()

    # --- internals ----------------------------------------------------------------------------------------

    async def _catch_up(self, staged: int | None) -> None:
        """Make the running hash cover exactly the staged bytes, rebuilding it from them if it does not."""
        sessions = self._sessions
        if staged is None:  # the session exists but its staging area is gone
            raise UnknownUpload(self.id)
        progress = sessions._progress.get(self.id)
        if progress is None or progress.offset != staged:
            algorithm = sessions._algorithms.get(self.id, "sha256")
            progress = _Progress(algorithm, new_hasher(algorithm))
            sessions._progress[self.id] = progress
            sessions._algorithms[self.id] = algorithm
            await sessions.run(self._rehash, progress)

    def _rehash(self, progress: _Progress) -> None:
        for chunk in self._sessions.blobs.read_upload(self.id):
            progress.hasher.update(chunk)
            progress.offset += len(chunk)

    def _progress(self) -> _Progress:
        progress = self._sessions._progress.get(self.id)
        if progress is None:  # forgotten meanwhile (cancelled by another request)
            raise UnknownUpload(self.id)
        return progress

    def _write(self, progress: _Progress, data: bytes, claim: Claim, *, last: bool) -> None:
        """One worker-thread step: open the staging area if needed, write and hash ``data``, close if ``last``."""
        claim.writing(len(data))  # re-measures free space every few MiB; raises before crossing the minimum
        if self._writer is None:
            self._writer = self._sessions.blobs.open_upload(self.id)
        self._writer.write(data)
        progress.hasher.update(data)
        progress.offset += len(data)
        if last:
            self._close_writer()

    def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    async def _receive(self, chunks: AsyncIterable[bytes], declared: int | None) -> int:
        sessions = self._sessions
        limit = sessions.limits.max_blob_size
        progress = self._progress()
        if declared is not None and progress.offset + declared > limit:
            raise too_large(limit)
        # Admission before a byte is staged: with the announced length up front, else at the first chunk (an
        # empty body, such as the final PUT of a chunked upload, needs no space, is never refused, and costs
        # no trip to the staging area at all).
        claim = await admit_upload(sessions.space, sessions.run, declared) if declared else None
        received = 0
        pending: list[bytes] = []
        pending_size = 0
        iterator = aiter(chunks)
        try:
            while True:
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    break
                except Exception:
                    # Stalled or cut off: keep every byte that did arrive, so the session stays resumable from
                    # the offset it reports and a resume sends only the rest.
                    if pending and claim is not None:
                        await sessions.run(self._write, progress, b"".join(pending), claim, last=True)
                    raise
                if claim is None:
                    claim = await admit_upload(sessions.space, sessions.run, 0)
                received += len(chunk)
                if progress.offset + pending_size + len(chunk) > limit:
                    raise too_large(limit)
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= STREAM_BATCH:
                    await sessions.run(self._write, progress, b"".join(pending), claim, last=False)
                    pending, pending_size = [], 0
            if pending and claim is not None:
                await sessions.run(self._write, progress, b"".join(pending), claim, last=True)
        finally:
            if self._writer is not None:
                await sessions.run(self._close_writer)
            if claim is not None:
                claim.release()
            if isinstance(iterator, AsyncGenerator):
                await iterator.aclose()  # a body source holding the request (see drain.receiving) lets go now
        return received

    async def _commit(self, digest: Digest) -> StoredBlob:
        sessions = self._sessions
        progress = self._progress()
        if progress.algorithm == digest.algorithm:
            actual = progress.hasher.hexdigest()
        else:
            actual = await sessions.run(self._hash_staged, digest.algorithm)
        if actual != digest.hex:
            await self._discard()
            raise errors.Invalid(
                f"uploaded content has digest {digest.algorithm}:{actual}, not {digest}; the upload was discarded",
                subject="digest",
                detail={"expected": str(digest), "actual": f"{digest.algorithm}:{actual}"},
            )
        size = await sessions.run(self._store, digest)
        sessions._forget(self.id)
        return StoredBlob(digest, size)

    def _hash_staged(self, algorithm: str) -> str:
        hasher = new_hasher(algorithm)
        for chunk in self._sessions.blobs.read_upload(self.id):
            hasher.update(chunk)
        return hasher.hexdigest()

    def _store(self, digest: Digest) -> int:
        """Durable bytes, then one write transaction: link, forget the session, move the bytes in (last, so a
        failed move rolls the rows back and the session stays to be discarded).

        Content the registry already holds (the same layer pushed by another project) is not moved in again:
        the staged copy is dropped after the transaction. On a bucket that saves the server-side copy of the
        whole blob, which on SQLite runs under the write lock. The store is asked first, under the
        transaction's content lock (garbage collection cannot delete meanwhile), because a crash during a
        collection can leave a ``blobs`` row whose bytes are gone (see cargohold.lifecycle.gc); then the
        staged bytes are moved in as for new content.
        """
        blobs = self._sessions.blobs
        size = blobs.persist_upload(self.id)
        with self._sessions.metadata.transaction() as transaction:
            new_content = transaction.link_blob(self.repository, str(digest), size)
            transaction.delete_upload(self.id)
            stored_already = not new_content and blobs.size(digest) == size
            if not stored_already:
                blobs.commit_upload(self.id, digest)
        if stored_already:
            self._drop_staged()
        return size

    def _drop_staged(self) -> None:
        """Remove the staged bytes of a session already forgotten (best-effort: on failure, the stale-upload
        purge removes bytes no session owns once the upload TTL has passed)."""
        try:
            self._sessions.blobs.remove_upload(self.id)
        except OSError as exc:
            fault = classify(exc)
            if fault is None:
                raise
            log.warning("could not remove the staged copy of upload %s: %s", self.id, fault.describe())

    async def _guarded(self, step: Awaitable[T]) -> T:
        """Run one step; if the storage fails under it, the session and its staged bytes go at once.

        A full disk (ENOSPC, EDQUOT, the free-space minimum), an I/O error (EIO) or a staging area that
        vanished leaves nothing worth resuming. One log line names the upload and the error (no traceback:
        nothing here is a bug).
        """
        try:
            return await step
        except UnknownUpload:
            log.warning(
                "upload %s to %s failed: its staging file vanished; the session was removed", self.id, self.repository
            )
            await self._discard()
            raise unknown_upload(self.id) from None
        except errors.DomainError:
            raise
        except Exception as exc:
            if not isinstance(exc, BelowMinimum) and classify(exc) is None:
                raise
            sessions = self._sessions
            await self._discard()  # first: the answer wakes the space monitor, which must see the room
            error = storage_error(sessions.space, exc, f"upload {self.id} to {self.repository}")
            assert error is not None
            raise error from None

    async def _discard(self) -> None:
        """Remove the session: its staged bytes first (that is what frees space), then its row.

        On a failing disk either step may fail too; the bytes are then purged with the row once the upload TTL
        passes, so a failure here is logged in one line rather than hiding the error being answered.
        """
        sessions = self._sessions
        try:
            await sessions.run(self._remove)
        except Exception as exc:
            fault = classify(exc)
            if fault is None:
                raise
            log.warning("could not remove upload session %s: %s", self.id, fault.describe())
        finally:
            sessions._forget(self.id)

    def _remove(self) -> None:
        self._close_writer()
        self._sessions.blobs.remove_upload(self.id)
        self._sessions.metadata.delete_upload(self.id)


__all__ = [
    "CAP_RETRY_AFTER_SECONDS",
    "STREAM_BATCH",
    "StoredBlob",
    "UploadLimits",
    "UploadSession",
    "UploadSessions",
    "too_large",
    "unknown_upload",
]
