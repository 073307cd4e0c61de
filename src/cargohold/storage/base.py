"""The blob-store interface the registry talks to.

The HTTP layer never touches paths or object keys: it asks a :class:`BlobStore` where a blob can be served
from (:class:`LocalFile` for zero-copy sendfile, :class:`Redirect` to a presigned object-storage/CDN URL, or
:class:`Streamed` through the server from :meth:`BlobStore.open_blob`), writes uploads through
:class:`UploadWriter`, and commits them. Keeping this surface small is what lets an S3-compatible store slot
in without touching the routes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cargohold.oci.digest import Digest


@dataclass(frozen=True, slots=True)
class LocalFile:
    """Serve these bytes straight from a local file (sendfile)."""

    path: Path
    size: int


@dataclass(frozen=True, slots=True)
class Redirect:
    """Serve by redirecting the client (e.g. to a presigned URL)."""

    url: str
    size: int


@dataclass(frozen=True, slots=True)
class Streamed:
    """Serve by streaming :meth:`BlobStore.open_blob` through the server (object storage, redirects off)."""

    size: int


BlobLocation = LocalFile | Redirect | Streamed


class UnknownUpload(LookupError):
    """The upload session has no staging area (never created, cancelled, purged): every store raises this one."""


class UploadBusy(Exception):
    """Another process (another replica) holds the upload session's lock right now."""


class UploadWriter(ABC):
    """Appends bytes to one upload session's staging area. Not thread-safe: one writer per request."""

    @abstractmethod
    def write(self, data: bytes | memoryview) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


class BlobStore(ABC):
    """Content-addressed blob storage plus the staging area for in-progress uploads."""

    chunk_min_length: int = 0
    """The smallest upload chunk the store can take efficiently (S3's multipart minimum), advertised to clients
    as ``OCI-Chunk-Min-Length`` when larger than the server's own setting; 0: any size."""

    locate_blocks: bool = True
    """Whether :meth:`locate` with a ``known_size`` may wait on I/O (the filesystem store's ``stat``). A store
    that answers from memory (a presigned URL) says False, and the blob GET path then calls it on the event
    loop instead of paying a thread-pool round trip per request."""

    @abstractmethod
    def locate(self, digest: Digest, known_size: int | None = None) -> BlobLocation | None:
        """Where to serve ``digest`` from, or None if the content is not stored.

        ``known_size`` is the size the metadata records for a linked blob: a store for which checking costs a
        network request may trust it instead (the filesystem store checks anyway: a ``stat`` is cheap).
        """

    @abstractmethod
    def size(self, digest: Digest) -> int | None:
        """Stored size of ``digest``, or None if absent."""

    @abstractmethod
    def open_blob(self, digest: Digest, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Stream a stored blob's bytes from ``start`` up to ``end`` (exclusive; None: the end), for reads that
        cannot use :meth:`locate` (server-side copies, object storage with redirects off)."""

    @abstractmethod
    def delete(self, digest: Digest) -> bool:
        """Remove stored content; True if something was removed."""

    @abstractmethod
    def iter_digests(self) -> Iterator[Digest]:
        """Every digest with stored content (for garbage collection)."""

    # --- upload staging ---------------------------------------------------------------------------------

    @abstractmethod
    def create_upload(self, upload_id: str) -> None:
        """Create an empty staging area for a new upload session."""

    @abstractmethod
    def upload_size(self, upload_id: str) -> int | None:
        """Bytes staged so far, or None if the session's staging area does not exist."""

    @abstractmethod
    def open_upload(self, upload_id: str) -> UploadWriter:
        """Open the session's staging area for appending; :class:`UnknownUpload` if it does not exist."""

    @abstractmethod
    def read_upload(self, upload_id: str) -> Iterator[bytes]:
        """Stream the staged bytes (to rebuild hash state after a server restart, or to hash them with another
        algorithm); :class:`UnknownUpload` if the staging area does not exist."""

    @abstractmethod
    def persist_upload(self, upload_id: str) -> int:
        """Make the staged bytes durable (fsync) before they are committed; returns their size.
        :class:`UnknownUpload` if the staging area does not exist."""

    @abstractmethod
    def commit_upload(self, upload_id: str, digest: Digest) -> None:
        """Atomically move verified, persisted staged bytes into the content store under ``digest``.

        Callers must have verified the digest first. The content becomes visible all at once or not at
        all; committing content that is already stored replaces it with identical bytes and succeeds.
        This step is quick, so the metadata layer can run it inside its write transaction.
        """

    @abstractmethod
    def remove_upload(self, upload_id: str) -> None:
        """Discard a session's staged bytes (cancel, or after a failed digest check)."""

    @abstractmethod
    def iter_uploads(self) -> Iterator[tuple[str, datetime]]:
        """``(upload_id, last_modified)`` for every staged upload (for purging stale sessions)."""

    def lock_upload(self, upload_id: str) -> Callable[[], None]:
        """Take the upload's cross-process lock without waiting; returns the function that releases it.

        Several server processes (replicas) may receive requests for one upload session. Where committing
        makes the staging area itself the blob (the filesystem renames the staged file), a writer in another
        process must never hold it while it is committed, or bytes written after the digest check would land
        in a verified blob. Raises :class:`UploadBusy` when another process holds the lock and
        :class:`UnknownUpload` when the staging area is gone. The default takes no lock: a store whose commit
        names exactly the parts it verified (S3 multipart) needs none.
        """
        return _release_nothing

    def check(self) -> None:
        """Raise if the store cannot be reached (the readiness check of ``/healthz``; blocking, cheap).

        The default asks for one staged upload, a real round trip on any backend; stores override it with
        something cheaper or more telling.
        """
        next(iter(self.iter_uploads()), None)

    def modified(self, digest: Digest) -> datetime | None:
        """When ``digest``'s content was stored (garbage collection spares orphans younger than its grace
        window: they may belong to a commit whose transaction has not committed yet); None if absent."""
        location = self.locate(digest)
        if isinstance(location, LocalFile):
            try:
                return datetime.fromtimestamp(location.path.stat().st_mtime, tz=UTC)
            except FileNotFoundError:
                return None
        raise NotImplementedError(f"{type(self).__name__} must say when its content was stored")

    def filesystem_path(self) -> Path | None:
        """A directory on the local filesystem holding the content, whose free space the server watches.

        None for stores without one (object storage): there, quota errors answer like a full disk instead
        (see cargohold.storage.faults).
        """
        return None


def _release_nothing() -> None:
    return None
