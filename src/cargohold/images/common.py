"""Pieces save, pull and push share: errors, Cargohold registry clients, and a blob-naming target."""

from __future__ import annotations

from cargohold.client.copy import RegistryRepo
from cargohold.client.credentials import Credentials
from cargohold.client.errors import CargoholdError
from cargohold.client.registry import RegistryClient
from cargohold.client.settings import Connection
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.manifest import Manifest
from cargohold.oci.transfer import ImageSource, ProgressCallback

CARGOHOLD_USER = "x-token"
"""The user name Cargohold expects with a token as the password."""


class ImageError(CargoholdError):
    """A save, pull, push or build failed; ``str()`` is one sentence that says what to do."""


def cargohold_client(connection: Connection, host: str, token: str) -> RegistryClient:
    """A registry client for the Cargohold server ``host`` (as control API answers name it).

    When ``host`` is the server we are connected to, its URL is used as given, so an explicitly plain-HTTP
    or path-prefixed Cargohold URL keeps working; otherwise the client's loopback rule picks the scheme.
    """
    address = connection.registry if host == connection.host else host
    return RegistryClient(
        address,
        credentials=Credentials(CARGOHOLD_USER, token, source="Cargohold build token"),
        retry=connection.retry,
    )


class NamingTarget:
    """Wraps a target so that a failure names the blob or manifest it happened on.

    ``copy_image`` runs many transfers in parallel; without this, an error from one of six threads would
    say "connection reset" without saying which layer, and ``fail_build`` would record a useless reason.
    """

    def __init__(self, inner: RegistryRepo) -> None:
        self.inner = inner
        self.name = inner.name

    def has_blob(self, descriptor: Descriptor) -> bool:
        try:
            return self.inner.has_blob(descriptor)
        except Exception as exc:
            raise StepError(f"checking blob {descriptor.digest}", exc) from exc

    def put_blob(self, descriptor: Descriptor, source: ImageSource, progress: ProgressCallback | None) -> str:
        try:
            return self.inner.put_blob(descriptor, source, progress)
        except Exception as exc:
            raise StepError(f"uploading blob {descriptor.digest} ({descriptor.size} bytes)", exc) from exc

    def put_manifest(self, manifest: Manifest, tag: str | None) -> bool:
        try:
            return self.inner.put_manifest(manifest, tag)
        except Exception as exc:
            raise StepError(f"pushing manifest {manifest.digest}" + (f" as {tag}" if tag else ""), exc) from exc

    def add_referrer(self, subject: Digest, referrer: Descriptor) -> None:
        try:
            self.inner.add_referrer(subject, referrer)
        except Exception as exc:
            raise StepError(f"recording referrer {referrer.digest} of {subject}", exc) from exc


class StepError(ImageError):
    """A failure tagged with the step it happened in (``uploading blob sha256:…``)."""

    def __init__(self, step: str, cause: BaseException) -> None:
        self.step = step
        self.cause = cause
        super().__init__(f"{step} failed: {_strip(str(cause)) or type(cause).__name__}")


def _strip(text: str) -> str:
    return text.strip().rstrip(".")


def describe(exc: BaseException) -> str:
    """An exception as one clause for messages (its type when it has no text)."""
    return _strip(str(exc)) or type(exc).__name__
