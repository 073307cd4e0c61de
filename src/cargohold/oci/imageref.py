"""Image references as users type them: ``[registry/]repository[:tag][@digest]``.

Pure parsing, no I/O. The rules follow what ``docker pull`` does, because that is what CI users expect:

* the first ``/``-separated component is a registry host only if it contains ``.`` or ``:`` or is exactly
  ``localhost`` (so ``localhost:5000/x`` and ``ghcr.io/x`` are hosts, ``library/x`` is not);
* with no host the registry is Docker Hub, and a single-component name gets the ``library/`` prefix;
* Docker Hub's three spellings (``docker.io``, ``index.docker.io``, ``registry-1.docker.io``) are one
  registry; :attr:`ImageReference.registry` is always ``docker.io`` for it, and
  :func:`api_host` gives the host the API actually lives on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cargohold.oci.digest import Digest, DigestError
from cargohold.oci.errors import CargoholdError
from cargohold.oci.reference import check_name, check_tag

DOCKER_HUB = "docker.io"
"""Canonical name of Docker Hub in references."""
DOCKER_HUB_API = "registry-1.docker.io"
"""Where Docker Hub's registry API is served."""
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
"""The key ``docker login`` uses for Docker Hub in ``config.json``."""
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

# host[:port], where host is a DNS name, IPv4 or a bracketed IPv6 literal.
_HOST_RE = re.compile(
    r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)"
    r"(?::[0-9]{1,5})?$"
)


class ImageReferenceError(CargoholdError, ValueError):
    """A string is not a usable image reference; the message says which part is wrong."""


def normalize_registry(host: str) -> str:
    """Fold Docker Hub aliases to ``docker.io`` and lowercase the host (ports are kept)."""
    lowered = host.lower()
    return DOCKER_HUB if lowered in _HUB_ALIASES else lowered


def api_host(registry: str) -> str:
    """The host serving the registry API for ``registry`` (only Docker Hub differs from its name)."""
    return DOCKER_HUB_API if normalize_registry(registry) == DOCKER_HUB else registry


def is_registry_host(component: str) -> bool:
    """Whether the first path component of a reference names a registry (docker's heuristic)."""
    looks_like_host = "." in component or ":" in component or component == "localhost"
    return looks_like_host and _HOST_RE.match(component) is not None


@dataclass(frozen=True, slots=True)
class ImageReference:
    """A parsed reference. ``tag`` and ``digest`` may both be set; the digest then wins for pulls."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, value: str, default_tag: str | None = None) -> ImageReference:
        """Parse ``value``; ``default_tag`` (e.g. ``"latest"``) fills in when neither tag nor digest is given."""
        text = value.strip()
        if not text:
            raise ImageReferenceError("image reference is empty")
        digest: Digest | None = None
        if "@" in text:
            text, _, digest_text = text.partition("@")
            try:
                digest = Digest.parse(digest_text)
            except DigestError as exc:
                raise ImageReferenceError(f"image reference {value!r} has an invalid digest: {exc}") from None
        tag: str | None = None
        slash = text.rfind("/")
        colon = text.rfind(":")
        if colon > slash:  # a ':' in the last component is a tag, anywhere else it is a port
            text, tag = text[:colon], text[colon + 1 :]
            try:
                check_tag(tag)
            except ValueError as exc:
                raise ImageReferenceError(f"image reference {value!r}: {exc}") from None
        first, sep, rest = text.partition("/")
        if sep and is_registry_host(first):
            registry, repository = normalize_registry(first), rest
        else:
            registry, repository = DOCKER_HUB, text
        if registry == DOCKER_HUB and "/" not in repository:
            repository = f"library/{repository}"
        try:
            check_name(repository)
        except ValueError as exc:
            raise ImageReferenceError(f"image reference {value!r}: {exc}") from None
        if tag is None and digest is None and default_tag is not None:
            tag = default_tag
        return cls(registry, repository, tag, digest)

    @property
    def api_host(self) -> str:
        """Host (and port) to send API requests to."""
        return api_host(self.registry)

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if there is one, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        if self.tag is not None:
            return self.tag
        raise ImageReferenceError(f"{self.repository_path} has neither a tag nor a digest")

    @property
    def repository_path(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def with_tag(self, tag: str) -> ImageReference:
        """The same repository with ``tag`` and no digest."""
        return ImageReference(self.registry, self.repository, check_tag(tag), None)

    def with_digest(self, digest: Digest) -> ImageReference:
        """The same repository pinned to ``digest`` (the tag is kept for display)."""
        return ImageReference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        out = self.repository_path
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out
