"""``docker save`` archives (docker-archive): reading them safely, and writing them from any image source.

Format: a tar with ``manifest.json`` (``[{"Config", "RepoTags", "Layers"}]``), the config and layer files
it names, and a legacy ``repositories`` file. Older Docker writes ``<id>/layer.tar`` and ``<hex>.json``,
Docker 25+ writes ``blobs/sha256/<hex>``; layers are usually uncompressed tars, sometimes gzip.

Why so defensive when reading: archives arrive from CI artifacts and users' downloads. Before anything
is read, every member is checked: no absolute paths, no ``..``, no device/FIFO members, and links may
only point at other members inside the archive. Content is checked as it streams: a file stored under a
digest-shaped name must hash to it, an uncompressed layer must hash to its ``diff_id`` in the config.

Everything streams through the stdlib ``tarfile`` (never hand-rolled): a layer is read once to compute its
digest and once more when it is uploaded, never held in memory.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cargohold.oci import mediatypes
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest, DigestError, Hasher, new_hasher
from cargohold.oci.errors import CargoholdError
from cargohold.oci.layout import canonical_json
from cargohold.oci.manifest import Manifest
from cargohold.oci.transfer import BlobSource, ImageSource, platform_label, select_platform

CHUNK_SIZE = 1 << 20
MANIFEST_FILE = "manifest.json"
REPOSITORIES_FILE = "repositories"
JSON_MAX = 16 << 20
"""Largest manifest.json/config we read into memory."""
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class ArchiveError(CargoholdError):
    """The archive is malformed, unsafe, or its content does not match its digests."""


def check_member(member: tarfile.TarInfo, names: set[str] | None = None) -> str:
    """Validate one member; return its normalised name. Raises :class:`ArchiveError` saying why.

    ``names`` (all normalised member names) lets hard links be checked to point at a real member.
    """
    name = member.name
    if not name or name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\\" in name:
        raise ArchiveError(f"archive member {name!r} has an absolute or non-POSIX path")
    normalised = posixpath.normpath(name)
    if normalised == ".." or normalised.startswith("../") or "/../" in f"/{name}/":
        raise ArchiveError(f"archive member {name!r} escapes the archive with '..'")
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise ArchiveError(f"archive member {name!r} is a device or FIFO, which an image archive never has")
    if member.issym():
        target = member.linkname
        if target.startswith("/"):
            raise ArchiveError(f"archive member {name!r} is a symlink to an absolute path {target!r}")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(normalised), target))
        if resolved == ".." or resolved.startswith("../"):
            raise ArchiveError(f"archive member {name!r} is a symlink escaping the archive ({target!r})")
    elif member.islnk():
        target = posixpath.normpath(member.linkname)
        if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
            raise ArchiveError(f"archive member {name!r} is a hard link escaping the archive")
        if names is not None and target not in names:
            raise ArchiveError(f"archive member {name!r} is a hard link to a missing member {target!r}")
    elif not (member.isfile() or member.isdir()):
        raise ArchiveError(f"archive member {name!r} has an unsupported type")
    return normalised


def _digest_from_name(name: str) -> Digest | None:
    """``blobs/sha256/<hex>`` and ``<hex>.json`` names promise their content's digest."""
    parts = name.split("/")
    with contextlib.suppress(DigestError):
        if len(parts) == 3 and parts[0] == "blobs":
            return Digest.parse(f"{parts[1]}:{parts[2]}")
        if len(parts) == 1 and parts[0].endswith(".json") and parts[0] != MANIFEST_FILE:
            return Digest.parse(f"sha256:{parts[0][:-5]}")
    return None


@dataclass(frozen=True)
class ArchiveImage:
    """One entry of ``manifest.json``."""

    config: str
    repo_tags: list[str]
    layers: list[str]


@dataclass
class DockerArchive:
    """A validated docker-archive on disk. Use :meth:`open`; close it (or ``with``) when done."""

    path: Path
    images: list[ArchiveImage]
    _tar: tarfile.TarFile
    _members: dict[str, tarfile.TarInfo]
    _descriptors: dict[str, Descriptor] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path | str) -> DockerArchive:
        """Open and validate ``path``; raises :class:`ArchiveError` on anything unsafe or malformed."""
        path = Path(path)
        try:
            tar = tarfile.open(path, "r:*")  # noqa: SIM115 - owned by the returned object
        except (tarfile.TarError, OSError) as exc:
            raise ArchiveError(f"{path} is not a readable tar archive: {exc}") from None
        try:
            members_list = tar.getmembers()
            names = {posixpath.normpath(m.name) for m in members_list}
            members: dict[str, tarfile.TarInfo] = {}
            for member in members_list:
                members[check_member(member, names)] = member
            archive = cls(path, [], tar, members)
            archive.images = archive._read_manifest()
            return archive
        except BaseException:
            tar.close()
            raise

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> DockerArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _member(self, name: str) -> tarfile.TarInfo:
        member = self._members.get(posixpath.normpath(name))
        if member is None:
            raise ArchiveError(f"{self.path} has no member {name!r} (named in {MANIFEST_FILE})")
        seen = 0
        while member.issym() or member.islnk():
            seen += 1
            if seen > 16:
                raise ArchiveError(f"{self.path}: too many links resolving {name!r}")
            base = posixpath.dirname(posixpath.normpath(member.name)) if member.issym() else ""
            target = posixpath.normpath(posixpath.join(base, member.linkname))
            linked = self._members.get(target)
            if linked is None:
                raise ArchiveError(f"{self.path}: {name!r} links to missing member {target!r}")
            member = linked
        if not member.isfile():
            raise ArchiveError(f"{self.path}: {name!r} is not a regular file")
        return member

    def _read_small(self, name: str) -> bytes:
        member = self._member(name)
        if member.size > JSON_MAX:
            raise ArchiveError(f"{self.path}: {name!r} is implausibly large ({member.size} bytes)")
        data = b"".join(self.open_member(name))
        expected = _digest_from_name(posixpath.normpath(name))
        if expected is not None and Digest.of(data, expected.algorithm) != expected:
            raise ArchiveError(f"{self.path}: {name!r} does not match the digest its name promises")
        return data

    def _read_manifest(self) -> list[ArchiveImage]:
        if MANIFEST_FILE not in self._members:
            raise ArchiveError(f"{self.path} is not a docker archive: it has no {MANIFEST_FILE}")
        try:
            entries = json.loads(self._read_small(MANIFEST_FILE))
            images = [ArchiveImage(e["Config"], list(e.get("RepoTags") or []), list(e["Layers"])) for e in entries]
        except (ValueError, KeyError, TypeError) as exc:
            raise ArchiveError(f"{self.path}: {MANIFEST_FILE} is malformed ({exc})") from None
        if not images:
            raise ArchiveError(f"{self.path}: {MANIFEST_FILE} lists no images")
        return images

    def open_member(self, name: str, offset: int = 0) -> Iterator[bytes]:
        """Stream a member's bytes from ``offset`` (links inside the archive are followed).

        Safe to call from several threads at once (a save uploads layers in parallel): every stream reads
        through its own file handle. ``TarFile.extractfile`` handles all share the archive's one file
        object, and a seek from one thread between another's seek and read hands that thread bytes from the
        wrong layer (of the right length: only the registry's digest check noticed). An uncompressed
        archive is read at the member's data offset; a compressed one (``docker save | gzip``) is opened
        anew, since its decompressor cannot be shared either.
        """
        member = self._member(name)
        if self._plain and not member.issparse():
            with open(self.path, "rb") as handle:
                handle.seek(member.offset_data + offset)
                remaining = member.size - offset
                while remaining > 0:
                    chunk = handle.read(min(CHUNK_SIZE, remaining))
                    if not chunk:
                        raise ArchiveError(f"{self.path} ends inside {name!r}: the archive is truncated")
                    remaining -= len(chunk)
                    yield chunk
            return
        with tarfile.open(self.path, "r:*") as tar:
            extracted = tar.extractfile(member)
            assert extracted is not None
            with extracted:
                extracted.seek(offset)
                while chunk := extracted.read(CHUNK_SIZE):
                    yield chunk

    @property
    def _plain(self) -> bool:
        """Whether the archive is an uncompressed tar file (member offsets are file offsets)."""
        return isinstance(self._tar.fileobj, io.BufferedReader)

    def config(self, image: ArchiveImage) -> tuple[bytes, Descriptor]:
        """The config bytes and their descriptor (digest checked against the file name when it has one)."""
        data = self._read_small(image.config)
        return data, Descriptor(media_type=mediatypes.DOCKER_CONFIG, digest=Digest.of(data), size=len(data))

    def layer_descriptors(self, image: ArchiveImage) -> list[Descriptor]:
        """Descriptors of the image's layers, computed by streaming each once (and cached).

        Refuses a layer whose bytes do not match its digest-shaped file name, or (uncompressed or gzip)
        whose uncompressed content does not match the config's ``rootfs.diff_ids``.
        """
        config_data, _ = self.config(image)
        try:
            diff_ids = json.loads(config_data).get("rootfs", {}).get("diff_ids") or []
        except (ValueError, AttributeError):
            raise ArchiveError(f"{self.path}: the config {image.config!r} is not valid JSON") from None
        if diff_ids and len(diff_ids) != len(image.layers):
            raise ArchiveError(f"{self.path}: config lists {len(diff_ids)} diff_ids for {len(image.layers)} layers")
        out = []
        for position, name in enumerate(image.layers):
            diff_id = diff_ids[position] if diff_ids else None
            out.append(self._describe_layer(name, diff_id))
        return out

    def _describe_layer(self, name: str, diff_id: str | None) -> Descriptor:
        key = posixpath.normpath(name)
        if key in self._descriptors:
            return self._descriptors[key]
        hasher: Hasher = new_hasher("sha256")
        uncompressed: Hasher | None = None
        decompressor: Any = None
        size = 0
        media_type = DOCKER_LAYER_TAR
        for chunk in self.open_member(name):
            if size == 0:
                if chunk[:2] == b"\x1f\x8b":
                    media_type = mediatypes.DOCKER_LAYER_GZIP
                    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    uncompressed = hasher.copy()
                elif chunk[:4] == _ZSTD_MAGIC:
                    media_type = mediatypes.OCI_LAYER_ZSTD
            hasher.update(chunk)
            if decompressor is not None and uncompressed is not None:
                uncompressed.update(decompressor.decompress(chunk, CHUNK_SIZE * 64))
                while decompressor.unconsumed_tail:
                    uncompressed.update(decompressor.decompress(decompressor.unconsumed_tail, CHUNK_SIZE * 64))
            size += len(chunk)
        digest = Digest("sha256", hasher.hexdigest())
        promised = _digest_from_name(key)
        if promised is not None and promised != digest:
            raise ArchiveError(f"{self.path}: layer {name!r} is corrupt: its content hashes to {digest}")
        if diff_id is not None:
            if media_type == DOCKER_LAYER_TAR:
                actual_diff = str(digest)
            elif uncompressed is not None:
                actual_diff = f"sha256:{uncompressed.hexdigest()}"
            else:
                actual_diff = diff_id  # zstd: no stdlib decoder; the runtime verifies diff_ids on unpack
            if actual_diff != diff_id:
                raise ArchiveError(
                    f"{self.path}: layer {name!r} does not match its diff_id {diff_id} (content is {actual_diff})"
                )
        descriptor = Descriptor(media_type=media_type, digest=digest, size=size)
        self._descriptors[key] = descriptor
        return descriptor

    def image(self, tag: str | None = None) -> ArchiveImage:
        """The image tagged ``tag`` (``repo:tag`` as in RepoTags), or the only one when ``None``."""
        if tag is None:
            if len(self.images) != 1:
                tags = ", ".join(t for img in self.images for t in img.repo_tags) or "untagged images"
                raise ArchiveError(f"{self.path} holds {len(self.images)} images; pick one of: {tags}")
            return self.images[0]
        for image in self.images:
            if tag in image.repo_tags:
                return image
        raise ArchiveError(f"{self.path} has no image tagged {tag!r}")

    def extract(self, destination: Path | str) -> None:
        """Unpack into ``destination`` (already validated; tarfile's ``data`` filter as a second guard)."""
        dest = Path(destination)
        dest.mkdir(parents=True, exist_ok=True)
        self._tar.extractall(dest, filter="data")


class DockerArchiveSource:
    """A docker-archive image as an :class:`~cargohold.oci.transfer.ImageSource`.

    The archive has no manifest, so one is synthesised (Docker schema 2, canonical JSON): the same archive
    always yields the same manifest digest.
    """

    def __init__(self, archive: DockerArchive, tag: str | None = None) -> None:
        self.archive = archive
        self.image = archive.image(tag)
        self.name = f"docker-archive:{archive.path}"
        _, self._config = archive.config(self.image)
        self._layers = archive.layer_descriptors(self.image)
        self._blobs = {self._config.digest: self.image.config}
        for desc, name in zip(self._layers, self.image.layers, strict=True):
            self._blobs.setdefault(desc.digest, name)
        manifest = {
            "schemaVersion": 2,
            "mediaType": mediatypes.DOCKER_MANIFEST,
            "config": self._config.to_json(),
            "layers": [d.to_json() for d in self._layers],
        }
        self.manifest = Manifest.from_bytes(canonical_json(manifest), mediatypes.DOCKER_MANIFEST)

    def get_manifest(self, reference: str | Digest | None) -> Manifest:
        """The synthesised manifest; a digest reference must be its digest (a tag is ignored: one image)."""
        if reference is not None and ":" in str(reference) and str(reference) != str(self.manifest.digest):
            raise ArchiveError(f"{self.name} has no manifest {reference}")
        return self.manifest

    def blob_source(self, descriptor: Descriptor) -> BlobSource:
        name = self._blobs.get(descriptor.digest)
        if name is None:
            raise ArchiveError(f"{self.name} has no blob {descriptor.digest}")
        return lambda offset: self.archive.open_member(name, offset)

    def referrers(self, digest: Digest) -> list[Descriptor]:
        return []


class _HashingReader(io.RawIOBase):
    """File-like view of a chunk iterator that hashes what passes and checks it at EOF."""

    def __init__(self, chunks: Iterator[bytes], descriptor: Descriptor) -> None:
        super().__init__()
        self._chunks = chunks
        self._descriptor = descriptor
        self._hasher = descriptor.digest.hasher()
        self._buffer = b""
        self._seen = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        # Fill the whole buffer unless the stream ends: tarfile treats a short read as truncation.
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            if not self._buffer:
                chunk = next(self._chunks, None)
                if chunk is None:
                    self._check()
                    break
                self._hasher.update(chunk)
                self._seen += len(chunk)
                self._buffer = chunk
            n = min(len(view) - filled, len(self._buffer))
            view[filled : filled + n] = self._buffer[:n]
            self._buffer = self._buffer[n:]
            filled += n
        if self._seen >= self._descriptor.size and not self._buffer:
            self._check()
        return filled

    def finish(self) -> None:
        """After tarfile took ``size`` bytes: the source must be exhausted and the whole blob verified."""
        if self._buffer or next(self._chunks, None) is not None:
            raise ArchiveError(f"blob {self._descriptor.digest} is larger than its {self._descriptor.size} bytes")
        self._check()

    def _check(self) -> None:
        if self._seen != self._descriptor.size or self._hasher.hexdigest() != self._descriptor.digest.hex:
            raise ArchiveError(f"blob {self._descriptor.digest} did not match its digest/size while archiving")


def _pick_image_manifest(source: ImageSource, manifest: Manifest, platform: str | None) -> Manifest:
    if not manifest.is_index:
        return manifest
    index = manifest.json()
    if platform is not None:
        return source.get_manifest(select_platform(index, platform).digest)
    real = [m for m in index.get("manifests", []) if (m.get("platform") or {}).get("os") not in (None, "unknown")]
    if len(real) != 1:
        labels = ", ".join(sorted(platform_label(m.get("platform")) for m in real))
        raise ArchiveError(f"a docker archive holds one platform; choose one with --platform ({labels})")
    return source.get_manifest(real[0]["digest"])


def write_docker_archive(
    source: ImageSource,
    reference: str | Digest | None,
    output: Path | str | BinaryIO,
    *,
    repo_tags: Sequence[str] = (),
    platform: str | None = None,
) -> Digest:
    """Write the image at ``reference`` as a docker-archive; returns the image manifest's digest.

    Blobs stream from ``source`` into the tar (sizes come from the descriptors, so ``tarfile`` can run in
    pure streaming mode and ``output`` may be a pipe to ``docker load``). A path is written via a
    temporary sibling and renamed only when every blob verified.
    """
    top = _pick_image_manifest(source, source.get_manifest(reference), platform)
    body = top.json()
    config = Descriptor.from_json(body.get("config"), "the image's config")
    layers = [Descriptor.from_json(entry, f"layers[{i}]") for i, entry in enumerate(body.get("layers") or [])]

    def write(stream: BinaryIO) -> None:
        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            written: set[Digest] = set()
            for desc in [config, *layers]:
                if desc.digest in written:
                    continue
                written.add(desc.digest)
                info = tarfile.TarInfo(f"blobs/{desc.digest.algorithm}/{desc.digest.hex}")
                info.size = desc.size
                info.mode = 0o644
                reader = _HashingReader(iter(source.blob_source(desc)(0)), desc)
                tar.addfile(info, reader)
                reader.finish()
            entry = {
                "Config": f"blobs/{config.digest.algorithm}/{config.digest.hex}",
                "RepoTags": list(repo_tags),
                "Layers": [f"blobs/{d.digest.algorithm}/{d.digest.hex}" for d in layers],
            }
            files = {MANIFEST_FILE: json.dumps([entry]).encode()}
            if repo_tags and layers:
                repositories: dict[str, dict[str, str]] = {}
                for repo_tag in repo_tags:
                    repo, _, tag = repo_tag.rpartition(":")
                    repositories.setdefault(repo or repo_tag, {})[tag or "latest"] = layers[-1].digest.hex
                files[REPOSITORIES_FILE] = json.dumps(repositories).encode()
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))

    if isinstance(output, str | os.PathLike):
        target = Path(output)
        partial = target.with_name(f".{target.name}.partial")
        try:
            with open(partial, "wb") as handle:
                write(handle)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
    else:
        write(output)
    return top.digest
