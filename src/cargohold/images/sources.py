"""Where an image to save comes from: ``oci:``, ``oci-archive:``, ``docker-archive:``, ``docker-daemon:``.

Each kind is opened as an :class:`~cargohold.oci.transfer.ImageSource`, so saving is one
:func:`~cargohold.client.copy.copy_image` call whatever the input. Archives are untrusted input (CI
artifacts, downloads): an OCI archive is stream-extracted member by member after each member's path and
type is validated (no absolute paths, no ``..``, no links or devices), and tarfile's ``data`` filter is
applied as a second guard; docker archives are validated by :class:`~cargohold.oci.archive.DockerArchive`.
"""

from __future__ import annotations

import contextlib
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cargohold.client.copy import LayoutStore
from cargohold.images.common import ImageError
from cargohold.oci.archive import ArchiveError, DockerArchive, DockerArchiveSource, check_member
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.layout import LayoutError, OCILayout
from cargohold.oci.manifest import Manifest
from cargohold.oci.transfer import ImageSource, platform_label

SOURCE_KINDS = ("oci", "oci-archive", "docker-archive", "docker-daemon")
CONFIG_MAX = 8 << 20


class SourceError(ImageError):
    """The source string or the image it names is unusable; the message says how to fix it."""


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``KIND:PATH[:REF]``."""

    kind: str
    path: str
    ref: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}" + (f":{self.ref}" if self.ref else "")


def _split_path_ref(rest: str) -> tuple[str, str | None]:
    """``PATH[:REF]`` where PATH may itself contain ``:``: the longest existing prefix is the path."""
    if Path(rest).exists() or ":" not in rest:
        return rest, None
    path, _, ref = rest.rpartition(":")
    while path and not Path(path).exists() and ":" in path:
        path, _, head = path.rpartition(":")
        ref = f"{head}:{ref}"
    return (path, ref or None) if Path(path).exists() else (rest, None)


def parse_source(text: str) -> SourceSpec:
    kind, sep, rest = text.partition(":")
    if not sep or kind not in SOURCE_KINDS or not rest:
        raise SourceError(
            f"{text!r} is not an image source; write oci:DIR[:REF], oci-archive:FILE, docker-archive:FILE "
            "or docker-daemon:IMAGE"
        )
    if kind == "docker-daemon":
        return SourceSpec(kind, rest)
    path, ref = _split_path_ref(rest)
    return SourceSpec(kind, path, ref)


def extract_oci_archive(archive: Path, destination: Path) -> OCILayout:
    """Stream-extract an OCI layout tar into ``destination`` after validating every member.

    Links are refused outright: an OCI layout never needs them, and refusing is simpler to trust than
    proving that a link's target stays inside. The archive is read once, sequentially (``r|*``), so a
    compressed archive or a pipe works and nothing is held in memory.
    """
    destination.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                name = check_member(member)
                if member.issym() or member.islnk():
                    raise ArchiveError(f"{archive}: member {name!r} is a link, which an OCI layout never has")
                tar.extract(member, destination, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise SourceError(
            f"{archive} is not a readable OCI archive ({exc}); create it with skopeo copy or "
            "docker buildx --output type=oci"
        ) from None
    try:
        return OCILayout.open(destination)
    except LayoutError as exc:
        raise SourceError(f"{archive} does not contain an OCI layout ({exc})") from None


@dataclass
class OpenedSource:
    """An opened source: where to read, which manifest, and how to describe it in messages."""

    source: ImageSource
    reference: str | Digest | None
    description: str
    cleanup: list[Any] = field(default_factory=list)


@contextlib.contextmanager
def open_source(spec: SourceSpec | str, workdir: Path, *, docker_host: str | None = None) -> Iterator[OpenedSource]:
    """Open ``spec`` for reading; ``workdir`` (a private temp dir) holds extracted or exported archives."""
    if isinstance(spec, str):
        spec = parse_source(spec)
    workdir.mkdir(parents=True, exist_ok=True)
    if spec.kind == "oci":
        try:
            layout = OCILayout.open(spec.path)
        except (LayoutError, OSError) as exc:
            raise SourceError(f"{spec.path} is not an OCI layout ({exc}); fix the path after oci:") from None
        yield OpenedSource(LayoutStore(layout), spec.ref or _default_ref(layout), str(spec))
    elif spec.kind == "oci-archive":
        if not Path(spec.path).is_file():
            raise SourceError(f"{spec.path} does not exist; check the path after oci-archive:")
        layout = extract_oci_archive(Path(spec.path), workdir / "oci")
        yield OpenedSource(LayoutStore(layout), spec.ref or _default_ref(layout), str(spec))
    elif spec.kind == "docker-archive":
        if not Path(spec.path).is_file():
            raise SourceError(f"{spec.path} does not exist; check the path after docker-archive:")
        with DockerArchive.open(spec.path) as archive:
            yield OpenedSource(DockerArchiveSource(archive, spec.ref), None, str(spec))
    else:
        from cargohold.images.docker import DockerEngine

        exported = workdir / "docker-daemon.tar"
        engine = DockerEngine(docker_host) if docker_host else DockerEngine.from_env()
        with engine, open(exported, "wb") as out:
            # A docker-archive needs random access (manifest.json comes last), so it lands in the temp dir.
            engine.export_image(spec.path, out)
        with DockerArchive.open(exported) as archive:
            yield OpenedSource(DockerArchiveSource(archive, None), None, str(spec))


def _default_ref(layout: OCILayout) -> str | None:
    """With no ``:REF``, a layout whose index lists one named image plus untagged referrers (signatures,
    SBOMs written by oras or by ``cargohold pull``) still has an obvious image: the named one."""
    entries = layout.manifests()
    named = [entry.ref_name for entry in entries if entry.ref_name is not None]
    return named[0] if len(entries) > 1 and len(named) == 1 else None


@dataclass
class ImageSummary:
    """Sizes and platforms of an image, for totals, progress bars and the save summary."""

    manifest: Manifest
    platforms: list[str]
    total_size: int
    sizes: dict[Digest, int]


def summarize(source: ImageSource, reference: str | Digest | None, *, top: Manifest | None = None) -> ImageSummary:
    """Walk the manifests (not the layers) to learn the image's size and platforms.

    Why walk ourselves instead of asking the copy: the progress bar needs the total before the first byte
    moves, and the summary needs platforms even when nothing is uploaded. Only manifests and (for a single
    image) its small config are read.
    """
    top = top or source.get_manifest(reference)
    sizes: dict[Digest, int] = {top.digest: len(top.data)}
    platforms: list[str] = []
    body = top.json()
    images: list[Manifest] = []
    if top.is_index:
        for entry in body.get("manifests", []):
            child = source.get_manifest(Digest.parse(entry["digest"]))
            sizes[child.digest] = len(child.data)
            plat = entry.get("platform") or {}
            if plat.get("os") not in (None, "unknown"):
                platforms.append(platform_label(plat))
            if not child.is_index:
                images.append(child)
    else:
        images.append(top)
        config = body.get("config")
        if config:
            platforms.append(_config_platform(source, Descriptor.from_json(config, "the image's config")))
    for image in images:
        image_body = image.json()
        for entry in [image_body.get("config"), *(image_body.get("layers") or [])]:
            if entry:
                sizes[Digest.parse(entry["digest"])] = int(entry.get("size", 0))
    return ImageSummary(top, [p for p in platforms if p], sum(sizes.values()), sizes)


def _config_platform(source: ImageSource, config: Descriptor) -> str:
    if config.size > CONFIG_MAX or "json" not in config.media_type:
        return ""
    import json

    data = b"".join(source.blob_source(config)(0))
    if Digest.of(data, config.digest.algorithm) != config.digest:
        raise SourceError(f"the image config {config.digest} does not match its digest; the source is corrupt")
    try:
        parsed = json.loads(data)
    except ValueError:
        return ""
    if not isinstance(parsed, dict) or not parsed.get("os"):
        return ""
    return platform_label(parsed)
