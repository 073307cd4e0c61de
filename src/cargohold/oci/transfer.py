"""What moving an image means, independent of where it moves: sources, targets, platforms and the copy plan.

An image travels between registries, OCI layouts and docker archives. The copy algorithm
(:func:`cargohold.client.copy.copy_image`) and the archive writer (:func:`cargohold.oci.archive.write_docker_archive`)
are written against two small interfaces defined here, :class:`ImageSource` and :class:`ImageTarget`, so
neither needs to know which kind of store is on either side. This module is pure model: it reads manifests
through those interfaces and decides what has to move (:func:`plan_copy`) and which image of an index a
``--platform`` means (:func:`select_platform`); the adapters that do I/O live with their stores (the registry
client, :mod:`cargohold.oci.layout`, :mod:`cargohold.oci.archive`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.errors import CargoholdError, DigestMismatchError, PlatformNotFoundError
from cargohold.oci.manifest import Manifest

ProgressCallback = Callable[[int], object]
"""Called with the number of bytes just transferred (negative when a resume rewinds)."""
BlobSource = Callable[[int], Iterator[bytes]]
"""Opens a blob's content at a byte offset. Reopened on resume, so it must be repeatable."""
_NON_DISTRIBUTABLE = ("foreign", "nondistributable")


class ImageSource(Protocol):
    """Where manifests and blobs come from."""

    @property
    def name(self) -> str:
        """How messages name the source (``host/repository``, ``oci:DIR``, ``docker-archive:FILE``)."""
        ...

    def get_manifest(self, reference: str | Digest | None) -> Manifest: ...
    def blob_source(self, descriptor: Descriptor) -> BlobSource: ...
    def referrers(self, digest: Digest) -> list[Descriptor]: ...


class ImageTarget(Protocol):
    """Where they go. ``put_blob`` returns ``"uploaded"``, ``"mounted"`` or ``"skipped"``."""

    @property
    def name(self) -> str: ...

    def has_blob(self, descriptor: Descriptor) -> bool: ...
    def put_blob(self, descriptor: Descriptor, source: ImageSource, progress: ProgressCallback | None) -> str: ...
    def put_manifest(self, manifest: Manifest, tag: str | None) -> bool:
        """Store a manifest; True when the target indexed its ``subject`` itself (referrers API)."""
        ...

    def add_referrer(self, subject: Digest, referrer: Descriptor) -> None: ...


# -- platform selection -----------------------------------------------------------------------------


class PlatformInvalid(CargoholdError, ValueError):
    """A ``--platform`` value is not ``os/arch[/variant]``; the message shows the expected form."""


def parse_platform(value: str) -> tuple[str, str, str | None]:
    """``os/arch[/variant]`` → a tuple; raises :class:`PlatformInvalid` with the expected form."""
    parts = value.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise PlatformInvalid(f"platform {value!r} is not of the form os/arch[/variant], e.g. linux/arm64")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def platform_label(platform: dict[str, Any] | None) -> str:
    if not platform:
        return "unknown"
    label = f"{platform.get('os', '?')}/{platform.get('architecture', '?')}"
    return f"{label}/{platform['variant']}" if platform.get("variant") else label


def select_platform(index: dict[str, Any], platform: str) -> Descriptor:
    """The index entry for ``platform``; a variant is matched only when asked for.

    When nothing matches the error lists what the index offers (attestation entries excluded), which is
    what a user needs to fix the ``--platform`` flag.
    """
    want_os, want_arch, want_variant = parse_platform(platform)
    entries = [Descriptor.from_json(m, "index entry") for m in index.get("manifests", [])]
    for entry in entries:
        plat = entry.platform or {}
        if (
            plat.get("os") == want_os
            and plat.get("architecture") == want_arch
            and (want_variant is None or plat.get("variant") == want_variant)
        ):
            return entry
    available = sorted(
        {platform_label(e.platform) for e in entries if (e.platform or {}).get("os") not in (None, "unknown")}
    )
    raise PlatformNotFoundError(
        f"the image has no {platform} variant; available platforms: {', '.join(available) or 'none'}"
    )


# -- the copy plan ----------------------------------------------------------------------------------


@dataclass
class CopyPlan:
    """Everything an image consists of, in the order a target must receive it."""

    manifests: list[Manifest] = field(default_factory=list)
    """Push order: every child before the manifest that lists it."""
    blobs: dict[Digest, Descriptor] = field(default_factory=dict)
    """Every distinct blob (foreign layers excluded: runtimes fetch them from their URLs)."""
    referrers: list[tuple[Digest, Manifest, Descriptor]] = field(default_factory=list)
    """``(subject, manifest, descriptor)`` of every referrer found, pushed after what they refer to."""
    seen: set[Digest] = field(default_factory=set)


def plan_copy(source: ImageSource, top: Manifest, *, include_referrers: bool = True) -> CopyPlan:
    """Walk ``top``: child manifests of indexes (attestation manifests included: they are ordinary children),
    their blobs, then the referrers of every manifest found (signatures, SBOMs), recursively."""
    plan = CopyPlan()
    _walk(source, top, plan)
    if include_referrers:
        _walk_referrers(source, [m.digest for m in plan.manifests], plan)
    return plan


def _walk(source: ImageSource, manifest: Manifest, plan: CopyPlan) -> None:
    if manifest.digest in plan.seen:
        return
    plan.seen.add(manifest.digest)
    body = manifest.json()
    if manifest.is_index:
        for i, entry in enumerate(body.get("manifests", [])):
            child_desc = Descriptor.from_json(entry, f"manifests[{i}] of {manifest.digest}")
            child = source.get_manifest(child_desc.digest)
            if child.digest != child_desc.digest:
                raise DigestMismatchError(f"{source.name} served {child.digest} for {child_desc.digest}")
            _walk(source, child, plan)
    else:
        for entry in [body.get("config"), *(body.get("layers") or [])]:
            if not entry:
                continue
            desc = Descriptor.from_json(entry, f"a blob of {manifest.digest}")
            if any(word in desc.media_type for word in _NON_DISTRIBUTABLE) and desc.urls:
                continue  # foreign layers are fetched by runtimes from their URLs, never pushed
            plan.blobs.setdefault(desc.digest, desc)
    plan.manifests.append(manifest)


def _walk_referrers(source: ImageSource, subjects: Iterable[Digest], plan: CopyPlan) -> None:
    queue = list(subjects)
    while queue:
        subject = queue.pop(0)
        for desc in source.referrers(subject):
            if desc.digest in plan.seen:
                continue
            manifest = source.get_manifest(desc.digest)
            before = len(plan.manifests)
            _walk(source, manifest, plan)
            # The referrer's own children (if it is an index) go before it; it is pushed in the last phase.
            plan.manifests.pop()
            plan.referrers.append((subject, manifest, desc))
            queue.extend(m.digest for m in [*plan.manifests[before:], manifest])


__all__ = [
    "BlobSource",
    "CopyPlan",
    "ImageSource",
    "ImageTarget",
    "PlatformInvalid",
    "ProgressCallback",
    "parse_platform",
    "plan_copy",
    "platform_label",
    "select_platform",
]
