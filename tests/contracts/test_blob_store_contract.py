"""The :class:`~cargohold.storage.base.BlobStore` contract: what every blob store must do, edge cases included.

Runs against every implementation in ``contract_backends.blob_store``. The server relies on each of these:
an upload resumes from ``upload_size`` after any interruption, a commit is atomic and idempotent (two uploads
of the same content may commit at once), deleting what is not there is not an error, and a missing staging
area is always :class:`~cargohold.storage.base.UnknownUpload`.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from contract_backends import blob_store

from cargohold.oci.digest import Digest
from cargohold.storage.base import BlobStore, LocalFile, Redirect, UnknownUpload

__all__ = ["blob_store"]


def _digest(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def _new_id() -> str:
    return uuid.uuid4().hex


def _stage(store: BlobStore, data: bytes, *, pieces: int = 1) -> str:
    upload_id = _new_id()
    store.create_upload(upload_id)
    step = max(1, len(data) // pieces)
    for start in range(0, len(data), step):
        writer = store.open_upload(upload_id)
        writer.write(data[start : start + step])
        writer.close()
    return upload_id


def _commit(store: BlobStore, data: bytes) -> Digest:
    upload_id = _stage(store, data)
    assert store.persist_upload(upload_id) == len(data)
    digest = _digest(data)
    store.commit_upload(upload_id, digest)
    return digest


def _read(store: BlobStore, digest: Digest) -> bytes:
    return b"".join(store.open_blob(digest))


# --- content ---------------------------------------------------------------------------------------------


def test_absent_content_is_absent_everywhere(blob_store: BlobStore) -> None:
    digest = _digest(b"never stored")
    assert blob_store.locate(digest) is None
    assert blob_store.size(digest) is None
    assert digest not in set(blob_store.iter_digests())
    assert blob_store.delete(digest) is False  # deleting a missing blob is not an error


def test_committed_content_is_readable_located_and_listed(blob_store: BlobStore) -> None:
    data = b"layer bytes " * 10_000
    digest = _commit(blob_store, data)
    assert _read(blob_store, digest) == data
    assert blob_store.size(digest) == len(data)
    location = blob_store.locate(digest)
    assert isinstance(location, LocalFile | Redirect) and location.size == len(data)
    if isinstance(location, LocalFile):
        assert location.path.read_bytes() == data
    assert digest in set(blob_store.iter_digests())


def test_empty_blob(blob_store: BlobStore) -> None:
    digest = _commit(blob_store, b"")
    assert blob_store.size(digest) == 0 and _read(blob_store, digest) == b""


def test_delete_removes_content_once(blob_store: BlobStore) -> None:
    digest = _commit(blob_store, b"short-lived")
    assert blob_store.delete(digest) is True
    assert blob_store.locate(digest) is None and blob_store.size(digest) is None
    assert digest not in set(blob_store.iter_digests())
    assert blob_store.delete(digest) is False


def test_iteration_lists_every_digest_of_every_algorithm(blob_store: BlobStore) -> None:
    contents = [f"blob {n}".encode() for n in range(40)]
    digests = {_commit(blob_store, data) for data in contents}
    sha512 = Digest("sha512", hashlib.sha512(b"other algorithm").hexdigest())
    upload_id = _stage(blob_store, b"other algorithm")
    blob_store.persist_upload(upload_id)
    blob_store.commit_upload(upload_id, sha512)
    assert set(blob_store.iter_digests()) == digests | {sha512}


def test_committing_existing_content_again_succeeds_and_keeps_it(blob_store: BlobStore) -> None:
    data = b"pushed twice"
    digest = _commit(blob_store, data)
    again = _commit(blob_store, data)
    assert again == digest and _read(blob_store, digest) == data
    assert list(blob_store.iter_digests()).count(digest) == 1


def test_concurrent_commits_of_the_same_digest_all_succeed(blob_store: BlobStore) -> None:
    data = b"many runners push the same base layer " * 2000
    digest = _digest(data)
    uploads = [_stage(blob_store, data, pieces=4) for _ in range(8)]
    for upload_id in uploads:
        blob_store.persist_upload(upload_id)
    barrier = threading.Barrier(len(uploads))
    failures: list[BaseException] = []

    def commit(upload_id: str) -> None:
        barrier.wait()
        try:
            blob_store.commit_upload(upload_id, digest)
        except BaseException as exc:  # collected: the assertion below names them
            failures.append(exc)

    threads = [threading.Thread(target=commit, args=(upload_id,)) for upload_id in uploads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert _read(blob_store, digest) == data
    assert all(blob_store.upload_size(upload_id) is None for upload_id in uploads)


# --- upload staging --------------------------------------------------------------------------------------


def test_a_new_upload_is_empty_and_listed(blob_store: BlobStore) -> None:
    upload_id = _new_id()
    blob_store.create_upload(upload_id)
    assert blob_store.upload_size(upload_id) == 0
    assert b"".join(blob_store.read_upload(upload_id)) == b""
    listed = dict(blob_store.iter_uploads())
    assert upload_id in listed
    assert abs(listed[upload_id] - datetime.now(UTC)) < timedelta(minutes=5)


def test_staged_bytes_resume_after_reopening(blob_store: BlobStore) -> None:
    """Each request opens the staging area anew and appends: a resumed upload continues at upload_size."""
    upload_id = _new_id()
    blob_store.create_upload(upload_id)
    expected = b""
    for piece in (b"first part, ", b"", b"second part, ", b"last" * 1000):
        writer = blob_store.open_upload(upload_id)
        writer.write(piece)
        writer.write(memoryview(piece))  # memoryviews are accepted too
        writer.close()
        expected += piece * 2
        assert blob_store.upload_size(upload_id) == len(expected)
    assert b"".join(blob_store.read_upload(upload_id)) == expected
    assert blob_store.persist_upload(upload_id) == len(expected)
    digest = _digest(expected)
    blob_store.commit_upload(upload_id, digest)
    assert _read(blob_store, digest) == expected
    assert blob_store.upload_size(upload_id) is None  # committing consumes the staging area
    assert upload_id not in dict(blob_store.iter_uploads())


def test_a_closed_writer_refuses_writes_and_closes_twice(blob_store: BlobStore) -> None:
    upload_id = _new_id()
    blob_store.create_upload(upload_id)
    writer = blob_store.open_upload(upload_id)
    writer.write(b"x")
    writer.close()
    writer.close()
    with pytest.raises(ValueError):
        writer.write(b"y")
    assert blob_store.upload_size(upload_id) == 1


def test_removed_uploads_are_gone_and_removing_again_is_harmless(blob_store: BlobStore) -> None:
    upload_id = _stage(blob_store, b"cancelled")
    blob_store.remove_upload(upload_id)
    assert blob_store.upload_size(upload_id) is None
    assert upload_id not in dict(blob_store.iter_uploads())
    blob_store.remove_upload(upload_id)
    blob_store.remove_upload(_new_id())  # never existed


@pytest.mark.parametrize("upload_id", ["0123456789abcdef0123456789abcdef", "../../etc/passwd", "A" * 32, "", "x"])
def test_a_missing_staging_area_is_unknown_upload_everywhere(blob_store: BlobStore, upload_id: str) -> None:
    """Unknown and malformed IDs (they come from URLs) name nothing, and never a path outside the store."""
    assert blob_store.upload_size(upload_id) is None
    with pytest.raises(UnknownUpload):
        blob_store.open_upload(upload_id)
    with pytest.raises(UnknownUpload):
        b"".join(blob_store.read_upload(upload_id))
    with pytest.raises(UnknownUpload):
        blob_store.persist_upload(upload_id)
    with pytest.raises(UnknownUpload):
        blob_store.commit_upload(upload_id, _digest(b""))
    blob_store.remove_upload(upload_id)


def test_commit_after_the_staging_area_vanished_is_unknown_upload(blob_store: BlobStore) -> None:
    upload_id = _stage(blob_store, b"about to be purged")
    blob_store.persist_upload(upload_id)
    blob_store.remove_upload(upload_id)
    with pytest.raises(UnknownUpload):
        blob_store.commit_upload(upload_id, _digest(b"about to be purged"))
    assert blob_store.locate(_digest(b"about to be purged")) is None
