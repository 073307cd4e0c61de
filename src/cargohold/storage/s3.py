"""Blobs in an S3-compatible bucket (AWS S3, MinIO, R2, Ceph RGW, GCS interop), through boto3.

**Layout** under ``s3://BUCKET/PREFIX/``: ``blobs/<algorithm>/<hex>`` for content and, for each upload
session, ``uploads/<upload-id>/session`` (an empty marker: the staging area exists) plus the staged bytes
as *part objects* ``uploads/<upload-id>/<offset>`` (the offset zero-padded to 16 digits, so listing order is
byte order).

**Why part objects and not an S3 multipart upload.** The bytes of an unfinished multipart upload cannot be
read back, but resuming an upload on another replica or after a restart has to rebuild the running hash
(Python's hash objects cannot be serialised) from the bytes staged so far. Plain objects can be read; and
everything a resume needs (which parts, their offsets and sizes) is a listing of the bucket, not process
memory or a database row. A writer buffers at most one part (:data:`PART_SIZE`) in memory and stores it as
one ``PutObject``; every request ends with its tail stored too, so another replica can continue. A tail
shorter than S3's 5 MiB minimum (:data:`MIN_PART`) cannot be a middle part of the final object, so the next
writer reads it back (at most 5 MiB) and rewrites it, longer, under the same key: an overwrite is atomic,
so a crash leaves either the old tail or the new one, never both. Clients are told the minimum through
``OCI-Chunk-Min-Length`` (:attr:`S3BlobStore.chunk_min_length`), so with well-behaved clients only the
last chunk is ever short.

**Commit** (the digest was verified by the caller from the running hash before it gets here) assembles the
parts server-side into ``blobs/<algorithm>/<hex>``: ``CopyObject`` for a single part, otherwise a multipart
upload of ``UploadPartCopy`` calls, completed in one step, so the content appears all at once or not at
all. No blob byte passes through the server. The part objects are then deleted. A crash in between leaves
either staged parts (purged with their session after the upload TTL) or an object no ``blobs`` row names
(collected by garbage collection's orphan pass once older than the grace window).

**Errors.** The store speaks the language of :mod:`cargohold.storage.faults`: quota and size refusals of the
object store become ``EDQUOT`` (507, like a full disk), everything else the store or the network fails with
becomes ``EIO`` (500, the store is failing). A missing object is what it is for the filesystem store:
``None``, ``False`` or :class:`~cargohold.storage.base.UnknownUpload`.

**Credentials and endpoint** are boto3's to resolve: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``, ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, profiles, instance roles. Cargohold never parses
them. boto3 is the ``s3`` extra; this module is imported only when the storage URL is ``s3://``.
"""

from __future__ import annotations

import contextlib
import errno
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import boto3
import botocore.exceptions
from botocore.config import Config
from botocore.credentials import RefreshableCredentials

from cargohold.oci.digest import ALGORITHMS, Digest
from cargohold.storage.base import BlobStore, Redirect, Streamed, UnknownUpload, UploadWriter
from cargohold.storage.s3url import S3Location

MiB = 1 << 20
MIN_PART = 5 * MiB
"""S3's smallest part of a multipart upload (every part but the last); advertised as OCI-Chunk-Min-Length."""
PART_SIZE = 8 * MiB
"""A writer stores a part object once this much is buffered: at most ~9 MiB of memory per upload request,
and a 64 GiB blob (the default --max-blob-size) stays within S3's 10,000 parts (8,192)."""
MAX_PARTS = 10_000
ASSEMBLY_CONCURRENCY = 8
"""Part copies of one commit in flight at once (boto3's own managed copy runs 10 for the same reason)."""
READ_CHUNK = 1 << 20
DEFAULT_REDIRECT_TTL = 300
"""Seconds a presigned blob URL stays valid. S3 checks it when the download starts, not while it runs, so
this only needs to cover the client following the redirect (and its retries of that GET)."""
PRESIGNED_REUSE_FRACTION = 5
"""A presigned URL is handed out again during the first 1/5 of its life (60 s of the default 300 s), so every
URL a client receives has at least 4/5 of its validity left, while twenty matrix jobs pulling one layer cost
one signature (~0.45 ms of CPU each) instead of twenty."""
PRESIGNED_CACHE_SIZE = 4096
"""Blob URLs remembered at most (least recently used first out): ~2 MiB, far more layers than one wave of CI
jobs pulls."""
_UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_PART_RE = re.compile(r"^[0-9]{16}$")
_SESSION_MARKER = "session"
_QUOTA_CODES = frozenset({"QuotaExceeded", "XMinioStorageFull", "StorageFull", "EntityTooLarge", "TooManyBuckets"})
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class ObjectStoreError(OSError):
    """The object store failed or refused (its code in the message); ``errno`` is EIO or EDQUOT, so
    :func:`cargohold.storage.faults.classify` answers it like a failing or full disk."""


@dataclass(frozen=True, slots=True)
class _Part:
    key: str
    offset: int
    size: int


def _check_upload_id(upload_id: str) -> str:
    """Upload IDs come from URLs: only our own 32-hex-character IDs may ever become a key."""
    if not _UPLOAD_ID_RE.match(upload_id):
        raise UnknownUpload(upload_id)
    return upload_id


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _missing(exc: botocore.exceptions.ClientError) -> bool:
    return _code(exc) in _MISSING_CODES


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn boto3's failures into :class:`ObjectStoreError` (see the module docstring)."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        code = _code(exc)
        number = errno.EDQUOT if code in _QUOTA_CODES else errno.EIO
        raise ObjectStoreError(number, f"object store refused to {what}: {code or exc}") from exc
    except botocore.exceptions.BotoCoreError as exc:  # connection refused, timeouts, no credentials
        raise ObjectStoreError(errno.EIO, f"object store unreachable to {what}: {exc}") from exc


def s3_client(*, max_connections: int = 32, session: boto3.session.Session | None = None) -> Any:
    """One thread-safe boto3 client for the process; endpoint, keys and region as the AWS tools resolve them.

    SigV4 explicitly (boto3 presigns SigV2 for custom endpoints otherwise); CRC checksums only where the
    store requires them: every staged byte is hashed with SHA-256 by the server and verified at commit,
    and the default CRC32 of every part costs ~0.7 s of CPU per GiB (bench/choices/README.md).

    Request bodies are signed (a SHA-256 of every byte in the signature) only over plain HTTP, where the
    signature is all that protects them on the way. Over HTTPS, TLS does, and without a checksum header boto3
    would otherwise sign them there too: ~1 s of CPU per GiB staged (measured against moto, 512 MiB in 8 MiB
    parts: 0.9 s signed, 0.4 s unsigned).
    """
    config = Config(
        signature_version="s3v4",
        max_pool_connections=max_connections,
        retries={"mode": "standard", "max_attempts": 4},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = session if session is not None else boto3.session.Session()
    client = session.client("s3", config=config)
    if str(client.meta.endpoint_url).startswith("https://"):
        client = session.client("s3", config=config.merge(Config(s3={"payload_signing_enabled": False})))
    return client


class _S3UploadWriter(UploadWriter):
    """Appends to one staged upload, one part object per :data:`PART_SIZE` (see the module docstring).

    Writes and close are serialised like the filesystem writer's: a request cancelled while its write runs in
    a thread closes the writer only after that write.
    """

    def __init__(self, store: S3BlobStore, upload_id: str) -> None:
        self._store = store
        self._upload_id = upload_id
        self._lock = threading.Lock()
        self._closed = False
        self._dirty = False
        """New bytes since the last stored part: a request that wrote nothing stores nothing at close."""
        parts = store._parts(upload_id)
        self._buffer = bytearray()
        self._offset = parts[-1].offset + parts[-1].size if parts else 0
        if parts and parts[-1].size < MIN_PART:
            tail = parts[-1]  # a short tail must grow into a full part before another part may follow it
            self._buffer += store._get_bytes(tail.key)
            self._offset = tail.offset

    def write(self, data: bytes | memoryview) -> None:
        with self._lock:
            if self._closed:
                raise ValueError("write to a closed upload")
            self._buffer += data
            self._dirty = self._dirty or len(data) > 0
            if len(self._buffer) >= PART_SIZE:
                self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        key = self._store._part_key(self._upload_id, self._offset)
        with _translated(f"stage upload {self._upload_id}"):
            self._store.client.put_object(Bucket=self._store.bucket, Key=key, Body=bytes(self._buffer))
        self._offset += len(self._buffer)
        self._buffer = bytearray()
        self._dirty = False

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._dirty:
                self._flush()  # every request ends with its bytes in the bucket: another replica may continue


class _PresignedUrls:
    """Recently signed blob URLs by object key, reused while young (:data:`PRESIGNED_REUSE_FRACTION`).

    Sharing one URL between requesters is safe: each was authorised for the blob before its redirect, the
    content behind a digest key never changes, and the URL expires when a freshly signed one would have
    (give or take the reuse window). Thread-safe: locate() runs on the event loop or a worker thread.
    """

    def __init__(self, ttl: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._reuse_for = ttl / PRESIGNED_REUSE_FRACTION
        self._clock = clock
        self._urls: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            entry = self._urls.get(key)
            if entry is None:
                return None
            if self._clock() - entry[0] >= self._reuse_for:
                del self._urls[key]
                return None
            self._urls.move_to_end(key)
            return entry[1]

    def put(self, key: str, url: str) -> None:
        with self._lock:
            self._urls[key] = (self._clock(), url)
            self._urls.move_to_end(key)
            while len(self._urls) > PRESIGNED_CACHE_SIZE:
                self._urls.popitem(last=False)

    def forget(self, key: str) -> None:
        with self._lock:
            self._urls.pop(key, None)


class S3BlobStore(BlobStore):
    chunk_min_length = MIN_PART

    def __init__(
        self,
        location: S3Location,
        *,
        client: Any = None,
        redirect: bool = True,
        redirect_url: str | None = None,
        redirect_ttl: int = DEFAULT_REDIRECT_TTL,
    ) -> None:
        self.bucket = location.bucket
        self.prefix = location.prefix
        static_keys = False
        if client is None:
            session = boto3.session.Session()
            client = s3_client(session=session)
            credentials = session.get_credentials()
            static_keys = credentials is not None and not isinstance(credentials, RefreshableCredentials)
        self.client = client
        self.redirect = redirect
        self.redirect_url = redirect_url.rstrip("/") if redirect_url else None
        self.redirect_ttl = redirect_ttl
        self._presigned = _PresignedUrls(redirect_ttl)
        # With the metadata's size, locate() asks the bucket nothing: it streams, names a CDN URL, or signs one
        # from memory. Signing is from memory only with static keys: refreshable credentials (instance,
        # container and assumed roles, SSO) may fetch new ones over the network in the middle of a signature,
        # which must not happen on the event loop.
        self.locate_blocks = redirect and self.redirect_url is None and not static_keys

    # --- keys ---------------------------------------------------------------------------------------------

    def blob_key(self, digest: Digest) -> str:
        return f"{self.prefix}blobs/{digest.algorithm}/{digest.hex}"

    def _upload_prefix(self, upload_id: str) -> str:
        return f"{self.prefix}uploads/{_check_upload_id(upload_id)}/"

    def _part_key(self, upload_id: str, offset: int) -> str:
        return f"{self._upload_prefix(upload_id)}{offset:016d}"

    # --- small helpers ------------------------------------------------------------------------------------

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            with _translated(f"look up {key}"):
                return dict(self.client.head_object(Bucket=self.bucket, Key=key))
        except ObjectStoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, botocore.exceptions.ClientError) and _missing(cause):
                return None
            raise

    def _get_bytes(self, key: str) -> bytes:
        with _translated(f"read {key}"):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            with contextlib.closing(body):
                return bytes(body.read())

    def _stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        extra = {}
        if start or end is not None:
            if end is not None and end <= start:
                return
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            with _translated(f"read {key}"):
                body = self.client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"]
        except ObjectStoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, botocore.exceptions.ClientError) and _missing(cause):
                raise FileNotFoundError(errno.ENOENT, f"no object {key}") from None
            raise
        with contextlib.closing(body), _translated(f"read {key}"):
            yield from body.iter_chunks(READ_CHUNK)

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        with _translated(f"list {prefix}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                yield from page.get("Contents", ())

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            with _translated("delete staged parts"):
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if errors := answer.get("Errors"):
                raise ObjectStoreError(errno.EIO, f"object store refused to delete {errors[0].get('Key')}")

    # --- content ------------------------------------------------------------------------------------------

    def locate(self, digest: Digest, known_size: int | None = None) -> Redirect | Streamed | None:
        """A presigned (or CDN) URL, or :class:`Streamed` when redirects are off.

        With ``known_size`` (the metadata's size of a linked blob) no request is made at all: the database
        row and the object are created and deleted together (see cargohold.lifecycle.gc), and a redirect to
        an object that vanished anyway ends in the store's 404, which clients treat like ours.
        """
        size = known_size
        if size is None:
            head = self._head(self.blob_key(digest))
            if head is None:
                return None
            size = int(head["ContentLength"])
        if not self.redirect:
            return Streamed(size)
        key = self.blob_key(digest)
        if self.redirect_url is not None:
            return Redirect(f"{self.redirect_url}/{quote(key)}", size)
        url = self._presigned.get(key)
        if url is None:
            with _translated(f"sign a URL for {key}"):
                params = {"Bucket": self.bucket, "Key": key, "ResponseContentType": "application/octet-stream"}
                url = str(self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=self.redirect_ttl))
            self._presigned.put(key, url)
        return Redirect(url, size)

    def size(self, digest: Digest) -> int | None:
        head = self._head(self.blob_key(digest))
        return int(head["ContentLength"]) if head is not None else None

    def modified(self, digest: Digest) -> datetime | None:
        head = self._head(self.blob_key(digest))
        return head["LastModified"] if head is not None else None

    def open_blob(self, digest: Digest, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        return self._stream(self.blob_key(digest), start, end)

    def delete(self, digest: Digest) -> bool:
        key = self.blob_key(digest)
        self._presigned.forget(key)
        if self._head(key) is None:
            return False
        with _translated(f"delete {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=key)
        return True

    def iter_digests(self) -> Iterator[Digest]:
        base = f"{self.prefix}blobs/"
        for entry in self._list(base):
            algorithm, _, hex_part = str(entry["Key"])[len(base) :].partition("/")
            length = ALGORITHMS.get(algorithm)
            if length is not None and len(hex_part) == length and re.fullmatch(r"[0-9a-f]+", hex_part):
                yield Digest(algorithm, hex_part)

    # --- uploads ------------------------------------------------------------------------------------------

    def _staging(self, upload_id: str) -> tuple[bool, list[_Part]]:
        """Whether the session's marker exists, and its part objects in byte order (checked contiguous)."""
        prefix = self._upload_prefix(upload_id)
        marker = False
        parts: list[_Part] = []
        for entry in self._list(prefix):
            name = str(entry["Key"])[len(prefix) :]
            if name == _SESSION_MARKER:
                marker = True
            elif _PART_RE.match(name):
                parts.append(_Part(str(entry["Key"]), int(name), int(entry["Size"])))
        parts.sort(key=lambda part: part.offset)
        expected = 0
        for part in parts:
            if part.offset != expected:  # only two replicas appending to one session at once could do this
                raise ObjectStoreError(errno.EIO, f"upload {upload_id}: staged parts are not contiguous")
            expected += part.size
        return marker, parts

    def _parts(self, upload_id: str) -> list[_Part]:
        marker, parts = self._staging(upload_id)
        if not marker:
            raise UnknownUpload(upload_id)
        return parts

    def create_upload(self, upload_id: str) -> None:
        key = self._upload_prefix(upload_id) + _SESSION_MARKER
        with _translated(f"create upload {upload_id}"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"")

    def upload_size(self, upload_id: str) -> int | None:
        try:
            parts = self._parts(upload_id)
        except UnknownUpload:
            return None
        return sum(part.size for part in parts)

    def open_upload(self, upload_id: str) -> UploadWriter:
        return _S3UploadWriter(self, upload_id)

    def read_upload(self, upload_id: str) -> Iterator[bytes]:
        parts = self._parts(upload_id)  # before the first chunk: a missing session fails at the call

        def chunks() -> Iterator[bytes]:
            for part in parts:
                yield from self._stream(part.key)

        return chunks()

    def persist_upload(self, upload_id: str) -> int:
        # Every PutObject is durable when it returns; there is nothing to flush, only the size to report.
        return sum(part.size for part in self._parts(upload_id))

    def commit_upload(self, upload_id: str, digest: Digest) -> None:
        parts = self._parts(upload_id)
        key = self.blob_key(digest)
        if len(parts) > MAX_PARTS:
            raise ObjectStoreError(errno.EDQUOT, f"upload {upload_id} has more than {MAX_PARTS} parts")
        with _translated(f"store blob {digest}"):
            if not parts:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=b"")
            elif len(parts) == 1:
                source = {"Bucket": self.bucket, "Key": parts[0].key}
                self.client.copy_object(Bucket=self.bucket, Key=key, CopySource=source)
            else:
                self._assemble(key, parts)
        self.remove_upload(upload_id)

    def _assemble(self, key: str, parts: list[_Part]) -> None:
        """One multipart upload of server-side copies; aborted (nothing visible, nothing billed) on failure.

        The copies run :data:`ASSEMBLY_CONCURRENCY` at a time: the store copies a part in about the time a
        transfer of it takes, and a commit holds its metadata transaction (on SQLite, the write lock) until
        the blob is in place.
        """
        multipart = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]

        def copy(numbered: tuple[int, _Part]) -> dict[str, Any]:
            number, part = numbered
            answer = self.client.upload_part_copy(
                Bucket=self.bucket,
                Key=key,
                UploadId=multipart,
                PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": part.key},
            )
            return {"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]}

        try:
            with ThreadPoolExecutor(min(ASSEMBLY_CONCURRENCY, len(parts)), thread_name_prefix="s3-assemble") as pool:
                done = list(pool.map(copy, enumerate(parts, start=1)))  # in part order, the first failure raised
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=multipart, MultipartUpload={"Parts": done}
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=multipart)
            raise

    def remove_upload(self, upload_id: str) -> None:
        try:
            prefix = self._upload_prefix(upload_id)
        except UnknownUpload:
            return
        keys = [str(entry["Key"]) for entry in self._list(prefix)]
        # The marker last: a crash half-way leaves a session that still exists, to be purged again.
        keys.sort(key=lambda key: key.endswith(_SESSION_MARKER))
        self._delete_keys(keys)

    def iter_uploads(self) -> Iterator[tuple[str, datetime]]:
        base = f"{self.prefix}uploads/"
        latest: dict[str, datetime] = {}
        for entry in self._list(base):
            upload_id = str(entry["Key"])[len(base) :].partition("/")[0]
            if _UPLOAD_ID_RE.match(upload_id):
                modified: datetime = entry["LastModified"]
                if upload_id not in latest or modified > latest[upload_id]:
                    latest[upload_id] = modified
        yield from latest.items()
