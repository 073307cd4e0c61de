"""Blob reads and deletes: ``HEAD``/``GET``/``DELETE /v2/<name>/blobs/<digest>``.

GET is the hottest path in the product (every matrix job pulls every layer), so it makes one trip to the
thread pool (:func:`cargohold.domain.blobs.readable_blob`: one indexed lookup of the repository link) and then
hands the file to aiohttp's ``FileResponse``, which uses ``sendfile(2)``: the bytes go from page cache to
socket without entering Python. With blobs in a bucket and the metadata in SQLite, nothing on the way to the
redirect waits on I/O, so it makes no trip at all (:func:`cargohold.domain.blobs.readable_blob_inline`).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from cargohold.domain.blobs import readable_blob, readable_blob_inline, stale_before, unlink_blob
from cargohold.oci.digest import Digest, DigestError
from cargohold.server.http.errors import RegistryError
from cargohold.server.state import RegistryState, state_of
from cargohold.storage.base import LocalFile, Redirect, Streamed
from cargohold.storage.faults import classify

log = logging.getLogger(__name__)

_RANGE_RE = re.compile(r"^bytes=([0-9]{0,19})-([0-9]{0,19})$")
"""One byte range; offsets past 19 digits (beyond any file) are not understood, so the whole blob is sent."""


def parse_digest(value: str) -> Digest:
    try:
        return Digest.parse(value)
    except DigestError as exc:
        raise RegistryError("DIGEST_INVALID", str(exc), detail={"digest": value[:300]}) from None


def _blob_digest(value: str) -> Digest:
    """The digest in a blob URL. Without an ``algorithm:`` part it is no digest at all, and distribution's
    router answers 404 (tests/test_status_alignment.py); a malformed digest is 400 DIGEST_INVALID."""
    if ":" not in value:
        raise RegistryError(
            "BLOB_UNKNOWN", f"{value[:200]!r} is not a digest, so no blob has it", detail={"digest": value[:300]}
        )
    return parse_digest(value)


def _usable_range(header: str | None, size: int) -> bool:
    """Whether to honour ``Range``; raises 416 (with an OCI error body) for an unsatisfiable byte range.

    Per RFC 9110 a server ignores ranges it does not understand (other units, several ranges) and sends
    the whole blob. The OCI code list has nothing closer than SIZE_INVALID for a 416; clients act on the status.
    """
    if not header:
        return False
    match = _RANGE_RE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return False
    start_text, end_text = match.groups()

    def unsatisfiable(reason: str) -> RegistryError:
        return RegistryError("SIZE_INVALID", reason, status=416, headers={"Content-Range": f"bytes */{size}"})

    if start_text:
        start = int(start_text)
        end = int(end_text) if end_text else None
        if end is not None and end < start:
            return False  # syntactically invalid: ignored like any range we do not understand
        if start >= size:
            raise unsatisfiable(f"Range {header!r} cannot be satisfied: the blob has {size} bytes")
    elif int(end_text) == 0 or size == 0:
        raise unsatisfiable(f"Range {header!r} selects no bytes of a {size}-byte blob")
    return True


def _byte_range(header: str, size: int) -> tuple[int, int]:
    """``[start, end)`` of a range :func:`_usable_range` accepted for a ``size``-byte blob."""
    match = _RANGE_RE.match(header.strip())
    assert match is not None
    start_text, end_text = match.groups()
    if not start_text:  # a suffix: the last N bytes
        return max(size - int(end_text), 0), size
    return int(start_text), min(int(end_text) + 1, size) if end_text else size


async def get_blob(request: web.Request, name: str, digest_text: str) -> web.StreamResponse:
    state = state_of(request)
    digest = _blob_digest(digest_text)
    fresh_after = stale_before(datetime.now(UTC), state.settings.gc_grace)
    location = readable_blob_inline(state.blobs, state.metadata, name, digest, fresh_after)
    if location is None:
        location = await state.run(readable_blob, state.blobs, state.metadata, state.space, name, digest, fresh_after)
    headers = {
        "Docker-Content-Digest": str(digest),
        "Content-Type": "application/octet-stream",
        "Cache-Control": "max-age=31536000, immutable",
    }
    if request.method == "HEAD":  # answered here whatever the store: size and digest, never a redirect
        headers["Content-Length"] = str(location.size)
        if isinstance(location, LocalFile):
            headers["Accept-Ranges"] = "bytes"
        return web.Response(status=200, headers=headers)
    if isinstance(location, Redirect):
        # The routing authorised the pull before this handler ran; the URL is short-lived (see storage.s3).
        # Returned, not raised as web.HTTPTemporaryRedirect: an exception costs more than the rest of the answer.
        return web.Response(status=307, headers={**headers, "Location": location.url})
    if isinstance(location, Streamed):
        return await _stream_blob(request, state, digest, location, headers)
    if "Range" in request.headers and not _usable_range(request.headers["Range"], location.size):
        return _WholeFileResponse(location.path, digest, headers=headers)
    return _BlobFileResponse(location.path, digest, headers=headers)


async def _stream_blob(
    request: web.Request, state: RegistryState, digest: Digest, location: Streamed, headers: dict[str, str]
) -> web.StreamResponse:
    """Relay a blob from the store (object storage with ``--blob-redirect off``), one chunk per thread-pool trip.

    One byte range is honoured as for files (206); others are ignored (the whole blob). A store failing
    half-way is handled like the disk failing under sendfile: one log line and a closed connection, never a
    complete-looking short blob.
    """
    start, end = 0, location.size
    header = request.headers.get("Range")
    if header is not None and _usable_range(header, location.size):
        start, end = _byte_range(header, location.size)
        headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{location.size}"}
    response = web.StreamResponse(status=206 if "Content-Range" in headers else 200, headers=headers)
    response.content_length = end - start
    chunks = state.blobs.open_blob(digest, start, end)
    done = object()
    try:
        first = await state.run(next, chunks, done)  # a store that fails at once still gets an error answer
        await response.prepare(request)
        chunk = first
        while chunk is not done:
            assert isinstance(chunk, bytes)
            await response.write(chunk)
            chunk = await state.run(next, chunks, done)
    except FileNotFoundError:
        if response.prepared:
            raise
        log.error("blob %s is linked in %s but its object is missing from the store", digest, request.path)
        raise RegistryError(
            "BLOB_UNKNOWN", f"blob {digest} is not stored here", detail={"digest": str(digest)}
        ) from None
    except OSError as exc:
        if not response.prepared or isinstance(exc, ConnectionError):
            raise
        log.error(
            "reading blob %s from the store failed after the response started: %s; closed the connection", digest, exc
        )
        raise ConnectionResetError(f"reading blob {digest} failed") from None
    finally:
        await state.run(getattr(chunks, "close", lambda: None))
    await response.write_eof()
    return response


class _BlobFileResponse(web.FileResponse):
    """aiohttp's sendfile response, plus what to do when the disk fails half-way through a blob.

    By then the status line and ``Content-Length`` are sent, so no error body can follow: the server logs one
    line naming the blob and closes the connection, and the client sees a short read (and retries or fails)
    instead of a complete-looking corrupt blob. Other requests are not affected.
    """

    def __init__(self, path: Path, digest: Digest, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.digest = digest

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            return await super().prepare(request)
        except ConnectionError:
            raise
        except OSError as exc:
            fault = classify(exc)
            what = fault.describe() if fault is not None else str(exc)
            log.error("reading blob %s failed after the response started: %s; closed the connection", self.digest, what)
            raise ConnectionResetError(f"reading blob {self.digest} failed") from None


class _WholeFileResponse(_BlobFileResponse):
    """Sends the whole file whatever the request's ``Range`` says (aiohttp would answer 416 to one it cannot
    parse, where RFC 9110 says to ignore it)."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return None
        headers = {key: value for key, value in request.headers.items() if key.lower() != "range"}
        return await super().prepare(request.clone(headers=headers))


async def delete_blob(request: web.Request, name: str, digest_text: str) -> web.Response:
    state = state_of(request)
    digest = _blob_digest(digest_text)
    await state.run(unlink_blob, state.metadata, name, digest)
    # The content itself stays until garbage collection finds no repository linking it.
    return web.Response(status=202, headers={"Docker-Content-Digest": str(digest)})
