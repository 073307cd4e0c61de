"""The OCI content descriptor: what a manifest, an index or a layout's ``index.json`` says about one blob.

One class for the registry (validating what a manifest PUT references, listing referrers) and the client
(layouts, archives, copies). Parsing is strict about the fields it models, because a descriptor that breaks
the spec here would be refused by any registry later; fields it does not model (``data``, future additions)
are kept in :attr:`Descriptor.extra` so that reading and writing a descriptor loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cargohold.oci.digest import Digest, DigestError
from cargohold.oci.errors import CargoholdError

MAX_SIZE = 2**63 - 1
"""Largest descriptor size: what a signed 64-bit integer (Go's int64, SQLite's INTEGER) holds."""
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
_MODELLED = frozenset({"mediaType", "digest", "size", "annotations", "platform", "artifactType", "urls"})


class DescriptorError(CargoholdError, ValueError):
    """A JSON object is not a valid descriptor; the message names where it was and what is wrong."""


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str] | None = None
    platform: dict[str, Any] | None = None
    artifact_type: str | None = None
    urls: tuple[str, ...] | None = None
    """Where a non-distributable (foreign) layer can be fetched; ``None`` when the descriptor has no ``urls``."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Fields not modelled above (``data``, ...), kept so that a round trip loses nothing."""

    @classmethod
    def from_json(cls, value: Any, where: str = "descriptor") -> Descriptor:
        """Parse and validate a descriptor object; :class:`DescriptorError` names ``where`` and the problem."""
        if not isinstance(value, dict):
            raise DescriptorError(f"{where} must be a JSON object")
        media_type = value.get("mediaType")
        size = value.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise DescriptorError(f"{where} has no mediaType")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_SIZE:
            raise DescriptorError(f"{where} has no valid size (an integer from 0 to {MAX_SIZE})")
        try:
            digest = Digest.parse(value.get("digest", ""))
        except DigestError as exc:
            raise DescriptorError(f"{where}: {exc}") from None
        annotations = value.get("annotations")
        if annotations is not None and not (
            isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values())
        ):
            raise DescriptorError(f"{where} has annotations that are not a string map")
        urls = value.get("urls")
        if urls is not None and not (isinstance(urls, list) and all(isinstance(u, str) for u in urls)):
            raise DescriptorError(f"{where} has urls that are not a list of strings")
        artifact_type = value.get("artifactType")
        if artifact_type is not None and not isinstance(artifact_type, str):
            raise DescriptorError(f"{where} has an artifactType that is not a string")
        platform = value.get("platform")
        if platform is not None:
            check_platform(platform, where)
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=annotations,
            platform=platform,
            artifact_type=artifact_type,
            urls=None if urls is None else tuple(urls),
            extra={key: item for key, item in value.items() if key not in _MODELLED},
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object: optional fields only when set (an empty ``artifactType`` or annotation map counts as
        unset, as the spec's examples write them), then the fields kept in :attr:`extra`."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.platform is not None:
            out["platform"] = self.platform
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.urls is not None:
            out["urls"] = list(self.urls)
        out.update(self.extra)
        return out

    @property
    def ref_name(self) -> str | None:
        """The ``org.opencontainers.image.ref.name`` annotation: the entry's name in an OCI layout."""
        return (self.annotations or {}).get(REF_NAME_ANNOTATION)


def check_platform(platform: Any, where: str) -> None:
    """The OCI image index's platform object: string fields, and string lists for the feature lists."""
    if not isinstance(platform, dict):
        raise DescriptorError(f"{where} has a platform that is not a JSON object")
    for key in ("architecture", "os", "os.version", "variant"):
        if key in platform and not isinstance(platform[key], str):
            raise DescriptorError(f"{where}: platform {key} must be a string")
    for key in ("os.features", "features"):
        values = platform.get(key)
        if values is not None and not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
            raise DescriptorError(f"{where}: platform {key} must be a list of strings")


__all__ = ["MAX_SIZE", "REF_NAME_ANNOTATION", "Descriptor", "DescriptorError", "check_platform"]
