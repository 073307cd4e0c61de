"""Parsing and validating manifests and indexes as they arrive in a manifest PUT.

The registry stores manifest bytes exactly as received; this module only decides whether those bytes are a
manifest we accept and extracts what the registry needs from them: the media type, the blobs and child
manifests they reference (which must exist in the repository), the ``subject`` (for the referrers API) and
the artifact type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cargohold.oci import mediatypes as mt
from cargohold.oci import strictjson
from cargohold.oci.digest import Digest, DigestError

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
"""Largest manifest accepted (the OCI distribution spec's recommended minimum a registry must take)."""


MAX_SIZE = 2**63 - 1
"""Largest descriptor size: what a signed 64-bit integer (Go's int64, SQLite's INTEGER) holds."""

SCHEMA1_REFUSED = "Docker schema 1 manifests are deprecated and not accepted; push schema 2 or OCI"


class ManifestInvalid(ValueError):
    """The bytes are not an acceptable manifest; the message says why."""


class ManifestUnsupported(ManifestInvalid):
    """A recognised but unsupported manifest kind (Docker schema 1)."""


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    platform: dict[str, Any] | None = None
    urls: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        if self.platform:
            out["platform"] = self.platform
        if self.urls:
            out["urls"] = list(self.urls)
        return out


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
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{where} must be a JSON object")
    media_type = value.get("mediaType")
    size = value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestInvalid(f"{where} has no mediaType")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_SIZE:
        raise ManifestInvalid(f"{where} has no valid size (an integer from 0 to {MAX_SIZE})")
    try:
        digest = Digest.parse(value.get("digest", ""))
    except DigestError as exc:
        raise ManifestInvalid(f"{where}: {exc}") from None
    annotations = value.get("annotations")
    if annotations is not None and not (
        isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values())
    ):
        raise ManifestInvalid(f"{where} has annotations that are not a string map")
    urls = value.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ManifestInvalid(f"{where} has urls that are not a list of strings")
    artifact_type = value.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid(f"{where} has an artifactType that is not a string")
    platform = value.get("platform")
    if platform is not None:
        _check_platform(platform, where)
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        artifact_type=artifact_type,
        annotations=annotations,
        platform=platform,
        urls=tuple(urls),
    )


def _check_platform(platform: Any, where: str) -> None:
    """The OCI image index's platform object: string fields, and string lists for the feature lists."""
    if not isinstance(platform, dict):
        raise ManifestInvalid(f"{where} has a platform that is not a JSON object")
    for key in ("architecture", "os", "os.version", "variant"):
        if key in platform and not isinstance(platform[key], str):
            raise ManifestInvalid(f"{where}: platform {key} must be a string")
    for key in ("os.features", "features"):
        values = platform.get(key)
        if values is not None and not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
            raise ManifestInvalid(f"{where}: platform {key} must be a list of strings")


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
    required = [config, *(layer for layer in layers if not layer.urls)]
    return ParsedManifest(media_type, False, artifact_type or config.media_type, subject, annotations, required, [])
