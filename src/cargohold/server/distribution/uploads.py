"""Blob uploads: ``POST/PATCH/PUT/GET/DELETE /v2/<name>/blobs/uploads/…`` and cross-repository mounts.

Bytes stream from the socket to the staging file in batches, each batch written and hashed together off
the event loop, so memory stays flat whatever the blob size and the digest is known the moment the last
byte lands. The staged file only ever grows by whole writes, so its size is always a consistent offset to
resume from: after a dropped connection, a server shutdown (which cuts bodies being received) or a crash.
Every upload request for one session holds that session's lock, which keeps concurrent
PATCHes from interleaving bytes and keeps the staged size and the running hash in step.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TypeVar

from aiohttp import ClientConnectionResetError, web

from cargohold.metadata.store import TooManyUploads, UploadRecord
from cargohold.oci.digest import ALGORITHMS, Digest, DigestError, new_hasher
from cargohold.oci.reference import is_valid_name
from cargohold.server.auth.access import PRINCIPAL_KEY, Principal
from cargohold.server.distribution.blobs import parse_digest
from cargohold.server.distribution.upload_progress import UploadProgress
from cargohold.server.drain import receiving
from cargohold.server.http.bodies import BodyStalled, iter_body
from cargohold.server.http.errors import RegistryError, upload_unknown
from cargohold.server.http.space import admit_upload, refused_for_space, storage_fault_error
from cargohold.server.state import RegistryState, state_of
from cargohold.storage.base import BlobStore, UploadWriter
from cargohold.storage.faults import classify
from cargohold.storage.filesystem import UnknownUpload
from cargohold.storage.space import Claim, StorageFull

log = logging.getLogger(__name__)

STREAM_BATCH = 1 << 20
"""Bytes gathered from the socket before one write+hash step in the thread pool."""

_CONTENT_RANGE_RE = re.compile(r"^(?:bytes[ =])?([0-9]{1,19})-([0-9]{1,19})$")
_UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")
CAP_RETRY_AFTER_SECONDS = 5
"""What a client over the per-credential session cap is told to wait: slots free as its other uploads end."""


def _upload_url(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def _range_value(size: int) -> str:
    # Inclusive byte range of what is staged; "0-0" when empty, as Docker's registry answers.
    return f"0-{max(size - 1, 0)}"


def _session_headers(name: str, upload_id: str, size: int) -> dict[str, str]:
    return {
        "Location": _upload_url(name, upload_id),
        "Range": _range_value(size),
        "Docker-Upload-UUID": upload_id,
    }


def _blob_created(name: str, digest: Digest) -> web.Response:
    return web.Response(
        status=201,
        headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": str(digest)},
    )


def _write_and_hash(writer: UploadWriter, progress: UploadProgress, data: bytes, claim: Claim) -> None:
    claim.writing(len(data))  # re-measures free space every few MiB; raises StorageFull before crossing it
    writer.write(data)
    progress.hasher.update(data)
    progress.offset += len(data)


def _rehash(blobs: BlobStore, upload_id: str, progress: UploadProgress) -> None:
    for chunk in blobs.read_upload(upload_id):
        progress.hasher.update(chunk)
        progress.offset += len(chunk)


def _hash_staged(blobs: BlobStore, upload_id: str, algorithm: str) -> str:
    hasher = new_hasher(algorithm)
    for chunk in blobs.read_upload(upload_id):
        hasher.update(chunk)
    return hasher.hexdigest()


async def _receive(request: web.Request, state: RegistryState, upload_id: str, progress: UploadProgress) -> int:
    """Stream the request body onto the staged upload; returns the number of bytes received."""
    limit = state.settings.max_blob_size
    declared = request.content_length
    if declared is not None and progress.offset + declared > limit:
        raise _too_large(limit)
    # Admission before a byte is staged: with the announced length up front, else at the first chunk (an
    # empty body, such as the final PUT of a chunked upload, needs no space and is never refused).
    claim = await admit_upload(state, declared) if declared else None
    try:
        writer = await state.run(state.blobs.open_upload, upload_id)
        received = 0
        pending: list[bytes] = []
        pending_size = 0
        try:
            # A server shutting down cuts this read (drain.receiving): what was written so far stays staged and
            # is the offset the session reports, from which the client resumes.
            with receiving(request):
                async for chunk in iter_body(request):
                    if claim is None:
                        claim = await admit_upload(state, 0)
                    received += len(chunk)
                    if progress.offset + pending_size + len(chunk) > limit:
                        raise _too_large(limit)
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= STREAM_BATCH:
                        await state.run(_write_and_hash, writer, progress, b"".join(pending), claim)
                        pending, pending_size = [], 0
            if pending and claim is not None:
                await state.run(_write_and_hash, writer, progress, b"".join(pending), claim)
        except (BodyStalled, ConnectionResetError, ClientConnectionResetError):
            # Stalled or cut off (the client went away, or the server is draining): keep every byte that did
            # arrive, so the session stays resumable from the Range it reports and a resume sends only the rest.
            if pending and claim is not None:
                await state.run(_write_and_hash, writer, progress, b"".join(pending), claim)
            raise
        finally:
            await state.run(writer.close)
    finally:
        if claim is not None:
            claim.release()
    return received


def _stalled(name: str, upload_id: str, offset: int, exc: BodyStalled) -> RegistryError:
    return RegistryError(
        "BLOB_UPLOAD_INVALID",
        f"{exc}; the upload keeps its first {offset} bytes: send the rest from byte {offset}",
        status=408,
        headers=_session_headers(name, upload_id, offset),
        close=True,
    )


T = TypeVar("T")


async def _or_discard(state: RegistryState, name: str, upload_id: str, step: Awaitable[T]) -> T:
    """Run one step of an upload; if the storage fails under it, the session and its staged bytes go at once.

    A full disk (ENOSPC, EDQUOT, the free-space minimum), an I/O error (EIO) or a staging file that vanished
    leaves nothing worth resuming, and staged bytes left behind would keep the disk full until the upload
    TTL passes. One log line names the upload and the error (no traceback: nothing here is a bug).
    """
    try:
        return await step
    except UnknownUpload:
        log.warning("upload %s to %s failed: its staging file vanished; the session was removed", upload_id, name)
        await _discard(state, upload_id)
        raise upload_unknown(upload_id) from None
    except RegistryError:
        raise
    except Exception as exc:
        if not isinstance(exc, StorageFull) and classify(exc) is None:
            raise
        await _discard(state, upload_id)  # first: the answer wakes the space monitor, which must see the room
        error = storage_fault_error(state, exc, f"upload {upload_id} to {name}")
        assert error is not None
        raise error from None


def _too_large(limit: int) -> RegistryError:
    return RegistryError(
        "SIZE_INVALID", f"blob exceeds this registry's limit of {limit} bytes", status=413, detail={"limit": limit}
    )


async def _progress(state: RegistryState, upload_id: str) -> UploadProgress:
    """The session's running hash, rebuilt from the staged bytes if this process does not have it."""
    size = await state.run(state.blobs.upload_size, upload_id)
    if size is None:  # the session exists (checked by _session) but its staging file is gone
        raise UnknownUpload(upload_id)
    progress = state.uploads.get(upload_id, size)
    if progress is None:
        progress = state.uploads.start(upload_id, state.uploads.algorithm(upload_id))
        await state.run(_rehash, state.blobs, upload_id, progress)
    return progress


async def _session(request: web.Request, name: str, upload_id: str) -> RegistryState:
    return (await _session_record(request, name, upload_id))[0]


async def _session_record(request: web.Request, name: str, upload_id: str) -> tuple[RegistryState, UploadRecord]:
    state = state_of(request)
    if not _UPLOAD_ID_RE.match(upload_id):
        raise upload_unknown(upload_id)
    record = await state.run(state.metadata.get_upload, upload_id)
    if record is None or record.repository != name:
        raise upload_unknown(upload_id)
    return state, record


def _caller(request: web.Request) -> str | None:
    """The credential behind this request, as the access policy authorised it (None: no authentication)."""
    principal: Principal | None = request.get(PRINCIPAL_KEY)
    return None if principal is None else principal.credential_id


def _check_content_range(request: web.Request, name: str, upload_id: str, offset: int) -> int | None:
    """Validate ``Content-Range`` against the staged size; returns the chunk length it announces."""
    header = request.headers.get("Content-Range")
    if header is None:
        return None
    match = _CONTENT_RANGE_RE.match(header.strip())
    if not match:
        raise RegistryError(
            "BLOB_UPLOAD_INVALID",
            f"Content-Range {header!r} is not of the form start-end",
            status=416,
            headers=_session_headers(name, upload_id, offset),
        )
    start, end = int(match.group(1)), int(match.group(2))
    if start != offset or end < start:
        raise RegistryError(
            "BLOB_UPLOAD_INVALID",
            f"chunk {start}-{end} does not continue the upload, which has {offset} bytes; send from byte {offset}",
            status=416,
            headers=_session_headers(name, upload_id, offset),
        )
    length = end - start + 1
    if request.content_length is not None and request.content_length != length:
        raise RegistryError(
            "BLOB_UPLOAD_INVALID",
            f"Content-Range announces {length} bytes but Content-Length is {request.content_length}",
            status=400,
        )
    return length


async def _finish(
    state: RegistryState, name: str, upload_id: str, progress: UploadProgress, digest: Digest
) -> web.Response:
    """Verify the digest, commit the staged bytes atomically and link them into the repository."""
    if progress.algorithm == digest.algorithm:
        actual = progress.hasher.hexdigest()
    else:
        actual = await state.run(_hash_staged, state.blobs, upload_id, digest.algorithm)
    if actual != digest.hex:
        await _discard(state, upload_id)
        raise RegistryError(
            "DIGEST_INVALID",
            f"uploaded content has digest {digest.algorithm}:{actual}, not {digest}; the upload was discarded",
            detail={"expected": str(digest), "actual": f"{digest.algorithm}:{actual}"},
        )
    size = await state.run(state.blobs.persist_upload, upload_id)
    await state.run(
        state.metadata.link_blob, name, str(digest), size, lambda: state.blobs.commit_upload(upload_id, digest)
    )
    await state.run(state.metadata.delete_upload, upload_id)
    state.uploads.forget(upload_id)
    return _blob_created(name, digest)


async def _discard(state: RegistryState, upload_id: str) -> None:
    """Remove a session: its staged bytes first (that is what frees space), then its row.

    On a failing disk either step may fail too; the file is then purged with its row once the upload TTL
    passes, so a failure here is logged in one line rather than hiding the error being answered.
    """
    try:
        await state.run(state.blobs.remove_upload, upload_id)
        await state.run(state.metadata.delete_upload, upload_id)
    except Exception as exc:
        fault = classify(exc)
        if fault is None:
            raise
        log.warning("could not remove upload session %s: %s", upload_id, fault.describe())
    finally:
        state.uploads.forget(upload_id)


async def start_upload(request: web.Request, name: str) -> web.Response:
    """POST: mount from another repository, upload monolithically with ``?digest=``, or open a session."""
    state = state_of(request)
    query = request.query
    if "mount" in query:
        # Anything that prevents a mount (bad digest or name, unknown there, not readable by this caller)
        # falls back to a normal upload session, as the distribution spec asks.
        mount = _mount_digest(query["mount"])
        source = query.get("from", "")
        readable = (
            mount is not None
            and bool(source)
            and is_valid_name(source)
            and await state.access.can(request, source, "pull")
        )
        if readable and mount and await state.run(state.metadata.mount_blob, name, source, str(mount)) is not None:
            return _blob_created(name, mount)

    algorithm = "sha256"
    digest: Digest | None = None
    if "digest" in query:
        digest = parse_digest(query["digest"])
        algorithm = digest.algorithm
    elif "digest-algorithm" in query:
        algorithm = _algorithm(query["digest-algorithm"])

    # Refused up front when storage is low, before a session exists or a byte is staged.
    try:
        (await admit_upload(state, request.content_length or 0)).release()
    except StorageFull as exc:
        raise refused_for_space(state, exc, f"a new upload to {name}") from None
    upload_id = uuid.uuid4().hex
    await _or_discard(state, name, upload_id, _open_session(request, state, name, upload_id))
    progress = state.uploads.start(upload_id, algorithm)

    if digest is not None:
        async with state.uploads.lock(upload_id):
            try:
                await _or_discard(state, name, upload_id, _receive(request, state, upload_id, progress))
            except BaseException:
                await _discard(state, upload_id)
                raise
            return await _or_discard(state, name, upload_id, _finish(state, name, upload_id, progress, digest))

    headers = _session_headers(name, upload_id, 0)
    if state.settings.chunk_min_length > 0:
        headers["OCI-Chunk-Min-Length"] = str(state.settings.chunk_min_length)
    return web.Response(status=202, headers=headers)


async def _open_session(request: web.Request, state: RegistryState, name: str, upload_id: str) -> None:
    """Record the session (counted against its credential's cap), then create its staging file."""
    credential_id = _caller(request)
    cap = state.settings.max_uploads_per_credential if credential_id is not None else 0
    now = datetime.now(UTC)
    try:
        await state.run(
            lambda: state.metadata.create_upload(
                name,
                upload_id,
                credential_id=credential_id,
                max_open=cap,
                active_since=now - state.settings.upload_ttl,
                now=now,
            )
        )
    except TooManyUploads:
        raise RegistryError(
            "TOOMANYREQUESTS",
            f"this credential already has {cap} upload sessions open, the most this registry allows; finish or "
            "cancel some (DELETE their Location) and retry",
            detail={"limit": cap},
            headers={"Retry-After": str(CAP_RETRY_AFTER_SECONDS)},
        ) from None
    try:
        await state.run(state.blobs.create_upload, upload_id)
    except BaseException:
        await state.run(state.metadata.delete_upload, upload_id)
        raise


def _mount_digest(value: str) -> Digest | None:
    try:
        return Digest.parse(value)
    except DigestError:
        return None


def _algorithm(value: str) -> str:
    if value not in ALGORITHMS:
        raise RegistryError("DIGEST_INVALID", f"digest algorithm {value!r} is not supported (use sha256 or sha512)")
    return value


async def patch_upload(request: web.Request, name: str, upload_id: str) -> web.Response:
    state = await _session(request, name, upload_id)
    async with state.uploads.lock(upload_id):
        progress = await _or_discard(state, name, upload_id, _progress(state, upload_id))
        announced = _check_content_range(request, name, upload_id, progress.offset)
        try:
            received = await _or_discard(state, name, upload_id, _receive(request, state, upload_id, progress))
        except BodyStalled as exc:
            await state.run(state.metadata.touch_upload, upload_id)
            raise _stalled(name, upload_id, progress.offset, exc) from None
        await _or_discard(state, name, upload_id, state.run(state.metadata.touch_upload, upload_id))
        if announced is not None and received != announced:
            raise RegistryError(
                "BLOB_UPLOAD_INVALID",
                f"Content-Range announced {announced} bytes but {received} arrived; check the upload status "
                "and resume from its Range",
                status=400,
                headers=_session_headers(name, upload_id, progress.offset),
            )
        return web.Response(status=202, headers=_session_headers(name, upload_id, progress.offset))


async def finish_upload(request: web.Request, name: str, upload_id: str) -> web.Response:
    """PUT ``?digest=``: optionally with the last chunk as the body; completes the upload."""
    state = await _session(request, name, upload_id)
    if "digest" not in request.query:
        raise RegistryError("DIGEST_INVALID", "finishing an upload needs the ?digest= query parameter")
    digest = parse_digest(request.query["digest"])
    async with state.uploads.lock(upload_id):
        progress = await _or_discard(state, name, upload_id, _progress(state, upload_id))
        announced = _check_content_range(request, name, upload_id, progress.offset)
        try:
            received = await _or_discard(state, name, upload_id, _receive(request, state, upload_id, progress))
        except BodyStalled as exc:
            await state.run(state.metadata.touch_upload, upload_id)
            raise _stalled(name, upload_id, progress.offset, exc) from None
        if announced is not None and received != announced:
            raise RegistryError(
                "BLOB_UPLOAD_INVALID", f"Content-Range announced {announced} bytes but {received} arrived", status=400
            )
        return await _or_discard(state, name, upload_id, _finish(state, name, upload_id, progress, digest))


async def upload_status(request: web.Request, name: str, upload_id: str) -> web.Response:
    state = await _session(request, name, upload_id)
    size = await state.run(state.blobs.upload_size, upload_id)
    if size is None:
        raise upload_unknown(upload_id)
    return web.Response(status=204, headers=_session_headers(name, upload_id, size))


async def cancel_upload(request: web.Request, name: str, upload_id: str) -> web.Response:
    """DELETE: the routing asked for push; cancelling someone else's session also needs delete."""
    state, record = await _session_record(request, name, upload_id)
    caller = _caller(request)
    others = record.credential_id is not None and record.credential_id != caller
    if others and not await state.access.can(request, name, "delete"):
        raise RegistryError(
            "DENIED", f"upload {upload_id} was opened by another credential; only it (or delete) may cancel it"
        )
    await _discard(state, upload_id)
    return web.Response(status=204)
