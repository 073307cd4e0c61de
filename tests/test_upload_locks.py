"""The filesystem blob store's cross-process upload lock (``lock_upload``): what keeps two replicas from
writing one upload at once (the race itself, over HTTP with two real replicas: tests/test_replicas.py)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from cargohold.oci.digest import Digest
from cargohold.storage.base import UnknownUpload, UploadBusy
from cargohold.storage.filesystem import FilesystemBlobStore


def test_one_holder_at_a_time_across_store_instances(tmp_path: Path) -> None:
    # Two instances on one directory: what two server processes sharing a data dir have (flock is per open
    # file, so this holds between processes as it does here).
    replica_a, replica_b = FilesystemBlobStore(tmp_path, fsync=False), FilesystemBlobStore(tmp_path, fsync=False)
    upload_id = uuid.uuid4().hex
    replica_a.create_upload(upload_id)
    release = replica_a.lock_upload(upload_id)
    with pytest.raises(UploadBusy):
        replica_b.lock_upload(upload_id)
    release()
    replica_b.lock_upload(upload_id)()
    with pytest.raises(UnknownUpload):
        replica_a.lock_upload(uuid.uuid4().hex)


def test_the_lock_moves_with_the_staged_file_into_the_blob(tmp_path: Path) -> None:
    """A process that opened the staged file before the commit holds a lock on the committed blob's inode
    afterwards, which is why the domain re-reads the session row after taking the lock."""
    store = FilesystemBlobStore(tmp_path, fsync=False)
    upload_id = uuid.uuid4().hex
    store.create_upload(upload_id)
    writer = store.open_upload(upload_id)
    writer.write(b"content")
    writer.close()
    release = store.lock_upload(upload_id)
    digest = Digest.parse("sha256:" + hashlib.sha256(b"content").hexdigest())
    store.commit_upload(upload_id, digest)
    release()
    with pytest.raises(UnknownUpload):
        store.lock_upload(upload_id)
