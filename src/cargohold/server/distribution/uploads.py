"""Blob uploads: ``POST/PATCH/PUT/GET/DELETE /v2/<name>/blobs/uploads/…`` and cross-repository mounts.

The handlers read the request (``Content-Range``, ``?digest=``, the body) and phrase the answer (``Location``,
``Range``, ``Docker-Upload-UUID``); the session itself (staging, hashing, locking, the per-credential cap,
space admission, storage-fault cleanup, the commit) is :mod:`cargohold.domain.uploads`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from aiohttp import web

from cargohold.domain import errors
from cargohold.domain.uploads import UploadSession
from cargohold.oci.digest import ALGORITHMS, Digest, DigestError
from cargohold.oci.reference import is_valid_name
from cargohold.server.auth.access import PRINCIPAL_KEY, Principal
from cargohold.server.distribution.blobs import parse_digest
from cargohold.server.drain import receiving
from cargohold.server.http.bodies import BodyStalled, iter_body
from cargohold.server.http.errors import RegistryError
from cargohold.server.state import state_of

_CONTENT_RANGE_RE = re.compile(r"^(?:bytes[ =])?([0-9]{1,19})-([0-9]{1,19})$")


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


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    """The upload body, chunk by chunk; a server shutting down cuts it (drain.receiving) at a resumable point."""
    with receiving(request):
        async for chunk in iter_body(request):
            yield chunk


def _stalled(name: str, upload_id: str, offset: int, exc: BodyStalled) -> RegistryError:
    return RegistryError(
        "BLOB_UPLOAD_INVALID",
        f"{exc}; the upload keeps its first {offset} bytes: send the rest from byte {offset}",
        status=408,
        headers=_session_headers(name, upload_id, offset),
        close=True,
    )


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
            and await state.access.allows(request, source, "pull")
        )
        if readable and mount and await state.uploads.mount(name, source, mount) is not None:
            return _blob_created(name, mount)

    algorithm = "sha256"
    if "digest" in query:
        digest = parse_digest(query["digest"])
        stored = await state.uploads.upload_whole(
            name, digest, _body(request), declared=request.content_length, credential_id=_caller(request)
        )
        return _blob_created(name, stored.digest)
    if "digest-algorithm" in query:
        algorithm = _algorithm(query["digest-algorithm"])
    session = await state.uploads.open(
        name, credential_id=_caller(request), algorithm=algorithm, incoming=request.content_length or 0
    )
    return web.Response(status=202, headers=_chunked_headers(request, name, session.id, 0))


def _chunked_headers(request: web.Request, name: str, upload_id: str, size: int) -> dict[str, str]:
    """A session's headers plus ``OCI-Chunk-Min-Length``: the larger of the setting and the store's own minimum
    (S3's 5 MiB multipart part), on every answer that invites another chunk (POST and PATCH)."""
    state = state_of(request)
    headers = _session_headers(name, upload_id, size)
    minimum = max(state.settings.chunk_min_length, state.blobs.chunk_min_length)
    if minimum > 0:
        headers["OCI-Chunk-Min-Length"] = str(minimum)
    return headers


def _mount_digest(value: str) -> Digest | None:
    try:
        return Digest.parse(value)
    except DigestError:
        return None


def _algorithm(value: str) -> str:
    if value not in ALGORITHMS:
        raise RegistryError("DIGEST_INVALID", f"digest algorithm {value!r} is not supported (use sha256 or sha512)")
    return value


async def _receive(request: web.Request, name: str, upload_id: str, session: UploadSession) -> int:
    """Append the request body to ``session``; a body that stalls keeps what arrived (the session is touched,
    so it stays resumable) and answers with the offset to resume from."""
    try:
        return await session.append(_body(request), declared=request.content_length)
    except BodyStalled as exc:
        await session.touch()
        raise _stalled(name, upload_id, session.offset, exc) from None


async def patch_upload(request: web.Request, name: str, upload_id: str) -> web.Response:
    state = state_of(request)
    async with state.uploads.session(name, upload_id) as session:
        announced = _check_content_range(request, name, upload_id, session.offset)
        received = await _receive(request, name, upload_id, session)
        await session.touch()
        if announced is not None and received != announced:
            raise RegistryError(
                "BLOB_UPLOAD_INVALID",
                f"Content-Range announced {announced} bytes but {received} arrived; check the upload status "
                "and resume from its Range",
                status=400,
                headers=_session_headers(name, upload_id, session.offset),
            )
        return web.Response(status=202, headers=_chunked_headers(request, name, upload_id, session.offset))


async def finish_upload(request: web.Request, name: str, upload_id: str) -> web.Response:
    """PUT ``?digest=``: optionally with the last chunk as the body; completes the upload."""
    state = state_of(request)
    async with state.uploads.session(name, upload_id) as session:  # an unknown session: 404 before a bad digest
        if "digest" not in request.query:
            raise RegistryError("DIGEST_INVALID", "finishing an upload needs the ?digest= query parameter")
        digest = parse_digest(request.query["digest"])
        announced = _check_content_range(request, name, upload_id, session.offset)
        received = await _receive(request, name, upload_id, session)
        if announced is not None and received != announced:
            raise RegistryError(
                "BLOB_UPLOAD_INVALID", f"Content-Range announced {announced} bytes but {received} arrived", status=400
            )
        stored = await session.commit(digest)
        return _blob_created(name, stored.digest)


async def upload_status(request: web.Request, name: str, upload_id: str) -> web.Response:
    state = state_of(request)
    size = await state.uploads.staged_size(name, upload_id)
    return web.Response(status=204, headers=_session_headers(name, upload_id, size))


async def cancel_upload(request: web.Request, name: str, upload_id: str) -> web.Response:
    """DELETE: the routing asked for push; cancelling someone else's session also needs delete."""
    state = state_of(request)
    record = await state.uploads.find(name, upload_id)
    caller = _caller(request)
    others = record.credential_id is not None and record.credential_id != caller
    if others and not await state.access.allows(request, name, "delete"):
        raise errors.Denied(f"upload {upload_id} was opened by another credential; only it (or delete) may cancel it")
    await state.uploads.cancel(record)
    return web.Response(status=204)
