"""The default blob store: content-addressed files under ``<data-dir>/blobs``.

Layout: ``blobs/<algorithm>/<first two hex>/<hex>`` for content, ``uploads/<upload-id>`` for staging.
Both live on the same filesystem so that committing an upload is one atomic ``rename``: a crash at any
moment leaves either no blob or a complete, verified one, never a half-written file under a digest name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from cargohold.oci.digest import ALGORITHMS, Digest
from cargohold.storage.base import BlobStore, LocalFile, UnknownUpload, UploadBusy, UploadWriter
from cargohold.storage.private import create_private_file, make_private_dir

READ_CHUNK = 1 << 20
_UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def _check_upload_id(upload_id: str) -> str:
    """Upload IDs come from URLs: only our own 32-hex-character IDs may ever become a path."""
    if not _UPLOAD_ID_RE.match(upload_id):
        raise UnknownUpload(upload_id)
    return upload_id


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FileUploadWriter(UploadWriter):
    """Appends to a staged upload. Writes and close are serialised: a request cancelled while its write runs
    in a thread (a server shutting down) closes the file only after that write, never under it (a closed
    descriptor's number can be reused by another file at once)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            raise UnknownUpload(path.name) from None

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        with self._lock:
            if self._fd < 0:
                raise ValueError("write to a closed upload")
            while view:
                written = os.write(self._fd, view)
                view = view[written:]

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class FilesystemBlobStore(BlobStore):
    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self._blobs_root = str(self.blobs_dir)
        self.uploads_dir = root / "uploads"
        self.fsync = fsync
        for directory in (self.uploads_dir, *(self.blobs_dir / algorithm for algorithm in ALGORITHMS)):
            make_private_dir(directory)

    def filesystem_path(self) -> Path:
        return self.root

    def check(self) -> None:
        """The blob and staging directories are there and usable (a lost or read-only mount fails here)."""
        for directory in (self.blobs_dir, self.uploads_dir):
            if not directory.is_dir():
                raise FileNotFoundError(f"{directory} is missing or not a directory")
            if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
                raise PermissionError(f"{directory} is not readable and writable by this process")

    def blob_path(self, digest: Digest) -> Path:
        return Path(self._blob_name(digest))

    def _blob_name(self, digest: Digest) -> str:
        # Digest.parse already guarantees an allow-listed algorithm and pure lowercase hex. A plain string:
        # garbage collection deletes files by the hundred thousand, and three pathlib joins per file cost
        # twice the unlink itself in CPU.
        return f"{self._blobs_root}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"

    def locate(self, digest: Digest, known_size: int | None = None) -> LocalFile | None:
        path = self.blob_path(digest)
        try:
            return LocalFile(path, path.stat().st_size)
        except FileNotFoundError:
            return None

    def size(self, digest: Digest) -> int | None:
        located = self.locate(digest)
        return located.size if located else None

    def open_blob(self, digest: Digest, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        with open(self.blob_path(digest), "rb") as handle:
            handle.seek(start)
            left = None if end is None else max(end - start, 0)
            while left != 0 and (chunk := handle.read(READ_CHUNK if left is None else min(READ_CHUNK, left))):
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def delete(self, digest: Digest) -> bool:
        try:
            os.unlink(self._blob_name(digest))
            return True
        except FileNotFoundError:
            return False

    def iter_digests(self) -> Iterator[Digest]:
        for algorithm, length in ALGORITHMS.items():
            base = self.blobs_dir / algorithm
            if not base.is_dir():
                continue
            for prefix in os.scandir(base):
                if not prefix.is_dir():
                    continue
                for entry in os.scandir(prefix.path):
                    if len(entry.name) == length and entry.name.startswith(prefix.name):
                        yield Digest(algorithm, entry.name)

    # --- uploads ------------------------------------------------------------------------------------------

    def _upload_path(self, upload_id: str) -> Path:
        return self.uploads_dir / _check_upload_id(upload_id)

    def create_upload(self, upload_id: str) -> None:
        create_private_file(self._upload_path(upload_id))  # 0600: committing renames it, mode and all

    def upload_size(self, upload_id: str) -> int | None:
        try:
            return self._upload_path(upload_id).stat().st_size
        except (FileNotFoundError, UnknownUpload):
            return None

    def lock_upload(self, upload_id: str) -> Callable[[], None]:
        """``flock`` the staged file (processes on one host and NFSv4 clients see each other's locks).

        The lock is on the file itself, so it moves with it into ``blobs/`` at commit: a process that opened
        the staged file before the commit and then gets the lock finds the session's row gone and writes
        nothing.
        """
        try:
            fd = os.open(self._upload_path(upload_id), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UnknownUpload(upload_id) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UploadBusy(upload_id) from None
        except BaseException:
            os.close(fd)
            raise
        return lambda: os.close(fd)  # closing the descriptor releases the lock

    def open_upload(self, upload_id: str) -> UploadWriter:
        return _FileUploadWriter(self._upload_path(upload_id))

    def read_upload(self, upload_id: str) -> Iterator[bytes]:
        try:
            handle = open(self._upload_path(upload_id), "rb")  # noqa: SIM115 (closed below; the open may fail)
        except FileNotFoundError:
            raise UnknownUpload(upload_id) from None
        with handle:
            while chunk := handle.read(READ_CHUNK):
                yield chunk

    def persist_upload(self, upload_id: str) -> int:
        staged = self._upload_path(upload_id)
        try:
            fd = os.open(staged, os.O_RDONLY)
        except FileNotFoundError:
            raise UnknownUpload(upload_id) from None
        try:
            if self.fsync:
                os.fsync(fd)
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def commit_upload(self, upload_id: str, digest: Digest) -> None:
        staged = self._upload_path(upload_id)
        target = self.blob_path(digest)
        if not target.parent.is_dir():
            make_private_dir(target.parent)
        # rename(2) is atomic and replaces an identical blob committed concurrently by another upload.
        try:
            os.replace(staged, target)
        except FileNotFoundError:
            if not staged.exists():
                raise UnknownUpload(upload_id) from None
            raise
        if self.fsync:
            _fsync_dir(target.parent)

    def remove_upload(self, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError, UnknownUpload):
            self._upload_path(upload_id).unlink()

    def iter_uploads(self) -> Iterator[tuple[str, datetime]]:
        for entry in os.scandir(self.uploads_dir):
            if _UPLOAD_ID_RE.match(entry.name):
                mtime = datetime.fromtimestamp(entry.stat().st_mtime, tz=UTC)
                yield entry.name, mtime
