"""Manifests: the exact bytes a registry serves (:class:`Manifest`), and what a manifest PUT references.

A registry stores manifest bytes exactly as received and a client moves them exactly as served, because a
manifest's digest is the hash of those bytes: :class:`Manifest` is that triple of bytes, media type and digest,
for both. :func:`parse_manifest` decides whether bytes are a manifest the registry accepts and extracts what it
needs from them (:class:`ParsedManifest`): the media type, the blobs and child manifests they reference (which
must exist in the repository), the ``subject`` (for the referrers API) and the artifact type.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cargohold.oci import mediatypes as mt
from cargohold.oci import strictjson
from cargohold.oci.descriptor import Descriptor, DescriptorError
from cargohold.oci.digest import Digest
from cargohold.oci.errors import CargoholdError

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
"""Largest manifest accepted (the OCI distribution spec's recommended minimum a registry must take)."""


SCHEMA1_REFUSED = "Docker schema 1 manifests are deprecated and not accepted; push schema 2 or OCI"


class ManifestInvalid(CargoholdError, ValueError):
    """The bytes are not an acceptable manifest; the message says why."""


class ManifestUnsupported(ManifestInvalid):
    """A recognised but unsupported manifest kind (Docker schema 1)."""


@dataclass(frozen=True)
class Manifest:
    """Manifest bytes exactly as a registry served them (or will store them), with their media type and digest."""

    data: bytes
    media_type: str
    digest: Digest

    def json(self) -> dict[str, Any]:
        """The manifest's JSON object; :class:`ManifestInvalid` if the bytes are not one."""
        try:
            value = json.loads(self.data)
        except ValueError as exc:
            raise ManifestInvalid(f"manifest {self.digest} is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ManifestInvalid(f"manifest {self.digest} is not a JSON object")
        return value

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEXES

    def descriptor(self, **fields: Any) -> Descriptor:
        return Descriptor(media_type=self.media_type, digest=self.digest, size=len(self.data), **fields)

    @classmethod
    def from_bytes(cls, data: bytes, media_type: str | None = None) -> Manifest:
        """Wrap raw manifest bytes, taking the media type from the JSON when not given."""
        if media_type is None:
            try:
                media_type = json.loads(data).get("mediaType")
            except (ValueError, AttributeError):
                media_type = None
        return cls(data, media_type or mt.OCI_MANIFEST, Digest.of(data))


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    media_type: str
    is_index: bool
    artifact_type: str | None
    """``artifactType``, else the config media type of an image manifest (what referrers report)."""
    subject: Descriptor | None
    annotations: dict[str, str] | None
    blobs: list[Descriptor] = field(default_factory=list)
    """Config and layers that must be present in the repository (foreign layers with URLs excluded)."""
    children: list[Descriptor] = field(default_factory=list)
    """Manifests an index points at; they must already be in the repository."""


def _descriptor(value: Any, where: str) -> Descriptor:
    try:
        return Descriptor.from_json(value, where)
    except DescriptorError as exc:
        raise ManifestInvalid(str(exc)) from None


MAX_MEDIA_TYPE_LENGTH = 255
"""RFC 6838 caps a media type's type and subtype names at 127 characters each. The artifact type (``artifactType``
or the config's media type) is stored and indexed for the referrers API, so a longer one is refused here rather
than reaching a database column that enforces its length (PostgreSQL's ``varchar(255)``)."""


def _check_media_type_length(value: str | None, where: str) -> None:
    if value is not None and len(value) > MAX_MEDIA_TYPE_LENGTH:
        raise ManifestInvalid(
            f"{where} is {len(value)} characters long; a media type has at most {MAX_MEDIA_TYPE_LENGTH}"
        )


def _resolve_media_type(body: dict[str, Any], content_type: str | None) -> str:
    declared = body.get("mediaType")
    header = (content_type or "").split(";")[0].strip().lower() or None
    if declared is not None and not isinstance(declared, str):
        raise ManifestInvalid("mediaType must be a string")
    if declared in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED) or header in (
        mt.DOCKER_SCHEMA1,
        mt.DOCKER_SCHEMA1_SIGNED,
    ):
        raise ManifestUnsupported(SCHEMA1_REFUSED)
    if declared and header in mt.MANIFESTS and declared != header:
        raise ManifestInvalid(f"the body's mediaType {declared!r} differs from the Content-Type {header!r}")
    if declared:
        return declared
    if header in mt.MANIFESTS:
        return header
    # OCI allows mediaType to be omitted; infer the kind from the structure.
    return mt.OCI_INDEX if "manifests" in body else mt.OCI_MANIFEST


def parse_manifest(payload: bytes, content_type: str | None) -> ParsedManifest:
    """Validate ``payload`` as a manifest/index and extract its references."""
    if len(payload) > MAX_MANIFEST_SIZE:
        raise ManifestInvalid(f"manifest is {len(payload)} bytes; the limit is {MAX_MANIFEST_SIZE}")
    try:
        body = strictjson.loads(payload)
    except strictjson.JsonInvalid as exc:
        raise ManifestInvalid(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ManifestInvalid("manifest must be a JSON object")
    if body.get("schemaVersion") == 1:
        raise ManifestUnsupported(SCHEMA1_REFUSED)
    if body.get("schemaVersion") != 2:
        raise ManifestInvalid("schemaVersion must be 2")
    media_type = _resolve_media_type(body, content_type)
    if media_type not in mt.MANIFESTS:
        raise ManifestInvalid(f"media type {media_type!r} is not a manifest or index type stored here")

    subject = _descriptor(body["subject"], "subject") if body.get("subject") is not None else None
    annotations = body.get("annotations")
    if annotations is not None and not (
        isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values())
    ):
        raise ManifestInvalid("annotations must be a string map")
    artifact_type = body.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid("artifactType must be a string")

    _check_media_type_length(artifact_type, "artifactType")

    if media_type in mt.INDEXES:
        entries = body.get("manifests")
        if not isinstance(entries, list):
            raise ManifestInvalid("an index needs a 'manifests' list")
        children = [_descriptor(entry, f"manifests[{i}]") for i, entry in enumerate(entries)]
        return ParsedManifest(media_type, True, artifact_type, subject, annotations, [], children)

    if "config" not in body:
        raise ManifestInvalid("an image manifest needs a 'config' descriptor")
    config = _descriptor(body["config"], "config")
    layers_value = body.get("layers", [])
    if not isinstance(layers_value, list):
        raise ManifestInvalid("'layers' must be a list")
    layers = [_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers_value)]
    # Foreign (non-distributable) layers carrying URLs live elsewhere by design; everything else must be here.
    _check_media_type_length(config.media_type, "config.mediaType")
    required = [config, *(layer for layer in layers if not layer.urls)]
    return ParsedManifest(media_type, False, artifact_type or config.media_type, subject, annotations, required, [])
