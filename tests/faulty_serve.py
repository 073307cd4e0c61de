"""``cargohold serve`` with faults injected below the blob store, for tests of the server's own error handling.

Run as ``python tests/faulty_serve.py serve <serve options>`` with ``CARGOHOLD_TEST_FAULT_PLAN`` naming a JSON
file. The server is the real one (real HTTP, real SQLite, real files); only the filesystem blob store is
replaced by :class:`FaultyBlobStore`, which performs every operation for real and raises ``OSError(errno)``
where the plan says, as the kernel would: a disk that fills up (ENOSPC) or fails (EIO) half-way through an
upload, while making it durable (fsync), while committing it (rename), or while garbage collection deletes.

The plan file holds one fault at a time, ``{"op": ..., "errno": 28, "after": 0, "times": 1, "match": ""}``:

* ``op``: ``write`` (staging an upload; ``after`` bytes of the upload land first, the write that crosses
  it stores part of its data and fails), ``persist`` (fsync of a finished upload), ``commit`` (the rename
  into the content store fails) or ``commit-after`` (the rename happens, then an error: the database rolls
  back over a file already in place), ``delete`` (GC unlinking content), ``locate`` (stat of a blob to
  serve), ``read`` (the server reading a stored blob itself, such as an image config when a build is
  saved), ``sendfile`` (the kernel copy of a blob GET, after part of it was sent);
* ``match``: only for blobs whose digest contains it (``delete``, ``locate``, ``read``, ``sendfile``);
* ``times``: how many operations fail; the server counts the ones that did in ``"fired"``, so a test can
  tell that its fault really happened.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from cargohold.oci.digest import Digest
from cargohold.storage.base import LocalFile, UploadWriter
from cargohold.storage.filesystem import FilesystemBlobStore

PLAN_ENV = "CARGOHOLD_TEST_FAULT_PLAN"
_lock = threading.Lock()


def _fire(op: str, subject: str = "", *, offset: int | None = None) -> int | None:
    """The errno to raise for ``op`` now, or None; records the firing in the plan file."""
    path = os.environ.get(PLAN_ENV)
    if not path:
        return None
    with _lock:
        try:
            plan = json.loads(Path(path).read_text() or "{}")
        except FileNotFoundError:
            return None
        if plan.get("op") != op or plan.get("fired", 0) >= plan.get("times", 1):
            return None
        if plan.get("match") and plan["match"] not in subject:
            return None
        if offset is not None and offset < plan.get("after", 0):
            return None
        plan["fired"] = plan.get("fired", 0) + 1
        Path(path).write_text(json.dumps(plan))
        return int(plan["errno"])


def _error(code: int, what: str) -> OSError:
    return OSError(code, os.strerror(code), what)


class _FaultyWriter(UploadWriter):
    def __init__(self, inner: UploadWriter, path: Path) -> None:
        self.inner = inner
        self.path = path
        self.offset = path.stat().st_size

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        code = _fire("write", str(self.path), offset=self.offset + len(view))
        if code is not None:
            keep = max(0, min(len(view), _plan_after() - self.offset))
            self.inner.write(view[:keep])  # part of the data lands, like a short write before ENOSPC
            self.offset += keep
            raise _error(code, str(self.path))
        self.inner.write(view)
        self.offset += len(view)

    def close(self) -> None:
        self.inner.close()


def _plan_after() -> int:
    path = os.environ.get(PLAN_ENV, "")
    try:
        return int(json.loads(Path(path).read_text() or "{}").get("after", 0))
    except (OSError, ValueError):
        return 0


class FaultyBlobStore(FilesystemBlobStore):
    def open_upload(self, upload_id: str) -> UploadWriter:
        return _FaultyWriter(super().open_upload(upload_id), self.uploads_dir / upload_id)

    def persist_upload(self, upload_id: str) -> int:
        if (code := _fire("persist", upload_id)) is not None:
            raise _error(code, str(self.uploads_dir / upload_id))
        return super().persist_upload(upload_id)

    def commit_upload(self, upload_id: str, digest: Digest) -> None:
        if (code := _fire("commit", str(digest))) is not None:
            raise _error(code, str(self.blob_path(digest)))
        super().commit_upload(upload_id, digest)
        if (code := _fire("commit-after", str(digest))) is not None:
            raise _error(code, str(self.blob_path(digest)))

    def delete(self, digest: Digest) -> bool:
        if (code := _fire("delete", str(digest))) is not None:
            raise _error(code, str(self.blob_path(digest)))
        return super().delete(digest)

    def locate(self, digest: Digest, known_size: int | None = None) -> LocalFile | None:
        if (code := _fire("locate", str(digest))) is not None:
            raise _error(code, str(self.blob_path(digest)))
        return super().locate(digest, known_size)

    def open_blob(self, digest: Digest, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if (code := _fire("read", str(digest))) is not None:
            raise _error(code, str(self.blob_path(digest)))
        yield from super().open_blob(digest, start, end)


_real_sendfile = os.sendfile


def _sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
    """The kernel's sendfile, failing with the plan's errno on a matching blob once part of it was sent.

    The first call for a blob sends at most 4 KiB, so the failure always comes after the response started
    (asyncio would quietly fall back to read/write on a failure before the first byte).
    """
    try:
        name = os.readlink(f"/proc/self/fd/{in_fd}")
    except OSError:
        name = ""
    if "/blobs/" in name:
        if offset and (code := _fire("sendfile", name)) is not None:
            raise _error(code, name)
        if not offset:
            return _real_sendfile(out_fd, in_fd, offset, max(1, min(count, 4096)))
    return _real_sendfile(out_fd, in_fd, offset, count)


def main() -> None:
    import cargohold.server.app as app_module
    from cargohold.cli.main import main as cli_main

    def open_faulty_store(url: str | None, data_dir: Path, *, fsync: bool = True, **_: object) -> FaultyBlobStore:
        return FaultyBlobStore(data_dir, fsync=fsync)

    app_module.open_blob_store = open_faulty_store  # type: ignore[assignment]
    os.sendfile = _sendfile
    sys.argv = ["cargohold", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
