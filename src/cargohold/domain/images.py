"""What a stored image is made of, for people to read: the index, each platform's manifest with its layers,
a summary of the image config, and the artifacts that refer to it (signatures, SBOMs, provenance).

Everything is read from the registry's own records (the stored manifest bytes, the config blob), never from
what a client reported; whatever cannot be parsed is shown as missing rather than failing the whole page.
Environment variables are summarised by *name* only: their values are often secrets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cargohold.domain.builds import MAX_CONFIG_READ, platform_text
from cargohold.metadata.store import MetadataStore
from cargohold.oci import mediatypes as mt
from cargohold.oci import strictjson
from cargohold.oci.digest import Digest, DigestError
from cargohold.storage.base import BlobStore, UnknownUpload

ATTESTATION_TYPE = "vnd.docker.reference.type"
ATTESTATION_OF = "vnd.docker.reference.digest"
"""BuildKit's annotations on an index entry that is an attestation manifest (and the image it is about)."""

MAX_CHILDREN = 64
"""Platform manifests read for one index (an index may list more; the page says how many were left out)."""


@dataclass(frozen=True, slots=True)
class Layer:
    digest: str
    media_type: str
    size: int


@dataclass(frozen=True, slots=True)
class ConfigSummary:
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env_names: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    created: str | None = None


@dataclass(frozen=True, slots=True)
class Referrer:
    digest: str
    artifact_type: str
    size: int


@dataclass(frozen=True, slots=True)
class PlatformImage:
    """One image manifest (a platform of an index, or the whole image)."""

    digest: str
    media_type: str
    platform: str | None
    layers: list[Layer]
    config_digest: str | None
    config: ConfigSummary | None
    referrers: list[Referrer]

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)


@dataclass(frozen=True, slots=True)
class ImageDescription:
    digest: str
    media_type: str
    is_index: bool
    images: list[PlatformImage]
    referrers: list[Referrer]
    """Artifacts referring to the top-level manifest (the index, or the single image), and BuildKit's
    attestation manifests listed in the index."""
    omitted: int = 0
    """Child manifests of the index not read (more than MAX_CHILDREN, or missing)."""


def describe_image(metadata: MetadataStore, blobs: BlobStore, repository: str, digest: str) -> ImageDescription | None:
    """The image ``repository@digest`` as stored, or None when the manifest is gone (blocking)."""
    top = metadata.get_manifest(repository, digest, by_digest=True)
    if top is None:
        return None
    body = _json_object(top.payload)
    referrers = _referrers(metadata, repository, top.digest)
    if top.media_type not in mt.INDEXES:
        image = _image(metadata, blobs, repository, top.digest, top.media_type, body, None)
        return ImageDescription(top.digest, top.media_type, False, [image], referrers)
    images: list[PlatformImage] = []
    omitted = 0
    entries = body.get("manifests")
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
            continue
        if len(images) >= MAX_CHILDREN:
            omitted += 1
            continue
        annotations = entry.get("annotations")
        if isinstance(annotations, dict) and annotations.get(ATTESTATION_TYPE) == "attestation-manifest":
            # BuildKit's provenance/SBOM: an index entry pointing at the image it describes, not a platform.
            size = entry.get("size")
            described = annotations.get(ATTESTATION_OF)
            kind = f"attestation of {described}" if isinstance(described, str) else "attestation"
            referrers.append(Referrer(entry["digest"], kind, size if isinstance(size, int) else 0))
            continue
        child = metadata.get_manifest(repository, entry["digest"], by_digest=True)
        if child is None or child.media_type not in mt.IMAGE_MANIFESTS:
            omitted += 1
            continue
        platform = platform_text(entry.get("platform"))
        images.append(
            _image(metadata, blobs, repository, child.digest, child.media_type, _json_object(child.payload), platform)
        )
    return ImageDescription(top.digest, top.media_type, True, images, referrers, omitted)


def _image(
    metadata: MetadataStore,
    blobs: BlobStore,
    repository: str,
    digest: str,
    media_type: str,
    body: dict[str, Any],
    platform: str | None,
) -> PlatformImage:
    layers = []
    for entry in body.get("layers") or []:
        if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
            size = entry.get("size")
            layers.append(Layer(entry["digest"], str(entry.get("mediaType", "")), size if isinstance(size, int) else 0))
    config_entry = body.get("config")
    config_digest = config_entry.get("digest") if isinstance(config_entry, dict) else None
    config = _config(blobs, config_entry) if isinstance(config_entry, dict) else None
    if platform is None and config is not None:
        platform = config_platform(blobs, config_entry) if isinstance(config_entry, dict) else None
    return PlatformImage(
        digest,
        media_type,
        platform,
        layers,
        config_digest if isinstance(config_digest, str) else None,
        config,
        _referrers(metadata, repository, digest),
    )


def _read_config(blobs: BlobStore, entry: dict[str, Any]) -> dict[str, Any] | None:
    if entry.get("mediaType") not in (mt.OCI_CONFIG, mt.DOCKER_CONFIG):
        return None
    size = entry.get("size")
    if not isinstance(size, int) or size > MAX_CONFIG_READ:
        return None
    try:
        digest = Digest.parse(entry.get("digest"))
        parsed = strictjson.loads(b"".join(blobs.open_blob(digest)))
    except (DigestError, strictjson.JsonInvalid, FileNotFoundError, UnknownUpload):
        return None
    return parsed if isinstance(parsed, dict) else None


def _config(blobs: BlobStore, entry: dict[str, Any]) -> ConfigSummary | None:
    parsed = _read_config(blobs, entry)
    if parsed is None:
        return None
    inner = parsed.get("config")
    inner = inner if isinstance(inner, dict) else {}
    env = inner.get("Env")
    labels = inner.get("Labels")
    created = parsed.get("created")
    return ConfigSummary(
        entrypoint=_strings(inner.get("Entrypoint")),
        cmd=_strings(inner.get("Cmd")),
        env_names=[item.split("=", 1)[0] for item in env if isinstance(item, str)] if isinstance(env, list) else [],
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        created=created if isinstance(created, str) else None,
    )


def config_platform(blobs: BlobStore, entry: dict[str, Any]) -> str | None:
    parsed = _read_config(blobs, entry)
    return platform_text(parsed) if parsed is not None else None


def _referrers(metadata: MetadataStore, repository: str, digest: str) -> list[Referrer]:
    return [
        Referrer(str(d.digest), d.artifact_type or d.media_type, d.size)
        for d in metadata.referrers(repository, digest, None)
    ]


def _strings(value: Any) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        body = strictjson.loads(payload)
    except strictjson.JsonInvalid:
        return {}
    return body if isinstance(body, dict) else {}
