"""Deterministic sample images for the demo, the tests and the benchmarks.

Real images are too big to ship and too variable to benchmark against, so we generate them: a seeded PRNG
fills real tar layers with incompressible bytes, and the same arguments always produce byte-identical
blobs (and therefore the same digests) on every machine. Layers are genuine uncompressed tar archives so
that umoci and container runtimes can unpack them; each carries a small, predictable text file that tests
can look for after unpacking, next to the bulk random payload.

Nothing is ever held in memory whole: random bytes are produced in 1 MiB pieces and streamed through
``tarfile`` straight into a hashing :class:`~cargohold.oci.layout.BlobWriter`.
"""

from __future__ import annotations

import io
import random
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cargohold.oci import mediatypes
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.layout import OCILayout

PIECE = 1 << 20
"""PRNG output granularity. Fixed, so the byte stream never depends on how tarfile sizes its reads."""

CREATED = "2024-01-01T00:00:00Z"
"""A fixed timestamp: wall-clock time in a config would change its digest on every run."""

MTIME = 1704067200  # CREATED as a Unix timestamp, used for every tar entry.

IN_TOTO_MEDIA_TYPE = "application/vnd.in-toto+json"
ATTESTATION_TYPE = "attestation-manifest"
REFERENCE_TYPE_ANNOTATION = "vnd.docker.reference.type"
REFERENCE_DIGEST_ANNOTATION = "vnd.docker.reference.digest"
PREDICATE_TYPE_ANNOTATION = "in-toto.io/predicate-type"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v0.2"

Platform = tuple[str, ...]
"""``(os, architecture)`` or ``(os, architecture, variant)``."""


@dataclass(frozen=True)
class SampleImage:
    """What :func:`write_sample_image` stored: every descriptor, so callers can check digests end to end."""

    manifest: Descriptor
    config: Descriptor
    layers: list[Descriptor]
    platform: Platform
    info_files: dict[str, bytes] = field(default_factory=dict)
    """Path inside the unpacked rootfs -> exact content, one small file per layer."""

    @property
    def blobs(self) -> list[Descriptor]:
        """Config and layers (not the manifest itself)."""
        return [self.config, *self.layers]

    @property
    def digests(self) -> set[Digest]:
        """Every digest this image consists of, manifest included."""
        return {self.manifest.digest, *(d.digest for d in self.blobs)}


@dataclass(frozen=True)
class SampleIndex:
    """What :func:`write_sample_index` stored."""

    index: Descriptor
    images: list[SampleImage]
    attestations: list[Descriptor]
    """Attestation manifests (one per image when requested), as listed in the index."""
    attestation_blobs: list[Descriptor] = field(default_factory=list)

    @property
    def digests(self) -> set[Digest]:
        """Every digest reachable from the index, the index included."""
        out = {self.index.digest}
        for image in self.images:
            out |= image.digests
        out |= {d.digest for d in self.attestations}
        out |= {d.digest for d in self.attestation_blobs}
        return out


class _RandomStream(io.RawIOBase):
    """``size`` pseudo-random bytes from ``rng``, generated one fixed-size piece at a time."""

    def __init__(self, rng: random.Random, size: int) -> None:
        super().__init__()
        self._rng = rng
        self._remaining = size
        self._piece = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._pos == len(self._piece):
            if self._remaining == 0:
                return 0
            take = min(PIECE, self._remaining)
            self._piece = self._rng.randbytes(take)
            self._remaining -= take
            self._pos = 0
        view = memoryview(buffer)
        n = min(len(view), len(self._piece) - self._pos)
        view[:n] = self._piece[self._pos : self._pos + n]
        self._pos += n
        return n


def _tar_info(name: str, size: int = 0, *, directory: bool = False) -> tarfile.TarInfo:
    """A tar header with fixed ownership, mode and mtime so layer digests are reproducible."""
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _platform_label(platform: Platform) -> str:
    return "/".join(platform)


def _platform_dict(platform: Platform) -> dict[str, str]:
    if len(platform) not in (2, 3):
        raise ValueError(f"platform must be (os, architecture[, variant]), got {platform!r}")
    out = {"architecture": platform[1], "os": platform[0]}
    if len(platform) == 3:
        out["variant"] = platform[2]
    return out


def _write_layer(
    layout: OCILayout, index: int, size: int, seed: int, platform: Platform
) -> tuple[Descriptor, str, bytes]:
    """One tar layer: ``layer-<i>/info.txt`` (predictable) plus ``layer-<i>/data.bin`` (random)."""
    rng = random.Random(f"cargohold-sample:{seed}:{_platform_label(platform)}:{index}")
    info_path = f"layer-{index}/info.txt"
    info_text = (
        f"cargohold sample image\nseed={seed}\nplatform={_platform_label(platform)}\n"
        f"layer={index}\npayload_bytes={size}\n"
    ).encode()
    with layout.blob_writer() as writer:
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_tar_info(f"layer-{index}", directory=True))
            tar.addfile(_tar_info(info_path, len(info_text)), io.BytesIO(info_text))
            tar.addfile(_tar_info(f"layer-{index}/data.bin", size), _RandomStream(rng, size))
        digest = writer.commit()
        descriptor = Descriptor(mediatypes.OCI_LAYER_TAR, digest, writer.size)
    return descriptor, info_path, info_text


def write_sample_image(
    layout_dir: Path | str,
    *,
    layers: int,
    layer_size: int,
    seed: int,
    platform: Platform = ("linux", "amd64"),
    ref: str | None = "latest",
) -> SampleImage:
    """Write a single-platform OCI image into ``layout_dir`` (created if needed) and name it ``ref``.

    ``layer_size`` is the random payload per layer; each tar blob is slightly larger (headers, padding,
    the info file). With ``ref=None`` the blobs are written but index.json is left alone, which is how
    :func:`write_sample_index` assembles multi-platform images.
    """
    if layers < 1:
        raise ValueError("an image needs at least one layer")
    if layer_size < 0:
        raise ValueError("layer_size must be >= 0")
    platform_fields = _platform_dict(platform)
    layout = OCILayout.create(layout_dir)
    layer_descs: list[Descriptor] = []
    info_files: dict[str, bytes] = {}
    for i in range(layers):
        desc, info_path, info_text = _write_layer(layout, i, layer_size, seed, platform)
        layer_descs.append(desc)
        info_files[info_path] = info_text
    config = {
        **platform_fields,
        "created": CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
            "Labels": {"io.cargohold.sample.seed": str(seed)},
        },
        # Uncompressed tar layers: the diff_id (digest of the uncompressed tar) is the layer digest.
        "rootfs": {"type": "layers", "diff_ids": [str(d.digest) for d in layer_descs]},
        "history": [
            {"created": CREATED, "created_by": f"cargohold.sample layer {i} ({layer_size} random bytes)"}
            for i in range(layers)
        ],
    }
    config_desc = layout.write_json(config, mediatypes.OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": config_desc.to_json(),
        "layers": [d.to_json() for d in layer_descs],
    }
    manifest_desc = layout.write_json(manifest, mediatypes.OCI_MANIFEST)
    if ref is not None:
        manifest_desc = layout.add_manifest(manifest_desc, ref)
    return SampleImage(manifest_desc, config_desc, layer_descs, tuple(platform), info_files)


def _write_attestation(layout: OCILayout, image: SampleImage, seed: int) -> tuple[Descriptor, list[Descriptor]]:
    """A BuildKit-shaped provenance attestation manifest for ``image``; returns it and its blobs."""
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": SLSA_PROVENANCE,
        "subject": [
            {
                "name": f"pkg:docker/cargohold/sample@latest?platform={_platform_label(image.platform)}",
                "digest": {image.manifest.digest.algorithm: image.manifest.digest.hex},
            }
        ],
        "predicate": {
            "builder": {"id": "https://github.com/cargohold/sample"},
            "buildType": "https://cargohold.invalid/sample@v1",
            "invocation": {"parameters": {"seed": seed, "platform": _platform_label(image.platform)}},
        },
    }
    layer = layout.write_json(statement, IN_TOTO_MEDIA_TYPE, annotations={PREDICATE_TYPE_ANNOTATION: SLSA_PROVENANCE})
    config = layout.write_json(
        {
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [str(layer.digest)]},
        },
        mediatypes.OCI_CONFIG,
    )
    manifest = layout.write_json(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json()],
        },
        mediatypes.OCI_MANIFEST,
        platform={"architecture": "unknown", "os": "unknown"},
        annotations={
            REFERENCE_DIGEST_ANNOTATION: str(image.manifest.digest),
            REFERENCE_TYPE_ANNOTATION: ATTESTATION_TYPE,
        },
    )
    return manifest, [config, layer]


def write_sample_index(
    layout_dir: Path | str,
    platforms: Sequence[Platform] = (("linux", "amd64"), ("linux", "arm64")),
    *,
    layers: int = 2,
    layer_size: int = 1 << 20,
    seed: int = 0,
    ref: str | None = "latest",
    attestations: bool = False,
) -> SampleIndex:
    """Write a multi-platform OCI image index: one distinct image per platform, optionally attested.

    Each platform's layers are derived from ``(seed, platform)``, so the images share no blobs, as real
    per-architecture builds would not. With ``attestations=True`` every image gets a BuildKit-style
    attestation manifest (platform ``unknown/unknown``, ``vnd.docker.reference.*`` annotations,
    ``application/vnd.in-toto+json`` layer), which is the shape registries must carry through untouched.
    """
    if not platforms:
        raise ValueError("an index needs at least one platform")
    labels = [_platform_label(p) for p in platforms]
    if len(set(labels)) != len(labels):
        raise ValueError(f"platforms must be distinct, got {labels}")
    layout = OCILayout.create(layout_dir)
    images = [
        write_sample_image(layout.root, layers=layers, layer_size=layer_size, seed=seed, platform=p, ref=None)
        for p in platforms
    ]
    entries = [
        Descriptor(
            mediatypes.OCI_MANIFEST,
            img.manifest.digest,
            img.manifest.size,
            platform=_platform_dict(img.platform),
        )
        for img in images
    ]
    attestation_manifests: list[Descriptor] = []
    attestation_blobs: list[Descriptor] = []
    if attestations:
        for img in images:
            manifest, blobs = _write_attestation(layout, img, seed)
            attestation_manifests.append(manifest)
            attestation_blobs.extend(blobs)
    index = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_INDEX,
        "manifests": [d.to_json() for d in [*entries, *attestation_manifests]],
    }
    index_desc = layout.write_json(index, mediatypes.OCI_INDEX)
    if ref is not None:
        index_desc = layout.add_manifest(index_desc, ref)
    return SampleIndex(index_desc, images, attestation_manifests, attestation_blobs)
