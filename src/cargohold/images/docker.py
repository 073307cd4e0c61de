"""A minimal Docker Engine API client: just what save, pull and build need, over the daemon's socket.

Why not shell out to ``docker save``/``docker load``: the CLI buffers nothing either, but it is not always
installed next to a daemon (rootless setups, CI containers with only the socket mounted), and talking to
the API directly lets ``cargohold pull`` stream a docker-archive it is still generating straight into
``POST /images/load`` without a temporary file. ``DOCKER_HOST`` is honoured the way the docker CLI does
(``unix://`` paths and ``tcp://`` hosts); TLS daemons are not supported (they need client certificates).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import platform as host_platform
import socket
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

    def _object(self, response: httpx.Response, action: str) -> dict[str, Any]:
        """The JSON object a successful answer carries; anything else is a daemon we do not understand."""
        try:
            body = self._check(response, action).json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise DockerError(f"the Docker daemon's answer when asked to {action} is not a JSON object")
        return body

    def ping(self) -> bool:
        """Whether a daemon answers (never raises)."""
        try:
            return self._http.get("/_ping", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def version(self) -> dict[str, Any]:
        try:
            return self._object(self._http.get("/version"), "report its version")
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def info(self) -> dict[str, Any]:
        """``GET /info``: among much else, ``RegistryConfig`` (which registries the daemon pulls from over HTTP)."""
        try:
            return self._object(self._http.get("/info"), "report its configuration")
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def pull(
        self, name: str, reference: str, *, auth: Mapping[str, str], platform: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """``POST /images/create``: the daemon pulls ``name`` at ``reference`` (a tag or digest) itself.

        Yields the daemon's JSON progress events; an ``error`` event raises :class:`DaemonPullError`.
        ``auth`` becomes ``X-Registry-Auth`` (base64url JSON), so no ``docker login`` is involved.
        """
        params = {"fromImage": name, "tag": reference}
        if platform:
            params["platform"] = platform
        header = base64.urlsafe_b64encode(json.dumps(dict(auth)).encode()).decode()
        try:
            with self._http.stream(
                "POST", "/images/create", params=params, headers={"X-Registry-Auth": header}
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    try:
                        message = str(response.json().get("message") or response.text)
                    except ValueError:
                        message = response.text
                    raise DaemonPullError(message.strip()[:500])
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if not isinstance(event, dict):
                        continue
                    if event.get("error") or event.get("errorDetail"):
                        detail = event.get("error") or (event.get("errorDetail") or {}).get("message")
                        raise DaemonPullError(str(detail).strip()[:500])
                    yield event
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
        return self._object(response, f"inspect {name}")

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


class DaemonPullError(DockerError):
    """The daemon's own pull failed; :func:`unreachable_reason` tells a network failure from a refusal."""


_UNREACHABLE_HINTS = (
    "connection refused",
    "no such host",
    "dial tcp",
    "i/o timeout",
    "server gave http response to https client",
    "x509:",
    "tls:",
    "certificate",
    "network is unreachable",
    "no route to host",
    "connection reset",
)
"""Phrases of the daemon's pull errors that mean "cannot reach the registry" (Go's net/http and crypto/tls
wording), as opposed to "reached it and was refused" (unauthorized, manifest unknown), which must fail."""


def unreachable_reason(error: DaemonPullError) -> str | None:
    """The daemon's error when it means the registry is out of the daemon's reach, else ``None``."""
    text = str(error).lower()
    return str(error) if any(hint in text for hint in _UNREACHABLE_HINTS) else None


def registry_reach(url: str, registry_config: Mapping[str, Any] | None) -> str | None:
    """Why the daemon cannot pull from the registry at ``url``, or ``None`` when it can (as far as its
    configuration says; the network may still disagree, see :func:`unreachable_reason`).

    The daemon talks HTTPS to every registry except those it lists as insecure: ``IndexConfigs`` entries
    with ``Secure: false`` (``--insecure-registry host:port``) and the ``InsecureRegistryCIDRs`` (127.0.0.0/8
    by default). A registry served under a path prefix cannot be named in an image reference at all.
    """
    parts = urlsplit(url)
    if parts.path.strip("/"):
        return f"Cargohold is served under the path {parts.path}, which an image reference cannot name"
    if parts.scheme == "https":
        return None
    config = registry_config or {}
    index = (config.get("IndexConfigs") or {}).get(parts.netloc)
    if isinstance(index, Mapping) and index.get("Secure") is False:
        return None
    networks = []
    for cidr in config.get("InsecureRegistryCIDRs") or []:
        try:
            networks.append(ipaddress.ip_network(str(cidr), strict=False))
        except ValueError:
            continue
    if any(address in network for address in _addresses(parts.hostname or "") for network in networks):
        return None
    return f"{parts.netloc} is plain HTTP and not one of the Docker daemon's insecure registries"


def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """``host``'s addresses as the daemon would see them (an IP literal is not looked up)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    out = []
    for *_, sockaddr in found:
        try:
            out.append(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
        except ValueError:
            continue
    return out


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
