"""A minimal Docker Engine API client: just what save, pull and build need, over the daemon's socket.

Why not shell out to ``docker save``/``docker load``: the CLI buffers nothing either, but it is not always
installed next to a daemon (rootless setups, CI containers with only the socket mounted), and talking to
the API directly lets ``cargohold pull`` stream a docker-archive it is still generating straight into
``POST /images/load`` without a temporary file. ``DOCKER_HOST`` is honoured the way the docker CLI does
(``unix://`` paths and ``tcp://`` hosts); TLS daemons are not supported (they need client certificates).
"""

from __future__ import annotations

import json
import os
import platform as host_platform
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

import httpx

from cargohold.images.common import ImageError

DEFAULT_SOCKET = "/var/run/docker.sock"
API_VERSION = "v1.41"
"""Docker 20.10's API version: every daemon from 2020 on speaks it, and it has everything we use."""
CHUNK = 1 << 20
_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "i386": "386",
    "i686": "386",
}


class DockerError(ImageError):
    """The daemon is unreachable or refused a request; the message says what to do."""


def host_platform_string() -> str:
    """``linux/<arch>`` for this machine: the default ``--platform`` when pulling into a local daemon."""
    machine = host_platform.machine().lower()
    arch = _ARCH.get(machine, machine)
    return "linux/arm/v7" if arch == "arm" else f"linux/{arch}"


class DockerEngine:
    """One daemon. Use :meth:`from_env`; close it (or ``with``) when done."""

    def __init__(self, host: str | None = None, *, timeout: float = 600.0) -> None:
        self.host = host or DEFAULT_SOCKET
        parts = urlsplit(self.host if "://" in self.host else f"unix://{self.host}")
        if parts.scheme == "unix":
            socket_path = parts.path or DEFAULT_SOCKET
            transport = httpx.HTTPTransport(uds=socket_path)
            base = f"http://docker/{API_VERSION}"
            self.where = socket_path
        elif parts.scheme in ("tcp", "http"):
            transport = httpx.HTTPTransport()
            base = f"http://{parts.netloc}/{API_VERSION}"
            self.where = parts.netloc
        else:
            raise DockerError(
                f"DOCKER_HOST={self.host} is not supported; use unix:///path/docker.sock or tcp://host:port"
            )
        # Loading a multi-gigabyte archive can keep the daemon busy for minutes before it answers.
        self._http = httpx.Client(
            base_url=base,
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=10.0),
            headers={"User-Agent": "cargohold-cli"},
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DockerEngine:
        env = os.environ if env is None else env
        return cls(env.get("DOCKER_HOST") or None)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DockerEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, exc: Exception) -> DockerError:
        return DockerError(
            f"cannot reach the Docker daemon at {self.where} ({exc}); start Docker, set DOCKER_HOST, "
            "or use --output oci:DIR to pull without Docker"
        )

    def _check(self, response: httpx.Response, action: str) -> httpx.Response:
        if response.status_code >= 400:
            response.read()
            try:
                message = response.json().get("message") or response.text
            except ValueError:
                message = response.text
            raise DockerError(f"the Docker daemon refused to {action}: {str(message).strip()[:300]}")
        return response

    def ping(self) -> bool:
        """Whether a daemon answers (never raises)."""
        try:
            return self._http.get("/_ping", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def version(self) -> dict[str, Any]:
        try:
            return self._check(self._http.get("/version"), "report its version").json()  # type: ignore[no-any-return]
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def inspect_image(self, name: str) -> dict[str, Any] | None:
        """``docker image inspect``; ``None`` when the daemon has no such image."""
        try:
            response = self._http.get(f"/images/{quote(name, safe='')}/json")
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code == 404:
            return None
        return self._check(response, f"inspect {name}").json()  # type: ignore[no-any-return]

    def export_image(self, name: str, output: BinaryIO) -> int:
        """``GET /images/{name}/get``: stream the image as a docker-archive into ``output``; returns bytes."""
        written = 0
        try:
            with self._http.stream("GET", f"/images/{quote(name, safe='')}/get") as response:
                if response.status_code == 404:
                    raise DockerError(f"the Docker daemon has no image {name}; build or pull it first (docker images)")
                self._check(response, f"export {name}")
                for chunk in response.iter_bytes(CHUNK):
                    output.write(chunk)
                    written += len(chunk)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        return written

    def load_image(self, body: Iterator[bytes]) -> list[str]:
        """``POST /images/load`` with a streamed docker-archive; returns the daemon's "Loaded image" lines."""
        loaded: list[str] = []
        try:
            with self._http.stream(
                "POST",
                "/images/load",
                params={"quiet": "1"},
                content=body,
                headers={"Content-Type": "application/x-tar"},
            ) as response:
                self._check(response, "load the image")
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if event.get("error") or event.get("errorDetail"):
                        detail = event.get("error") or (event.get("errorDetail") or {}).get("message")
                        raise DockerError(f"the Docker daemon could not load the image: {detail}")
                    if stream := event.get("stream"):
                        loaded.append(str(stream).strip())
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        return loaded

    def tag_image(self, image: str, repo_tag: str) -> None:
        repo, _, tag = repo_tag.rpartition(":")
        if "/" in tag or not repo:
            repo, tag = repo_tag, "latest"
        try:
            self._check(
                self._http.post(f"/images/{quote(image, safe='')}/tag", params={"repo": repo, "tag": tag}),
                f"tag {image} as {repo_tag}",
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None


def load_from_writer(engine: DockerEngine, write: Any) -> list[str]:
    """Run ``write(pipe)`` in a thread while the read end streams into ``POST /images/load``.

    Why a pipe: :func:`~cargohold.oci.archive.write_docker_archive` produces a tar by writing to a file
    object, while httpx wants to pull the request body from an iterator; an OS pipe joins the two with
    a bounded buffer, so no blob is ever held whole in memory or written to disk. An error on either side
    stops the other: the reader closing the pipe breaks the writer, the writer's error is re-raised here
    in preference to the daemon's complaint about a truncated archive.
    """
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb", buffering=CHUNK) as sink:
                write(sink)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=produce, name="cargohold-docker-archive", daemon=True)
    thread.start()

    reader = os.fdopen(read_fd, "rb", buffering=0)

    def body() -> Iterator[bytes]:
        while chunk := reader.read(CHUNK):
            yield chunk

    try:
        loaded = engine.load_image(body())
    except BaseException:
        reader.close()  # unblocks the writer if the daemon gave up before reading everything
        thread.join(timeout=30)
        if errors and not isinstance(errors[0], BrokenPipeError):
            raise errors[0] from None
        raise
    reader.close()
    thread.join()
    if errors:
        raise errors[0]
    return loaded


def socket_path_of(host: str | None) -> Path | None:
    """The unix socket a ``DOCKER_HOST`` value names (``None`` for TCP)."""
    text = host or DEFAULT_SOCKET
    parts = urlsplit(text if "://" in text else f"unix://{text}")
    return Path(parts.path) if parts.scheme == "unix" else None
