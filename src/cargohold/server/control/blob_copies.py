"""Server-side push: ``POST /api/v1/blob-copies`` uploads one stored blob straight into another registry.

``cargohold push`` used to move every byte Cargohold → runner → destination: twice across the network,
and through the runner's CPU. With this route the client still plans the copy, checks which blobs the
destination lacks and pushes the manifests, but asks the server to upload each missing blob itself, with a
credential the client obtained for that one destination repository. Blob bytes never pass through the
client (Depot's ``depot push`` works the same way), and the server reads them from its own disk.

Request body::

    {"repository": "<source repository>", "digest": "sha256:…",
     "destination": {"url": "https://ghcr.io", "repository": "org/app", "authorization": "Bearer …" | null},
     "retry_for": 60}

``retry_for`` (optional, seconds, at most :data:`MAX_RETRY_FOR`; default the client's default budget) is
how long the server waits out an unavailable destination (a registry restarting, say) before giving up:
the client's own retry budget, so a push waits as long whoever moves the bytes.

The caller needs ``pull`` on the source repository: exactly what a blob GET needs, so a build-scoped pull
token works and can copy only its own build's blobs. Problems found before any work (a bad body, the egress
policy, an unknown blob, server push switched off) are ordinary error responses; the client falls back to
streaming through itself on the ``SERVER_PUSH_*``, ``DESTINATION_NOT_ALLOWED`` and
``DESTINATION_UNREACHABLE`` codes (up front or in the final line). Then the answer is
``200`` with ``application/x-ndjson`` lines, streamed: ``{"bytes": n}`` (bytes confirmed so far, at most
twice a second and at least every ten, which keeps timeouts from ending a long copy; with a ``"retrying"``
sentence when the destination became unavailable and the server is waiting for it), then one final line,
``{"result": "uploaded", "bytes": size}`` or ``{"error": {"code", "message", "status"}}``. A blob the
destination already has (a retried copy whose first attempt finished) is not uploaded again.

Safety: every connection passes the egress policy at connect time (:mod:`cargohold.server.control.egress`). The
``authorization`` value is sent only to the destination host, for this one copy; it is never stored or
logged. If the client goes away, the copy stops at the next chunk. At most ``push_threads`` copies run at
once; more wait their turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpcore
import httpx
from aiohttp import ClientConnectionResetError, web

from cargohold.client.errors import RegistryError as ClientRegistryError
from cargohold.client.retry import DEFAULT_BUDGET, RetryPolicy
from cargohold.client.tls import verify_option
from cargohold.domain.blobs import readable_blob, stale_before
from cargohold.oci.digest import Digest, DigestError
from cargohold.oci.reference import is_valid_name
from cargohold.server.auth.access import Target
from cargohold.server.control.common import api_error, read_json_body
from cargohold.server.control.egress import EgressDenied, EgressPolicy, EgressTransport, parse_networks
from cargohold.server.control.lifecycle import LIFECYCLE_KEY
from cargohold.server.state import STATE_KEY, state_of
from cargohold.storage.base import LocalFile
from cargohold.storage.faults import classify

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.5
HEARTBEAT_INTERVAL = 10.0
"""A progress line goes out at least this often even while the destination stalls, so neither the
client's read timeout nor a proxy's idle timeout ends a copy that is still alive."""
MAX_AUTHORIZATION = 16 * 1024
"""Longest ``Authorization`` value accepted (registry JWTs run to a few KiB)."""
MAX_RETRY_FOR = 600.0
"""Longest a copy waits for an unavailable destination: a push thread is a scarce resource."""


@dataclass
class ServerPush:
    """Server-side pushes of one process: where they may connect, and the threads they run on (apart from the
    request threads, so long uploads never starve requests)."""

    egress: EgressPolicy
    executor: ThreadPoolExecutor


PUSH_KEY = web.AppKey("cargohold_server_push", ServerPush)


@dataclass(frozen=True)
class CopyRequest:
    repository: str
    digest: Digest
    url: httpx.URL
    destination: str
    authorization: str | None
    retry_for: float = DEFAULT_BUDGET

    @property
    def where(self) -> str:
        return f"{self.url.netloc.decode()}/{self.destination}"


def parse_request(body: dict[str, Any]) -> CopyRequest:
    """Validate the body; each refusal says which field is wrong and what it must look like."""

    def invalid(message: str) -> Exception:
        return api_error(400, "INVALID", message)

    repository = body.get("repository")
    if not isinstance(repository, str) or not is_valid_name(repository):
        raise invalid("repository must be a repository name of this server, e.g. the project ID")
    try:
        digest = Digest.parse(str(body.get("digest") or ""))
    except DigestError as exc:
        raise invalid(f"digest: {exc}") from None
    destination = body.get("destination")
    if not isinstance(destination, dict):
        raise invalid('destination must be an object: {"url": "https://host", "repository": "org/app"}')
    try:
        url = httpx.URL(str(destination.get("url") or ""))
    except httpx.InvalidURL as exc:
        raise invalid(f"destination.url is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host or url.userinfo or url.path not in ("", "/") or url.query:
        raise invalid("destination.url must be a registry's base URL, like https://ghcr.io or http://10.0.0.5:5000")
    target = destination.get("repository")
    if not isinstance(target, str) or not is_valid_name(target):
        raise invalid("destination.repository must be a repository name, e.g. org/app")
    authorization = destination.get("authorization")
    if authorization is not None and (
        not isinstance(authorization, str)
        or not 0 < len(authorization) <= MAX_AUTHORIZATION
        or not authorization.isascii()
        or not authorization.isprintable()
    ):
        raise invalid(
            f"destination.authorization must be one printable ASCII header value up to {MAX_AUTHORIZATION} "
            "characters, or null"
        )
    retry_for = body.get("retry_for", DEFAULT_BUDGET)
    if isinstance(retry_for, bool) or not isinstance(retry_for, int | float) or not 0 <= retry_for <= MAX_RETRY_FOR:
        raise invalid(f"retry_for must be a number of seconds from 0 to {MAX_RETRY_FOR:.0f}")
    return CopyRequest(repository, digest, url.copy_with(path="/"), target, authorization, float(retry_for))


async def copy_blob(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    job = parse_request(await read_json_body(request))
    await state.access.authorize(request, job.repository, frozenset({"pull"}), Target("blob", str(job.digest)))
    push = request.app.get(PUSH_KEY)
    if not state.settings.server_push or push is None:
        raise api_error(
            403,
            "SERVER_PUSH_DISABLED",
            "this Cargohold server does not push to other registries itself (--no-server-push); "
            "the client can stream the blob instead",
        )
    fresh_after = stale_before(datetime.now(UTC), state.settings.gc_grace)
    location = await state.run(
        readable_blob, state.blobs, state.metadata, state.space, job.repository, job.digest, fresh_after
    )
    blobs = state.blobs

    def read(offset: int) -> Iterator[bytes]:
        """The blob from ``offset``: the file itself, or the object store's ranged read (S3)."""
        if isinstance(location, LocalFile):
            from cargohold.client.registry import file_source  # lazily, like the client in _upload

            return file_source(location.path)(offset)
        return blobs.open_blob(job.digest, offset)

    port = job.url.port or (443 if job.url.scheme == "https" else 80)
    try:
        await state.run(push.egress.resolve, job.url.host, port)
    except EgressDenied as exc:
        raise api_error(403, "DESTINATION_NOT_ALLOWED", str(exc)) from None
    except httpcore.ConnectError as exc:
        raise api_error(502, "DESTINATION_UNREACHABLE", f"{exc}; check the destination registry's name") from None

    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"})
    await response.prepare(request)
    progress = _Progress()
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    future = loop.run_in_executor(push.executor, _upload, push.egress, job, location.size, read, progress)
    reported, last_line = -1, time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=PROGRESS_INTERVAL)
            if done:
                break
            notice, progress.notice = progress.notice, None
            if notice or progress.sent != reported or time.monotonic() - last_line >= HEARTBEAT_INTERVAL:
                reported, last_line = progress.sent, time.monotonic()
                await response.write(_line({"bytes": reported, "retrying": notice} if notice else {"bytes": reported}))
        final = _outcome(future, job, location.size)
        await response.write(_line(final))
        await response.write_eof()
    except (ConnectionResetError, ClientConnectionResetError):
        progress.cancelled.set()  # the upload stops at its next chunk
        future.add_done_callback(lambda done: done.cancelled() or done.exception())  # consume its error
        log.info("client went away during the server-side push of blob %s to %s", job.digest, job.where)
        return response
    except BaseException:  # shutting down: stop the upload too
        progress.cancelled.set()
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        raise
    lifecycle = request.app.get(LIFECYCLE_KEY)
    if lifecycle is not None:
        lifecycle.metrics.server_pushes.labels("uploaded" if "result" in final else final["error"]["code"]).inc()
        lifecycle.metrics.server_push_bytes.inc(progress.sent)
    if "result" in final:
        log.info(
            "pushed blob %s (%d bytes) from %s to %s in %.1f s",
            job.digest,
            location.size,
            job.repository,
            job.where,
            time.monotonic() - started,
        )
    elif final["error"]["code"] != "UNKNOWN":  # an UNKNOWN failure was logged with its traceback already
        log.warning(
            "server-side push of blob %s from %s to %s failed: %s",
            job.digest,
            job.repository,
            job.where,
            final["error"]["message"],
        )
    return response


class _Progress:
    def __init__(self) -> None:
        self.sent = 0
        self.cancelled = threading.Event()
        self.notice: str | None = None
        """The retry layer's "destination unavailable" sentence, until the event loop forwards it."""

    def note(self, message: str) -> None:
        self.notice = message

    def wait(self, seconds: float) -> None:
        """The retry policy's wait between tries, ended by a client going away or a server shutting down."""
        if self.cancelled.wait(seconds):
            raise _ClientGone

    def add(self, delta: int) -> None:
        self.sent += delta  # one writer thread; the event loop only reads


class _ClientGone(Exception):
    pass


def _upload(
    egress: EgressPolicy,
    job: CopyRequest,
    size: int,
    read: Callable[[int], Iterator[bytes]],
    progress: _Progress,
) -> None:
    """The copy itself, on a push thread: the existing client's upload (resume, retries) fed from the store."""
    # Imported here, not at the top: most servers never push, and the registry client is not small to import.
    from cargohold.client.registry import RegistryClient

    def source(offset: int) -> Iterator[bytes]:
        for chunk in read(offset):
            if progress.cancelled.is_set():
                raise _ClientGone
            yield chunk

    with RegistryClient(
        str(job.url).rstrip("/"),
        authorization=job.authorization,
        transport=EgressTransport(egress),
        retry=RetryPolicy(budget=job.retry_for, notify=progress.note, sleep=progress.wait),
        max_connections=4,
    ) as client:
        if client.blob_exists(job.destination, job.digest, for_push=True) == size:
            progress.add(size)  # a retried copy whose first attempt finished: nothing to send
            return
        client.upload_blob(job.destination, job.digest, size, source, progress=progress.add)


def _outcome(future: asyncio.Future[None], job: CopyRequest, size: int) -> dict[str, Any]:
    """The final NDJSON line: the result, or the error in the API's code/message shape."""
    try:
        future.result()
    except ClientRegistryError as exc:
        code = {401: "DESTINATION_UNAUTHORIZED", 403: "DESTINATION_DENIED"}.get(exc.status or 0, "DESTINATION_ERROR")
        return _error(code, str(exc), exc.status)
    except _ClientGone:
        return _error("CANCELLED", "the client went away", None)
    except httpx.TransportError as exc:
        if isinstance(exc.__cause__, EgressDenied):  # the name resolved differently at connect time
            return _error("DESTINATION_NOT_ALLOWED", str(exc.__cause__), None)
        return _error("DESTINATION_UNREACHABLE", f"pushing blob {job.digest} to {job.where} failed: {exc}", None)
    except Exception as exc:
        if (fault := classify(exc)) is not None:  # reading our own copy failed: one line, no traceback
            log.error("server-side push of blob %s: reading it failed: storage error: %s", job.digest, fault.describe())
            return _error(
                "UNKNOWN", f"reading blob {job.digest} on the Cargohold server failed: {fault.describe()}", None
            )
        log.exception("server-side push of blob %s to %s failed", job.digest, job.where)
        return _error(
            "UNKNOWN", f"pushing blob {job.digest} to {job.where} failed; the server log has the details", None
        )
    return {"result": "uploaded", "bytes": size}


def _error(code: str, message: str, status: int | None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def install(app: web.Application) -> None:
    """Add the route and, when server push is on, its egress policy and threads (shut down with the app)."""
    app.router.add_post("/api/v1/blob-copies", copy_blob)
    settings = app[STATE_KEY].settings
    if not settings.server_push:
        return
    executor = ThreadPoolExecutor(max_workers=settings.push_threads, thread_name_prefix="cargohold-push")
    app[PUSH_KEY] = ServerPush(EgressPolicy(parse_networks(settings.push_allow_networks)), executor)

    async def shutdown(app: web.Application) -> AsyncIterator[None]:
        # Threads start with the app, not when it is built: an app that never runs leaves none behind.
        executor.submit(verify_option, True)  # load the CA bundle now, not in the first push
        yield
        executor.shutdown(wait=True, cancel_futures=True)

    app.cleanup_ctx.append(shutdown)
