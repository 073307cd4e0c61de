"""``RegistryClient``: the OCI distribution API, one method per operation, for one registry host.

Layering (each layer knows nothing about the ones above it):

* :mod:`~cargohold.client.auth` answers 401 challenges inside httpx;
* :mod:`~cargohold.client.retry` decides whether and when a failed request is repeated;
* this module maps API operations onto requests, checks statuses and digests, and resumes interrupted
  blob transfers from the last byte that is known to have arrived;
* :mod:`~cargohold.client.copy` composes these operations into whole-image copies.

Why synchronous httpx with threads rather than asyncio: the CLI's work is a handful of long blob
streams, where a thread per transfer (``ThreadPoolExecutor``, ``--jobs`` default 6) costs nothing, while
a sync API stays callable from plain scripts, CLI commands and GitHub Actions code without an event
loop. One ``httpx.Client`` (thread-safe, pooled) is shared by all threads of a ``RegistryClient``.

Blob bytes are never held whole in memory: downloads are written chunk by chunk while hashing, uploads
read from a :data:`BlobSource` that can be reopened at any offset, which is exactly what a resume needs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from cargohold.client.auth import SCOPES_EXTENSION, RegistryAuth, repository_scope
from cargohold.client.credentials import Credentials
from cargohold.client.errors import DigestMismatchError, OCIErrorDetail, RegistryError
from cargohold.client.retry import RetryPolicy
from cargohold.client.tls import verify_option
from cargohold.oci import mediatypes
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest, DigestError, Hasher
from cargohold.oci.imageref import api_host, normalize_registry
from cargohold.oci.manifest import Manifest
from cargohold.oci.transfer import BlobSource, ProgressCallback

CHUNK_SIZE = 1 << 20
"""Streaming granularity for blob bodies (1 MiB)."""


def _read_bigger_socket_chunks() -> None:
    """Let httpcore read 1 MiB per socket read instead of 64 KiB.

    Blob downloads are bound by Python-level work per read (HTTP/1.1 parsing, iterator hops), not by the
    network: on loopback a 64 KiB read size caps one stream near 250 MB/s, 1 MiB near 380 MB/s (measured
    with this client against ``cargohold serve``). httpcore exposes no setting for it, so the class
    attribute is adjusted once, if it exists; on an httpcore without it nothing changes.
    """
    try:
        from httpcore._sync.http11 import HTTP11Connection
    except ImportError:  # pragma: no cover - a future httpcore layout
        return
    if getattr(HTTP11Connection, "READ_NUM_BYTES", CHUNK_SIZE) < CHUNK_SIZE:
        HTTP11Connection.READ_NUM_BYTES = CHUNK_SIZE


_read_bigger_socket_chunks()
MONOLITHIC_MAX = 1 << 20
"""Blobs up to this size go up in a single PUT (POST + PUT): two round trips instead of three."""
MAX_SERVER_RETRY_FOR = 600.0
"""The longest retry budget a Cargohold server accepts for a server-side push (``retry_for``)."""
MANIFEST_MAX = 8 << 20
"""Largest manifest we accept when pulling (registries commonly cap pushes at 4 MiB)."""
MANIFEST_ACCEPT = ", ".join(
    [mediatypes.OCI_MANIFEST, mediatypes.OCI_INDEX, mediatypes.DOCKER_MANIFEST, mediatypes.DOCKER_MANIFEST_LIST]
)


def _short(digest: Digest | str) -> str:
    text = str(digest)
    algorithm, _, hexpart = text.partition(":")
    return f"{algorithm}:{hexpart[:12]}…" if len(hexpart) > 12 else text


def is_loopback(host: str) -> bool:
    """``localhost``/``127.x``/``::1``: the only hosts we talk plain HTTP to without being told."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def file_source(path: Path | str, chunk_size: int = CHUNK_SIZE) -> BlobSource:
    """A :data:`BlobSource` reading a local file (seeked on resume)."""

    def open_at(offset: int) -> Iterator[bytes]:
        with open(path, "rb") as handle:
            handle.seek(offset)
            while chunk := handle.read(chunk_size):
                yield chunk

    return open_at


def bytes_source(data: bytes) -> BlobSource:
    """A :data:`BlobSource` over small in-memory content (configs, manifests, test data)."""

    def open_at(offset: int) -> Iterator[bytes]:
        view = memoryview(data)[offset:]
        for start in range(0, len(view), CHUNK_SIZE):
            yield bytes(view[start : start + CHUNK_SIZE])

    return open_at


@dataclass(frozen=True)
class PutManifestResult:
    digest: Digest
    subject_processed: bool
    """The registry answered with ``OCI-Subject``: it indexes referrers itself (no fallback tag needed)."""


class _Counter:
    """Wrap a chunk iterator to count bytes and report progress as they are handed to httpx."""

    def __init__(self, chunks: Iterator[bytes], progress: ProgressCallback | None) -> None:
        self.chunks = chunks
        self.progress = progress
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.chunks:
                self.sent += len(chunk)
                if self.progress is not None:
                    self.progress(len(chunk))
                yield chunk
        finally:
            close = getattr(self.chunks, "close", None)
            if close is not None:
                close()


class RegistryClient:
    """A client for one registry host. Thread-safe; close it (or use ``with``) when done.

    ``registry`` is ``host[:port]`` (Docker Hub aliases are mapped to its API host) or a full
    ``http(s)://`` base URL. Plain HTTP is used for loopback hosts or when ``insecure=True``.
    """

    def __init__(
        self,
        registry: str,
        *,
        credentials: Credentials | None = None,
        insecure: bool | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 32,
        verify: bool = True,
        authorization: str | None = None,
    ) -> None:
        if "://" in registry:
            base = httpx.URL(registry)
            host = base.netloc.decode()
            self.base_url = str(base.copy_with(path="/", query=None)).rstrip("/")
        else:
            host = api_host(registry)
            use_http = is_loopback(host) if insecure is None else insecure
            self.base_url = f"{'http' if use_http else 'https'}://{host}"
        self.host = host
        """The host as it appears in messages and in image references."""
        self.registry = normalize_registry(host)
        self.retry = retry or RetryPolicy()
        self._netloc = httpx.URL(self.base_url).netloc.decode()
        """The host as requests carry it (what the auth layer keys its state by)."""
        self.auth = RegistryAuth(
            credentials, authorization=None if authorization is None else (self._netloc, authorization)
        )
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=self.auth,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            verify=verify_option(verify),
            headers={"User-Agent": "cargohold-client"},
            follow_redirects=False,
        )

    # -- lifecycle ----------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def where(self, repository: str) -> str:
        """``host/repository`` for messages."""
        return f"{self.host}/{repository}"

    # -- the one place requests are sent -----------------------------------------------------------

    def _send_once(
        self,
        action: str,
        method: str,
        url: str | httpx.URL,
        *,
        scopes: Iterable[str] = (),
        expect: Iterable[int] = (200,),
        headers: dict[str, str] | None = None,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        content: bytes | Iterable[bytes] | None = None,
        stream: bool = False,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        request = self._http.build_request(
            method,
            url,
            headers=headers,
            params=params if isinstance(params, Mapping) or params is None else tuple(params),
            content=content,
            extensions={SCOPES_EXTENSION: tuple(scopes)},
        )
        response = self._http.send(request, stream=True, follow_redirects=follow_redirects)
        if response.status_code not in tuple(expect):
            body = bytearray()
            try:
                # Error bodies are small JSON; cap anyway so a misbehaving server cannot flood memory.
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > 64 << 10:
                        break
            except httpx.TransportError:
                pass
            finally:
                response.close()
            raise RegistryError.from_response(action, response, bytes(body))
        if not stream:
            try:
                response.read()
            finally:
                response.close()
        return response

    def _send(self, action: str, method: str, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        """:meth:`_send_once` under the retry policy. Only for requests whose body can be re-sent."""
        return self.retry.call(lambda: self._send_once(action, method, url, **kwargs), host=self.host)

    def delegated_authorization(self, repository: str, digest: Digest, *, fresh: bool = False) -> str | None:
        """The ``Authorization`` value that lets someone else push ``digest`` to ``repository`` for us.

        For a server-side push: a Bearer token scoped to ``repository:<repo>:pull,push`` (short-lived,
        this one repository) where the registry uses tokens, the Basic credentials where it uses those,
        ``None`` where it wants none. A HEAD on the blob first, if no token is cached, to get one.
        ``fresh``: drop the cached token first (the destination refused it).
        """
        scopes = self._push(repository)
        if fresh:
            self.auth.forget_token(self._netloc, scopes)
        try:
            return self.auth.delegable_header(self._netloc, scopes)
        except LookupError:
            self.blob_exists(repository, digest, for_push=True)
            return self.auth.delegable_header(self._netloc, scopes)

    @staticmethod
    def _pull(repository: str) -> tuple[str]:
        return (repository_scope(repository, "pull"),)

    @staticmethod
    def _push(repository: str) -> tuple[str]:
        return (repository_scope(repository, "pull", "push"),)

    # -- base ---------------------------------------------------------------------------------------

    def ping(self) -> None:
        """``GET /v2/``: reachable and speaking the API, with our credentials if it wants them."""
        self._send(f"checking {self.host} speaks the registry API", "GET", "/v2/")

    # -- blobs: read --------------------------------------------------------------------------------

    def blob_exists(self, repository: str, digest: Digest | str, *, for_push: bool = False) -> int | None:
        """``HEAD`` a blob: its size if present, ``None`` if not.

        ``for_push``: the caller is about to upload to ``repository`` if the answer is no, so the token is
        asked for with ``pull,push`` right away; otherwise the first upload or manifest PUT would need a
        second token round trip.
        """
        action = f"checking blob {_short(digest)} in {self.where(repository)}"
        response = self._send(
            action,
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            scopes=self._push(repository) if for_push else self._pull(repository),
            expect=(200, 404),
            follow_redirects=True,
        )
        if response.status_code == 404:
            return None
        length = response.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else 0

    def _open_blob_at(self, repository: str, digest: Digest, offset: int) -> tuple[httpx.Response, int]:
        """Start a blob GET at ``offset``; returns the response and the offset it actually starts at."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self._send(
            f"pulling blob {_short(digest)} from {self.where(repository)}",
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            scopes=self._pull(repository),
            headers=headers,
            expect=(200, 206),
            stream=True,
            follow_redirects=True,
        )
        if response.status_code == 206:
            return response, offset
        return response, 0  # the server ignored Range: the body starts at byte 0

    def download_blob(
        self,
        repository: str,
        digest: Digest | str,
        write: Callable[[bytes], object],
        *,
        size: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> int:
        """Stream a blob into ``write`` and verify it; returns its size.

        A connection dropped mid-body is resumed with ``Range: bytes=<received>-`` (through an outage, for as
        long as the retry budget allows); the hash carries on across resumes, so every byte is fetched and
        hashed once. If the server ignores ``Range`` the bytes
        we already have are skipped in the new response rather than written twice. A digest or size
        mismatch raises :class:`DigestMismatchError` after the last byte (callers must then discard what
        ``write`` received; :meth:`download_blob_to_file` does).
        """
        parsed = digest if isinstance(digest, Digest) else Digest.parse(digest)
        hasher: Hasher = parsed.hasher()
        received = 0
        for chunk in self._blob_body_resuming(repository, parsed, 0):
            hasher.update(chunk)
            write(chunk)
            received += len(chunk)
            if size is not None and received > size:
                raise DigestMismatchError(
                    f"blob {parsed} from {self.where(repository)} is larger than its {size} bytes"
                )
            if progress is not None:
                progress(len(chunk))
        if size is not None and received < size:
            raise DigestMismatchError(
                f"blob {parsed} from {self.where(repository)} ended after {received} of {size} bytes"
            )
        if hasher.hexdigest() != parsed.hex:
            raise DigestMismatchError(
                f"blob {parsed} from {self.where(repository)} is corrupt: "
                f"it hashes to {parsed.algorithm}:{hasher.hexdigest()}"
            )
        return received

    def download_blob_to_file(
        self,
        repository: str,
        digest: Digest | str,
        path: Path | str,
        *,
        size: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> int:
        """Download into ``path`` via a temporary sibling, renamed only after the digest checks out."""
        target = Path(path)
        partial = target.with_name(f".{target.name}.partial")
        try:
            with open(partial, "wb") as handle:
                n = self.download_blob(repository, digest, handle.write, size=size, progress=progress)
            partial.replace(target)
            return n
        finally:
            partial.unlink(missing_ok=True)

    def blob_source(self, repository: str, digest: Digest | str) -> BlobSource:
        """A :data:`BlobSource` over a blob in this registry: each open is a (ranged) GET, resumed where it
        broke off when the connection drops (a pull into Docker or a client-side push rides out a restart).

        This is what lets :mod:`~cargohold.client.copy` pipe a source GET straight into a destination
        upload, and resume both ends at the byte the destination confirmed.
        """
        parsed = digest if isinstance(digest, Digest) else Digest.parse(digest)

        def open_at(offset: int) -> Iterator[bytes]:
            return self._blob_body_resuming(repository, parsed, offset)

        return open_at

    def _blob_body_resuming(self, repository: str, digest: Digest, offset: int) -> Iterator[bytes]:
        """The blob's bytes from ``offset`` on, across dropped connections and server restarts.

        A body that breaks off is reopened with ``Range`` at the first byte not yet yielded, under the retry
        policy; every resume that moved bytes restarts the count. The caller hashes what it gets: a server
        that ignores ``Range`` is handled by :meth:`_blob_body_from`.
        """
        attempts = self.retry.attempt(self.host)
        position = offset
        while True:
            started_at = position
            try:
                for chunk in self._blob_body_from(repository, digest, position):
                    position += len(chunk)
                    yield chunk
                return
            except httpx.TransportError as exc:
                if position > started_at:
                    attempts.progressed()
                attempts.failed(exc)

    def _blob_body_from(self, repository: str, digest: Digest, offset: int) -> Iterator[bytes]:
        """The blob's bytes from ``offset`` on; bytes before it are dropped if the server ignored ``Range``."""
        response, start = self._open_blob_at(repository, digest, offset)
        try:
            skip = offset - start
            for chunk in response.iter_raw():
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk, skip = chunk[skip:], 0
                yield chunk
        finally:
            response.close()

    # -- blobs: write -------------------------------------------------------------------------------

    def _absolute(self, location: str) -> httpx.URL:
        return self._http.base_url.join(location)

    def start_upload(self, repository: str) -> httpx.URL:
        """``POST /v2/<name>/blobs/uploads/``: a new upload session's URL."""
        response = self._send(
            f"starting an upload to {self.where(repository)}",
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            scopes=self._push(repository),
            expect=(202,),
            headers={"Content-Length": "0"},
        )
        return self._location(response)

    def _location(self, response: httpx.Response) -> httpx.URL:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(
                "reading the upload location",
                status=response.status_code,
                method=response.request.method,
                url=str(response.request.url),
                reason="the registry did not send a Location header",
            )
        return self._absolute(location)

    def mount_blob(self, repository: str, digest: Digest | str, from_repository: str) -> httpx.URL | None:
        """Cross-repository mount. ``None`` when mounted (201); an upload URL to continue with on 202."""
        response = self._send(
            f"mounting blob {_short(digest)} from {from_repository} into {self.where(repository)}",
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            params={"mount": str(digest), "from": from_repository},
            scopes=(*self._push(repository), *self._pull(from_repository)),
            expect=(201, 202),
            headers={"Content-Length": "0"},
        )
        return None if response.status_code == 201 else self._location(response)

    def upload_status(self, repository: str, location: httpx.URL) -> tuple[httpx.URL, int] | None:
        """``GET`` an upload session: its (possibly new) URL and the number of bytes it holds.

        ``None`` means the registry no longer knows the session (expired, restarted, or it refuses the
        stale URL), so the caller must start over.
        """
        try:
            response = self._send(
                f"checking an upload to {self.where(repository)}",
                "GET",
                location,
                scopes=self._push(repository),
                expect=(204, 200),
            )
        except RegistryError as exc:
            if exc.status in (400, 404, 416):
                return None
            raise
        stored = 0
        value = response.headers.get("Range", "")
        if "-" in value:
            # Inclusive "0-<last>". "0-0" is ambiguous (empty or one byte): take the safe reading, 0.
            last = value.rsplit("-", 1)[1]
            if last.isdigit() and int(last) > 0:
                stored = int(last) + 1
        new_location = self._location(response) if response.headers.get("Location") else location
        return new_location, stored

    def _finish_upload(
        self, repository: str, location: httpx.URL, digest: Digest, content: bytes | None = None
    ) -> None:
        url = location.copy_merge_params({"digest": str(digest)})
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(content or b""))}
        response = self._send_once(
            f"pushing blob {_short(digest)} to {self.where(repository)}",
            "PUT",
            url,
            scopes=self._push(repository),
            expect=(201, 204),
            headers=headers,
            content=content or b"",
        )
        echoed = response.headers.get("Docker-Content-Digest")
        if echoed and echoed != str(digest):
            raise DigestMismatchError(f"{self.host} stored blob {digest} under digest {echoed}")

    def push_blob_bytes(self, repository: str, data: bytes, digest: Digest | None = None) -> Descriptor:
        """Upload a small blob in one PUT (configs, the empty JSON); returns its octet-stream descriptor."""
        digest = digest or Digest.of(data)

        retried = False

        def attempt() -> None:
            nonlocal retried
            if retried and self.blob_exists(repository, digest, for_push=True) == len(data):
                return
            retried = True
            self._finish_upload(repository, self.start_upload(repository), digest, data)

        self.retry.call(attempt, host=self.host)
        return Descriptor(media_type="application/octet-stream", digest=digest, size=len(data))

    def upload_blob(
        self,
        repository: str,
        digest: Digest | str,
        size: int,
        source: BlobSource,
        *,
        progress: ProgressCallback | None = None,
        mount_from: str | None = None,
    ) -> str:
        """Upload a blob from ``source``; returns how it got there: ``"mounted"`` or ``"uploaded"``.

        ``mount_from`` tries a cross-repository mount first (same registry only). Otherwise the whole blob
        is streamed in one PATCH and committed with ``PUT ?digest=``. If the connection drops (a network
        fault, a registry restart), we wait for the registry under the retry policy, ask the session how
        many bytes it holds (``GET``, ``Range``) and send only the rest with a ``Content-Range`` PATCH (every
        resumed PATCH names its offset, from 0 too: a lagging answer then costs a 416, never an append). If
        the registry no longer knows the session, or refuses a resume from 0 and still says it holds nothing,
        a ``HEAD`` first: the commit may have landed before the connection broke, and a blob that is there is
        never uploaded again; else a fresh session from byte 0. Small blobs (``<= MONOLITHIC_MAX``) use a
        single PUT, retried as a whole, with the same ``HEAD`` before each retry.
        """
        parsed = digest if isinstance(digest, Digest) else Digest.parse(digest)
        action = f"pushing blob {_short(parsed)} to {self.where(repository)}"
        location: httpx.URL | None
        if mount_from and mount_from != repository:
            location = self.mount_blob(repository, parsed, mount_from)
            if location is None:
                if progress is not None:
                    progress(size)
                return "mounted"
        else:
            location = None
        if size <= MONOLITHIC_MAX:
            data = b"".join(source(0))
            if len(data) != size:
                raise DigestMismatchError(f"blob {parsed} has {len(data)} bytes, expected {size}")
            retried = False

            def monolithic() -> None:
                nonlocal location, retried
                if retried and self.blob_exists(repository, parsed, for_push=True) == size:
                    return
                retried = True
                loc, location = location or self.start_upload(repository), None
                self._finish_upload(repository, loc, parsed, data)

            self.retry.call(monolithic, host=self.host)
            if progress is not None:
                progress(size)
            return "uploaded"

        location = location or self.start_upload(repository)
        confirmed = 0  # bytes the registry has acknowledged holding
        resuming = False  # the session may hold bytes already: every PATCH says where it starts
        reported = 0  # bytes passed to progress so far
        attempts = self.retry.attempt(self.host)
        out_of_step = 0  # 416 answers in a row: the session and we disagree about the offset
        while True:
            counter = _Counter(source(confirmed) if confirmed < size else iter(()), progress)
            try:
                if confirmed < size:  # all bytes confirmed (only the commit failed): just commit again
                    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size - confirmed)}
                    if resuming:
                        # Even from 0: a PATCH without a range is appended wherever the session stands, and a
                        # status answer can lag behind bytes the broken request still delivered ("0-0" is also
                        # what a registry holding one byte says). With the range, a wrong offset is a 416.
                        headers["Content-Range"] = f"{confirmed}-{size - 1}"
                    response = self._send_once(
                        action,
                        "PATCH",
                        location,
                        scopes=self._push(repository),
                        expect=(202, 204),
                        headers=headers,
                        content=iter(counter),
                    )
                    location = self._location(response) if response.headers.get("Location") else location
                self._finish_upload(repository, location, parsed)
                attempts.succeeded()
                return "uploaded"
            except (httpx.TransportError, RegistryError) as exc:
                reported += counter.sent
                if _session_lost_step(exc) and out_of_step < 3:
                    out_of_step += 1  # ask the session where it is (or whether it is gone), right away
                else:
                    attempts.failed(exc)  # waits out an outage, or raises
                before = confirmed
                refused_at_zero = resuming and before == 0 and _session_lost_step(exc)
                status = self.upload_status(repository, location)
                # "0-0" after a refused resume from 0: the session holds bytes it does not count (one byte reads
                # the same as none), so there is no offset to resume from; start over like a lost session.
                if status is None or status[1] > size or (refused_at_zero and status[1] == 0):
                    if self.blob_exists(repository, parsed, for_push=True) == size:
                        if progress is not None and reported != size:
                            progress(size - reported)
                        attempts.succeeded()
                        return "uploaded"
                    location, confirmed, resuming = self.start_upload(repository), 0, False
                else:
                    (location, confirmed), resuming = status, True
                if confirmed > before:
                    attempts.progressed()  # bytes moved: a long upload over a flaky link may break many times
                    out_of_step = 0
                if progress is not None and reported != confirmed:
                    progress(confirmed - reported)
                reported = confirmed

    # -- Cargohold extension: server-side push ------------------------------------------------------

    def push_blob_from_server(
        self,
        repository: str,
        digest: Digest,
        destination: RegistryClient,
        destination_repository: str,
        *,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Ask this (Cargohold) server to upload ``digest`` of ``repository`` to the destination itself.

        ``POST /api/v1/blob-copies`` (see cargohold.server.control.blob_copies), with an ``Authorization`` value
        for the destination repository obtained here (a scoped token, or the Basic credentials where the
        registry uses those). The server's progress lines feed ``progress``. Raises :class:`RegistryError`:
        with the server's status and code when it refuses up front, else with the code and message of its
        final line (:class:`~cargohold.client.copy.ServerPush` decides which of those mean "stream it
        through the client instead"). A dropped connection to this server is retried like any request
        (the copy starts over); the server retries the destination itself, so a failed copy is not
        repeated here, except once with a fresh token when the destination refused the one handed over.
        """
        action = f"pushing blob {_short(digest)} to {destination.where(destination_repository)} via {self.host}"
        reported = 0

        def attempt(authorization: str | None) -> dict[str, Any]:
            nonlocal reported
            if progress is not None and reported:
                progress(-reported)  # a retry starts over
            reported = 0
            body = {
                "repository": repository,
                "digest": str(digest),
                "destination": {
                    "url": destination.base_url,
                    "repository": destination_repository,
                    "authorization": authorization,
                },
                "retry_for": min(destination.retry.budget, MAX_SERVER_RETRY_FOR),
            }
            response = self._send_once(
                action,
                "POST",
                "/api/v1/blob-copies",
                scopes=self._pull(repository),
                headers={"Content-Type": "application/json"},
                content=json.dumps(body).encode(),
                stream=True,
            )
            try:
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError:
                        reason = f"{self.host} sent an unreadable line: {line[:100]!r}"
                        raise RegistryError(action, reason=reason) from None
                    notice = event.get("retrying") if isinstance(event, dict) else None
                    if isinstance(notice, str) and notice:
                        destination.retry.announce(f"{notice[:300]} (the Cargohold server {self.host} is retrying)")
                    sent = event.get("bytes") if isinstance(event, dict) else None
                    if isinstance(sent, int) and sent > reported:
                        if progress is not None:
                            progress(sent - reported)
                        reported = sent
                    if isinstance(event, dict) and ("result" in event or "error" in event):
                        return event
            finally:
                response.close()
            raise httpx.RemoteProtocolError(f"{self.host} ended the server-side push without a result")

        for fresh_token in (False, True):
            authorization = destination.delegated_authorization(destination_repository, digest, fresh=fresh_token)
            final = self.retry.call(partial(attempt, authorization), host=self.host, final=_server_push_answer)
            error = final.get("error")
            if error is None:
                return
            error = error if isinstance(error, dict) else {}
            code = str(error.get("code") or "UNKNOWN")
            if code == "DESTINATION_UNAUTHORIZED" and authorization is not None and not fresh_token:
                continue
            raise RegistryError(
                action,
                status=error.get("status") if isinstance(error.get("status"), int) else None,
                errors=[OCIErrorDetail(code, str(error.get("message") or ""), None)],
            )

    # -- manifests ----------------------------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str | Digest, *, accept: str = MANIFEST_ACCEPT) -> Manifest:
        """Fetch a manifest or index by tag or digest, verifying its digest.

        By digest, the bytes must hash to it. By tag, they must match ``Docker-Content-Digest`` when the
        registry sends it (a proxy rewriting manifests would otherwise go unnoticed).
        """
        ref = str(reference)
        action = f"pulling manifest {_short(ref) if ':' in ref else ref} from {self.where(repository)}"

        def attempt() -> Manifest:
            response = self._send_once(
                action,
                "GET",
                f"/v2/{repository}/manifests/{ref}",
                scopes=self._pull(repository),
                headers={"Accept": accept},
                stream=True,
            )
            try:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MANIFEST_MAX:
                        raise RegistryError(
                            action, status=response.status_code, reason=f"manifest is larger than {MANIFEST_MAX} bytes"
                        )
            finally:
                response.close()
            data = bytes(body)
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            return self._verified_manifest(repository, ref, data, media_type, response.headers)

        return self.retry.call(attempt, host=self.host)

    def _verified_manifest(
        self, repository: str, ref: str, data: bytes, media_type: str, headers: httpx.Headers
    ) -> Manifest:
        if not media_type or media_type in ("application/json", "application/octet-stream"):
            media_type = Manifest.from_bytes(data).media_type
        expected: Digest | None = None
        with contextlib.suppress(DigestError):
            expected = (
                Digest.parse(ref)
                if ":" in ref
                else (Digest.parse(headers["Docker-Content-Digest"]) if "Docker-Content-Digest" in headers else None)
            )
        algorithm = expected.algorithm if expected else "sha256"
        actual = Digest.of(data, algorithm)
        if expected is not None and actual != expected:
            raise DigestMismatchError(f"manifest {ref} from {self.where(repository)} hashes to {actual}")
        return Manifest(data, media_type, actual)

    def head_manifest(self, repository: str, reference: str | Digest) -> Descriptor | None:
        """``HEAD`` a manifest: its descriptor (from headers) or ``None`` when absent."""
        ref = str(reference)
        response = self._send(
            f"checking manifest {ref} in {self.where(repository)}",
            "HEAD",
            f"/v2/{repository}/manifests/{ref}",
            scopes=self._pull(repository),
            headers={"Accept": MANIFEST_ACCEPT},
            expect=(200, 404),
        )
        if response.status_code == 404:
            return None
        digest_header = response.headers.get("Docker-Content-Digest")
        if not digest_header:
            return (
                None
                if ":" not in ref
                else Descriptor(
                    response.headers.get("Content-Type", ""),
                    Digest.parse(ref),
                    int(response.headers.get("Content-Length") or 0),
                )
            )
        return Descriptor(
            response.headers.get("Content-Type", "").split(";")[0],
            Digest.parse(digest_header),
            int(response.headers.get("Content-Length") or 0),
        )

    def put_manifest(self, repository: str, reference: str | Digest, manifest: Manifest) -> PutManifestResult:
        """``PUT`` a manifest by tag or digest (retried like everything else; PUTs are idempotent)."""
        ref = str(reference)
        response = self._send(
            f"pushing manifest {_short(manifest.digest)} to {self.where(repository)}"
            + ("" if ":" in ref else f":{ref}"),
            "PUT",
            f"/v2/{repository}/manifests/{ref}",
            scopes=self._push(repository),
            headers={"Content-Type": manifest.media_type},
            content=manifest.data,
            expect=(201, 200, 204),
        )
        echoed = response.headers.get("Docker-Content-Digest")
        if echoed:
            try:
                got = Digest.parse(echoed)
            except DigestError:
                got = None
            if got is not None and got != Digest.of(manifest.data, got.algorithm):
                raise DigestMismatchError(
                    f"{self.host} stored manifest {manifest.digest} under a different digest {echoed}"
                )
        return PutManifestResult(manifest.digest, "OCI-Subject" in response.headers)

    def delete_manifest(self, repository: str, digest: Digest | str) -> None:
        """``DELETE`` a manifest by digest."""
        self._send(
            f"deleting manifest {_short(digest)} from {self.where(repository)}",
            "DELETE",
            f"/v2/{repository}/manifests/{digest}",
            scopes=(repository_scope(repository, "delete"),),
            expect=(202, 200, 204),
        )

    # -- tags and referrers ------------------------------------------------------------------------

    def list_tags(self, repository: str, *, page_size: int | None = None) -> list[str]:
        """All tags, following ``Link: <...>; rel="next"`` pagination to the end."""
        url: str | httpx.URL = f"/v2/{repository}/tags/list"
        params: dict[str, str] | None = {"n": str(page_size)} if page_size else None
        tags: list[str] = []
        seen: set[str] = set()
        while True:
            response = self._send(
                f"listing tags of {self.where(repository)}", "GET", url, scopes=self._pull(repository), params=params
            )
            tags.extend(response.json().get("tags") or [])
            link = response.links.get("next", {}).get("url")
            if not link or link in seen:
                return tags
            seen.add(link)
            url, params = self._absolute(link), None

    def referrers(self, repository: str, digest: Digest | str, *, artifact_type: str | None = None) -> list[Descriptor]:
        """Manifests whose ``subject`` is ``digest``: the referrers API, else the ``<alg>-<hex>`` tag.

        Registries without the API answer 404 (or 405); clients then keep an index under the tag schema
        ``sha256-<hex>`` themselves, which is what :mod:`~cargohold.client.copy` writes too.
        """
        parsed = digest if isinstance(digest, Digest) else Digest.parse(digest)
        params = {"artifactType": artifact_type} if artifact_type else None
        try:
            response = self._send(
                f"listing referrers of {_short(parsed)} in {self.where(repository)}",
                "GET",
                f"/v2/{repository}/referrers/{parsed}",
                scopes=self._pull(repository),
                params=params,
                headers={"Accept": mediatypes.OCI_INDEX},
            )
            manifests = response.json().get("manifests") or []
        except RegistryError as exc:
            if exc.status not in (404, 405, 400):
                raise
            index = self.referrers_tag_index(repository, parsed)
            manifests = index.get("manifests", []) if index else []
        out = [Descriptor.from_json(m, "a referrer") for m in manifests]
        if artifact_type:
            out = [d for d in out if d.artifact_type == artifact_type]
        return out

    def referrers_tag_index(self, repository: str, digest: Digest) -> dict[str, Any] | None:
        """The fallback-tag index for ``digest``, or ``None`` if that tag does not exist."""
        try:
            return self.get_manifest(repository, referrers_tag(digest), accept=mediatypes.OCI_INDEX).json()
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise


def _server_push_answer(exc: Exception) -> bool:
    """A refusal of a server-side push that names its reason (``502 DESTINATION_UNREACHABLE``): an answer to
    act on (stream through the client instead), not the Cargohold server being unavailable."""
    return isinstance(exc, RegistryError) and any(
        code.startswith(("DESTINATION_", "SERVER_PUSH_")) for code in exc.codes
    )


def _session_lost_step(exc: Exception) -> bool:
    """The registry says the upload is not where we think: 416 (another offset) or the session is unknown."""
    return isinstance(exc, RegistryError) and (
        exc.status == 416 or (exc.status == 404 and "BLOB_UPLOAD_UNKNOWN" in exc.codes)
    )


def referrers_tag(digest: Digest) -> str:
    """The referrers fallback tag for ``digest``: ``<alg>-<hex>``."""
    return f"{digest.algorithm}-{digest.hex}"


def read_stream(stream: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Chunks of a binary stream until EOF (helper for callers building a :data:`BlobSource`)."""
    while chunk := stream.read(chunk_size):
        yield chunk
