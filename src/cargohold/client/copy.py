"""Copy images between registries and OCI layouts, blob bytes streaming straight through.

The algorithm is written once against the two small interfaces of :mod:`cargohold.oci.transfer`,
:class:`~cargohold.oci.transfer.ImageSource` and :class:`~cargohold.oci.transfer.ImageTarget`, with adapters here
for a registry repository (:class:`RegistryRepo`, both roles) and an OCI layout directory (:class:`LayoutStore`,
both roles). That one function then backs
``cargohold pull --output oci:DIR`` (registry → layout), ``cargohold save oci:DIR`` (layout → registry)
and registry → registry pushes, with the same ordering and verification guarantees:

1. resolve the top manifest (optionally narrowing an index to one ``--platform``);
2. plan (:func:`~cargohold.oci.transfer.plan_copy`): child manifests of indexes (attestation manifests
   included: they are ordinary children), then referrers of every manifest found (signatures, SBOMs),
   recursively;
3. copy every distinct blob in parallel (``jobs`` threads): skip what the target has (HEAD), mount when
   source and target are repositories of the same registry, else have a Cargohold source upload the blob
   itself (:class:`ServerPush`), else pipe the source GET into the target upload; nothing touches the
   disk in between;
4. push manifests children first (by digest), then the top manifest under each tag, then referrers.

Digests are preserved because manifests are moved as the exact bytes the source served.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cargohold.client.errors import RegistryError
from cargohold.client.registry import RegistryClient, is_loopback, referrers_tag
from cargohold.oci import mediatypes
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.layout import OCILayout
from cargohold.oci.manifest import Manifest
from cargohold.oci.transfer import (
    BlobSource,
    ImageSource,
    ImageTarget,
    ProgressCallback,
    parse_platform,
    plan_copy,
    platform_label,
    select_platform,
)

DEFAULT_JOBS = 6
"""Parallel blob transfers; the same default skopeo uses ("follow Firefox")."""


# -- adapters ---------------------------------------------------------------------------------------


class ServerPush:
    """Lets a Cargohold source upload its blobs to the destination itself (server-side push).

    ``required``: a refusal is an error (``--transfer server``); otherwise the first refusal is reported
    through ``on_fallback`` once and every blob streams through the client from then on.
    """

    FALLBACK_CODES = frozenset(
        {"SERVER_PUSH_DISABLED", "SERVER_PUSH_UNSUPPORTED", "DESTINATION_NOT_ALLOWED", "DESTINATION_UNREACHABLE"}
    )
    """Refusals worth streaming through the client instead: the server will not, may not, or cannot reach
    the destination (its network or CA bundle may differ from this machine's)."""

    def __init__(self, *, required: bool = False, on_fallback: Callable[[str], object] | None = None) -> None:
        self.required = required
        self.on_fallback = on_fallback
        self.refusal: str | None = None
        self.pushed = 0
        """Blobs the server uploaded."""
        self._lock = threading.Lock()

    def push(
        self, source: RegistryRepo, descriptor: Descriptor, target: RegistryRepo, progress: ProgressCallback | None
    ) -> bool:
        """Whether the server uploaded the blob; ``False``: stream it through the client instead."""
        if self.refusal is not None:
            return False
        if is_loopback(target.client.host) and not is_loopback(source.client.host):
            # "localhost" would mean the server's own machine, not ours.
            return self._refused(
                f"{target.client.host} is this machine's own address, which the Cargohold server cannot reach"
            )
        try:
            source.client.push_blob_from_server(
                source.repository, descriptor.digest, target.client, target.repository, progress=progress
            )
        except RegistryError as exc:
            declined = self.FALLBACK_CODES.intersection(exc.codes) or (exc.status in (404, 405) and not exc.codes)
            if not declined:
                raise
            return self._refused("; ".join(e.message for e in exc.errors if e.message) or str(exc))
        with self._lock:
            self.pushed += 1
        return True

    def _refused(self, reason: str) -> bool:
        if self.required:
            raise RegistryError("pushing from the Cargohold server (--transfer server)", reason=reason, status=400)
        with self._lock:
            first, self.refusal = self.refusal is None, self.refusal or reason
        if first and self.on_fallback is not None:
            self.on_fallback(reason)
        return False


@dataclass
class RegistryRepo:
    """One repository of a registry, usable as a source and as a target.

    ``server_push``: set on a Cargohold source to have its server upload blobs to registry targets itself.
    """

    client: RegistryClient
    repository: str
    server_push: ServerPush | None = None

    @property
    def name(self) -> str:
        return self.client.where(self.repository)

    def get_manifest(self, reference: str | Digest | None) -> Manifest:
        if reference is None:
            raise ValueError(f"a tag or digest is needed to read from {self.name}")
        return self.client.get_manifest(self.repository, reference)

    def blob_source(self, descriptor: Descriptor) -> BlobSource:
        return self.client.blob_source(self.repository, descriptor.digest)

    def referrers(self, digest: Digest) -> list[Descriptor]:
        return self.client.referrers(self.repository, digest)

    def has_blob(self, descriptor: Descriptor) -> bool:
        """HEAD, and believe a "yes" only with the right size: a destination that answers 200 to everything
        (a misconfigured proxy, a web server on the wrong port) would otherwise "receive" a whole image."""
        size = self.client.blob_exists(self.repository, descriptor.digest, for_push=True)
        if size is not None and size not in (0, descriptor.size):
            raise RegistryError(
                f"checking blob {descriptor.digest} in {self.name}",
                reason=f"it claims {size} bytes of a {descriptor.size}-byte blob, so it does not behave like an "
                "OCI registry; check the destination address",
            )
        return size is not None

    def put_blob(self, descriptor: Descriptor, source: ImageSource, progress: ProgressCallback | None) -> str:
        mount_from = None
        if isinstance(source, RegistryRepo) and source.client.registry == self.client.registry:
            mount_from = source.repository
        elif (
            isinstance(source, RegistryRepo)
            and source.server_push is not None
            and source.server_push.push(source, descriptor, self, progress)
        ):
            return "uploaded"
        return self.client.upload_blob(
            self.repository,
            descriptor.digest,
            descriptor.size,
            source.blob_source(descriptor),
            progress=progress,
            mount_from=mount_from,
        )

    def put_manifest(self, manifest: Manifest, tag: str | None) -> bool:
        return self.client.put_manifest(self.repository, tag or manifest.digest, manifest).subject_processed

    def add_referrer(self, subject: Digest, referrer: Descriptor) -> None:
        """Maintain the ``<alg>-<hex>`` fallback tag (for registries without the referrers API)."""
        index = self.client.referrers_tag_index(self.repository, subject) or {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_INDEX,
            "manifests": [],
        }
        manifests = [m for m in index.get("manifests", []) if m.get("digest") != str(referrer.digest)]
        manifests.append(referrer.to_json())
        index["manifests"] = manifests
        data = json.dumps(index, separators=(",", ":")).encode()
        self.client.put_manifest(
            self.repository, referrers_tag(subject), Manifest(data, mediatypes.OCI_INDEX, Digest.of(data))
        )


@dataclass
class LayoutStore:
    """An OCI layout directory, usable as a source and as a target.

    Referrers live in ``index.json`` as untagged entries (what oras and BuildKit do), so a layout → registry
    copy finds them by scanning for manifests whose ``subject`` matches.
    """

    layout: OCILayout

    @property
    def name(self) -> str:
        return f"oci:{self.layout.root}"

    def get_manifest(self, reference: str | Digest | None) -> Manifest:
        if isinstance(reference, Digest) or (reference is not None and _looks_like_digest(str(reference))):
            digest = Digest.parse(str(reference))
            media_type = None
        else:
            desc = self.layout.resolve(reference)
            digest, media_type = desc.digest, desc.media_type
        data = self.layout.read_blob(digest, max_size=8 << 20)
        manifest = Manifest.from_bytes(data, media_type)
        return Manifest(manifest.data, manifest.media_type, digest)

    def blob_source(self, descriptor: Descriptor) -> BlobSource:
        path = self.layout.blob_path(descriptor.digest)

        def open_at(offset: int) -> Iterator[bytes]:
            if offset == 0:  # verified read; a resume cannot re-verify the prefix, the target does that
                yield from self.layout.iter_blob(descriptor.digest, descriptor.size)
                return
            with open(path, "rb") as handle:
                handle.seek(offset)
                while chunk := handle.read(1 << 20):
                    yield chunk

        return open_at

    def referrers(self, digest: Digest) -> list[Descriptor]:
        out = []
        for entry in self.layout.manifests():
            if entry.ref_name is not None or entry.media_type not in mediatypes.MANIFESTS:
                continue
            try:
                subject = (self.layout.read_json(entry.digest).get("subject") or {}).get("digest")
            except Exception:  # noqa: S112 - an unreadable entry is simply not a referrer of ours
                continue
            if subject == str(digest):
                out.append(entry)
        return out

    def has_blob(self, descriptor: Descriptor) -> bool:
        return self.layout.has_blob(descriptor.digest)

    def put_blob(self, descriptor: Descriptor, source: ImageSource, progress: ProgressCallback | None) -> str:
        if isinstance(source, RegistryRepo):
            # The client's download resumes dropped connections with Range and verifies the digest (it raises
            # before we commit if the bytes do not match), so the writer need not hash them again; it still
            # lands the file atomically, and only on commit.
            with self.layout.blob_writer(descriptor.digest.algorithm, verified=descriptor.digest) as writer:
                source.client.download_blob(
                    source.repository, descriptor.digest, writer.write, size=descriptor.size, progress=progress
                )
                writer.commit(descriptor.digest, descriptor.size)
            return "uploaded"

        def counted() -> Iterator[bytes]:
            for chunk in source.blob_source(descriptor)(0):
                if progress is not None:
                    progress(len(chunk))
                yield chunk

        self.layout.write_blob(counted(), expected=descriptor.digest, expected_size=descriptor.size)
        return "uploaded"

    def put_manifest(self, manifest: Manifest, tag: str | None) -> bool:
        self.layout.write_blob([manifest.data], expected=manifest.digest)
        if tag is not None:
            self.layout.add_manifest(manifest.descriptor(), ref_name=tag)
        return False

    def add_referrer(self, subject: Digest, referrer: Descriptor) -> None:
        self.layout.add_manifest(referrer)


def _looks_like_digest(text: str) -> bool:
    algorithm, sep, rest = text.partition(":")
    return bool(sep) and algorithm in ("sha256", "sha512") and "/" not in rest


# -- the copy ---------------------------------------------------------------------------------------


@dataclass
class CopyResult:
    """What happened, for the CLI summary and for tests."""

    digest: Digest
    media_type: str
    manifests: list[Digest] = field(default_factory=list)
    referrers: list[Digest] = field(default_factory=list)
    uploaded: list[Digest] = field(default_factory=list)
    mounted: list[Digest] = field(default_factory=list)
    skipped: list[Digest] = field(default_factory=list)


def copy_image(
    source: ImageSource,
    reference: str | Digest | None,
    target: ImageTarget,
    tags: Sequence[str] = (),
    *,
    platform: str | None = None,
    jobs: int = DEFAULT_JOBS,
    include_referrers: bool = True,
    progress: ProgressCallback | None = None,
    on_blob: Callable[[Descriptor, str], object] | None = None,
) -> CopyResult:
    """Copy the image at ``reference`` in ``source`` to ``target`` under ``tags`` (by digest if none).

    ``platform`` (``os/arch[/variant]``) narrows an index to one image manifest. ``progress`` receives
    byte deltas of the blobs that really move (a blob the target has is only reported to ``on_blob``, so a
    progress display never counts it as transferred); ``on_blob(descriptor, how)`` is called as each blob
    finishes.
    """
    top = source.get_manifest(reference)
    if platform is not None and top.is_index:
        top = source.get_manifest(select_platform(top.json(), platform).digest)
    plan = plan_copy(source, top, include_referrers=include_referrers)

    result = CopyResult(top.digest, top.media_type)

    def copy_blob(desc: Descriptor) -> tuple[Descriptor, str]:
        if target.has_blob(desc):
            return desc, "skipped"
        return desc, target.put_blob(desc, source, progress)

    blobs = list(plan.blobs.values())
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="cargohold-copy") as pool:
        for desc, how in pool.map(copy_blob, blobs):
            {"uploaded": result.uploaded, "mounted": result.mounted, "skipped": result.skipped}[how].append(desc.digest)
            if on_blob is not None:
                on_blob(desc, how)

    for manifest in plan.manifests:
        if manifest.digest == top.digest:
            continue
        target.put_manifest(manifest, None)
        result.manifests.append(manifest.digest)
    names: Sequence[str | None] = tags or [None]
    for tag in names:
        target.put_manifest(top, tag)
    result.manifests.append(top.digest)
    for subject, manifest, desc in plan.referrers:
        if not target.put_manifest(manifest, None):
            target.add_referrer(subject, desc)
        result.referrers.append(manifest.digest)
    return result


__all__ = [
    "DEFAULT_JOBS",
    "CopyResult",
    "ImageSource",
    "ImageTarget",
    "LayoutStore",
    "RegistryRepo",
    "ServerPush",
    "copy_image",
    "parse_platform",
    "platform_label",
    "select_platform",
]
