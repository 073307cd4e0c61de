"""OCI image-layout directories (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``): pure file I/O.

The layout is how images travel between a build, the registry client, skopeo, umoci and the benchmarks
without a daemon. Everything here streams: blobs are hashed while they are written and verified while
they are read, so a multi-gigabyte layer never has to fit in memory and a corrupt or truncated file is
reported instead of silently propagated.

Every digest that turns into a path goes through :meth:`Digest.parse` first; that grammar admits only
``sha256``/``sha512`` and lowercase hex, which leaves no room for ``..``, ``/`` or other path tricks.
Blob files that are symlinks are refused as well, so a hostile layout cannot make us read (or clobber)
files outside its own ``blobs`` directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from cargohold.oci import mediatypes
from cargohold.oci.descriptor import REF_NAME_ANNOTATION, Descriptor, DescriptorError
from cargohold.oci.digest import Digest, DigestError, Hasher, new_hasher
from cargohold.oci.errors import CargoholdError

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
BLOBS_DIR = "blobs"
CHUNK_SIZE = 1 << 20
"""Read/write granularity: big enough to keep syscalls cheap, small enough to keep memory flat."""

# The image-layout spec's grammar for ref names: components of alphanumerics joined by separators,
# themselves joined by "/".
_REF_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME_RE = re.compile(rf"^{_REF_COMPONENT}(?:/{_REF_COMPONENT})*$")
_PARTIAL_PREFIX = ".partial-"


class LayoutError(CargoholdError):
    """The directory is not a usable OCI layout, or a requested object is not in it."""


class BlobNotFoundError(LayoutError):
    """The layout has no blob with the requested digest."""


class BlobVerificationError(LayoutError):
    """A blob's bytes do not match the digest (or size) they are stored or announced under."""


def check_ref_name(ref_name: str) -> str:
    """Validate an ``org.opencontainers.image.ref.name`` value; return it unchanged."""
    if not _REF_NAME_RE.match(ref_name or ""):
        raise LayoutError(
            f"ref name {ref_name!r} is invalid: use letters and digits joined by - . _ : @ + or --, "
            "in /-separated components"
        )
    return ref_name


def _as_digest(value: Digest | str) -> Digest:
    """Accept either form at the API boundary, but always validate strings before they go near a path."""
    if isinstance(value, Digest):
        # Re-parse: a Digest can be constructed directly, bypassing validation.
        return Digest.parse(str(value))
    return Digest.parse(value)


def _entry(value: Any, root: Path, position: int) -> Descriptor:
    """One ``manifests`` entry of ``index.json``, or a :class:`LayoutError` naming the layout and the entry."""
    try:
        return Descriptor.from_json(value, f"entry {position} of {root / INDEX_FILE}")
    except DescriptorError as exc:
        raise LayoutError(str(exc)) from None


def canonical_json(obj: Any) -> bytes:
    """Compact, key-sorted JSON: deterministic bytes so the same content always gets the same digest."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


class BlobWriter(io.RawIOBase):
    """A write-only file object that hashes what it is given and lands it as a blob on :meth:`commit`.

    Bytes go to a uniquely named partial file next to their final place, so :meth:`commit` is an atomic
    rename on the same filesystem: readers never see half a blob under a real digest. Leaving the
    ``with`` block without committing (or on an exception) deletes the partial file. It is a real
    file-like object, so ``tarfile.open(fileobj=writer, mode="w|")`` can stream straight into it.
    """

    def __init__(self, layout: OCILayout, algorithm: str = "sha256", *, verified: Digest | None = None) -> None:
        super().__init__()
        self._layout = layout
        self._algorithm = algorithm
        # ``verified``: the caller hashes the same bytes itself and commits only after its own check passed
        # (a registry download verifying across resumes); hashing them a second time here would cost a
        # full extra pass over every blob.
        self._verified = verified
        self._hasher: Hasher | None = None if verified is not None else new_hasher(algorithm)
        directory = layout.root / BLOBS_DIR / algorithm
        directory.mkdir(parents=True, exist_ok=True)
        self._partial = directory / f"{_PARTIAL_PREFIX}{secrets.token_hex(8)}"
        self._file: BinaryIO | None = open(self._partial, "xb")  # noqa: SIM115 - closed in commit/abort
        self._size = 0
        self.digest: Digest | None = None
        """Set by :meth:`commit`."""

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]  # RawIOBase: int | None
        if self._file is None:
            raise ValueError("blob writer is already committed or aborted")
        view = memoryview(data)
        self._file.write(view)
        if self._hasher is not None:
            self._hasher.update(view)
        self._size += view.nbytes
        return view.nbytes

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    def commit(self, expected: Digest | str | None = None, expected_size: int | None = None) -> Digest:
        """Finish the blob; if ``expected`` is given it must match, else nothing is stored.

        Idempotent with existing content: if a blob with the same digest is already present the partial
        file simply replaces it (identical bytes by construction).
        """
        if self._file is None:
            raise ValueError("blob writer is already committed or aborted")
        self._file.close()
        self._file = None
        if self._hasher is not None:
            actual = Digest(self._algorithm, self._hasher.hexdigest())
        else:
            assert self._verified is not None
            actual = self._verified
        try:
            if expected is not None and _as_digest(expected) != actual:
                raise BlobVerificationError(f"blob content has digest {actual}, expected {expected}")
            if expected_size is not None and expected_size != self._size:
                raise BlobVerificationError(f"blob has {self._size} bytes, expected {expected_size}")
            final = self._layout.blob_path(actual)
            if final.is_symlink():
                raise LayoutError(f"refusing to replace symlinked blob {final}")
            os.replace(self._partial, final)
        except BaseException:
            self._partial.unlink(missing_ok=True)
            raise
        self.digest = actual
        return actual

    def abort(self) -> None:
        """Discard everything written; safe to call more than once."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._partial.unlink(missing_ok=True)

    def close(self) -> None:
        # Closing without commit must not leave a stray partial file (tarfile closes its fileobj only
        # when it opened it, so this is reached via the context manager or garbage collection).
        if self.digest is None:
            self.abort()
        super().close()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class VerifyingReader(io.RawIOBase):
    """A read-only stream over a blob that raises :class:`BlobVerificationError` at EOF on mismatch.

    The check happens when the last byte has been handed out, so callers that stream to a network or a
    file get the error before they report success. Reading past the announced size is itself an error.
    """

    def __init__(self, file: BinaryIO, digest: Digest, size: int | None) -> None:
        super().__init__()
        self._file = file
        self._digest = digest
        self._size = size
        self._hasher = digest.hasher()
        self._seen = 0
        self._verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n: int = self._file.readinto(buffer)  # type: ignore[attr-defined]  # typing.BinaryIO has no readinto
        if n:
            view = memoryview(buffer)[:n]
            self._hasher.update(view)
            self._seen += n
            if self._size is not None and self._seen > self._size:
                raise BlobVerificationError(f"blob {self._digest} is larger than the expected {self._size} bytes")
            return n
        self._verify()
        return 0

    def _verify(self) -> None:
        if self._verified:
            return
        if self._size is not None and self._seen != self._size:
            raise BlobVerificationError(f"blob {self._digest} has {self._seen} bytes, expected {self._size}")
        actual = self._hasher.hexdigest()
        if actual != self._digest.hex:
            raise BlobVerificationError(
                f"blob {self._digest} is corrupt: its content hashes to {self._digest.algorithm}:{actual}"
            )
        self._verified = True

    def close(self) -> None:
        self._file.close()
        super().close()


class OCILayout:
    """One OCI image-layout directory.

    Use :meth:`create` for a directory you are about to fill and :meth:`open` for one you are about to
    read; both return an instance whose methods are the whole API.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # -- opening ------------------------------------------------------------------------------------

    @classmethod
    def create(cls, root: Path | str) -> OCILayout:
        """Make ``root`` a layout (creating it if needed); an existing layout is kept as it is."""
        layout = cls(root)
        layout.root.mkdir(parents=True, exist_ok=True)
        marker = layout.root / LAYOUT_FILE
        if marker.exists():
            layout._check_marker()
        else:
            _write_atomic(marker, canonical_json({"imageLayoutVersion": mediatypes.OCI_LAYOUT_VERSION}))
        (layout.root / BLOBS_DIR).mkdir(exist_ok=True)
        if not (layout.root / INDEX_FILE).exists():
            layout.write_index({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []})
        return layout

    @classmethod
    def open(cls, root: Path | str) -> OCILayout:
        """Open an existing layout, checking its ``oci-layout`` marker and that ``index.json`` exists."""
        layout = cls(root)
        layout._check_marker()
        if not (layout.root / INDEX_FILE).is_file():
            raise LayoutError(f"{layout.root} has no {INDEX_FILE}")
        return layout

    def _check_marker(self) -> None:
        marker = self.root / LAYOUT_FILE
        try:
            version = json.loads(marker.read_bytes()).get("imageLayoutVersion")
        except FileNotFoundError:
            raise LayoutError(f"{self.root} is not an OCI layout (no {LAYOUT_FILE} file)") from None
        except (ValueError, AttributeError):
            raise LayoutError(f"{marker} is not valid JSON with an imageLayoutVersion") from None
        if not isinstance(version, str) or not version.startswith("1."):
            raise LayoutError(f"{marker} declares unsupported imageLayoutVersion {version!r}")

    # -- blobs --------------------------------------------------------------------------------------

    def blob_path(self, digest: Digest | str) -> Path:
        """Where the blob for ``digest`` lives. The digest is validated before it becomes a path."""
        parsed = _as_digest(digest)
        return self.root / BLOBS_DIR / parsed.algorithm / parsed.hex

    def has_blob(self, digest: Digest | str) -> bool:
        path = self.blob_path(digest)
        return path.is_file() and not path.is_symlink()

    def blob_writer(self, algorithm: str = "sha256", *, verified: Digest | None = None) -> BlobWriter:
        """A streaming writer; use as a context manager and call :meth:`BlobWriter.commit` inside it.

        Pass ``verified`` only when the caller itself checks that the bytes it writes hash to that digest
        and commits only after that check passed.
        """
        return BlobWriter(self, algorithm, verified=verified)

    def write_blob(
        self,
        chunks: Iterable[bytes],
        *,
        expected: Digest | str | None = None,
        expected_size: int | None = None,
        algorithm: str | None = None,
    ) -> tuple[Digest, int]:
        """Stream ``chunks`` into a blob; returns its digest and size. Verifies ``expected`` if given."""
        if algorithm is None:
            algorithm = _as_digest(expected).algorithm if expected is not None else "sha256"
        with self.blob_writer(algorithm) as writer:
            for chunk in chunks:
                writer.write(chunk)
            digest = writer.commit(expected, expected_size)
            return digest, writer.size

    def write_bytes(self, data: bytes, media_type: str, **descriptor_fields: Any) -> Descriptor:
        """Store a small in-memory blob (manifest, config) and describe it."""
        digest, size = self.write_blob([data])
        return Descriptor(media_type=media_type, digest=digest, size=size, **descriptor_fields)

    def write_json(self, obj: Any, media_type: str, **descriptor_fields: Any) -> Descriptor:
        """Store ``obj`` as canonical JSON (see :func:`canonical_json`) and describe it."""
        return self.write_bytes(canonical_json(obj), media_type, **descriptor_fields)

    def open_blob(self, digest: Digest | str, size: int | None = None) -> VerifyingReader:
        """Open a blob for streaming; the content is checked against ``digest`` (and ``size``) at EOF."""
        parsed = _as_digest(digest)
        path = self.blob_path(parsed)
        try:
            # O_NOFOLLOW: a symlink planted under blobs/ must not redirect us elsewhere on the disk.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {parsed} is not in the layout at {self.root}") from None
        except OSError as exc:
            raise LayoutError(f"cannot open blob {parsed}: {exc.strerror}") from None
        return VerifyingReader(os.fdopen(fd, "rb"), parsed, size)

    def iter_blob(self, digest: Digest | str, size: int | None = None, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Yield a blob's content in chunks, raising :class:`BlobVerificationError` at the end on mismatch."""
        with self.open_blob(digest, size) as reader:
            while chunk := reader.read(chunk_size):
                yield chunk

    def read_blob(self, digest: Digest | str, max_size: int = 16 << 20) -> bytes:
        """Read a small blob (manifest, config, index) whole, verified; refuses anything over ``max_size``."""
        path = self.blob_path(digest)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size > max_size:
                raise LayoutError(f"blob {digest} is larger than {max_size} bytes; stream it with open_blob")
        with self.open_blob(digest) as reader:
            return reader.read()

    def read_json(self, digest: Digest | str) -> Any:
        """A verified small blob parsed as JSON (a manifest, an index or a config)."""
        try:
            return json.loads(self.read_blob(digest))
        except ValueError as exc:
            raise LayoutError(f"blob {digest} is not valid JSON: {exc}") from None

    def iter_blobs(self) -> Iterator[Digest]:
        """Every complete blob present on disk (partial files and unknown names are skipped)."""
        blobs = self.root / BLOBS_DIR
        if not blobs.is_dir():
            return
        for alg_dir in sorted(blobs.iterdir()):
            if not alg_dir.is_dir():
                continue
            for entry in sorted(alg_dir.iterdir()):
                try:
                    digest = Digest.parse(f"{alg_dir.name}:{entry.name}")
                except DigestError:
                    continue
                if entry.is_file() and not entry.is_symlink():
                    yield digest

    # -- index.json ---------------------------------------------------------------------------------

    def read_index(self) -> dict[str, Any]:
        """The parsed ``index.json`` (its ``manifests`` entries are validated as descriptors)."""
        try:
            index = json.loads((self.root / INDEX_FILE).read_bytes())
        except FileNotFoundError:
            raise LayoutError(f"{self.root} has no {INDEX_FILE}") from None
        except ValueError as exc:
            raise LayoutError(f"{self.root / INDEX_FILE} is not valid JSON: {exc}") from None
        if not isinstance(index, dict) or index.get("schemaVersion") != 2:
            raise LayoutError(f"{self.root / INDEX_FILE} is not an image index with schemaVersion 2")
        manifests = index.setdefault("manifests", [])
        if not isinstance(manifests, list):
            raise LayoutError(f"{self.root / INDEX_FILE} has a non-list 'manifests'")
        for i, entry in enumerate(manifests):
            _entry(entry, self.root, i)
        return index

    def write_index(self, index: dict[str, Any]) -> None:
        """Replace ``index.json`` atomically, so a crash never leaves a half-written index."""
        _write_atomic(self.root / INDEX_FILE, json.dumps(index, indent=2).encode() + b"\n")

    def manifests(self) -> list[Descriptor]:
        """The top-level descriptors listed in ``index.json``."""
        return [_entry(entry, self.root, i) for i, entry in enumerate(self.read_index()["manifests"])]

    def add_manifest(self, descriptor: Descriptor, ref_name: str | None = None) -> Descriptor:
        """List ``descriptor`` in ``index.json``; with ``ref_name`` it becomes the only entry of that name.

        The blob must already be in the layout: an index pointing at missing content is exactly the kind
        of broken layout other tools reject. Returns the descriptor as stored (with the annotation).
        """
        if not self.has_blob(descriptor.digest):
            raise BlobNotFoundError(f"cannot list {descriptor.digest}: the blob is not in the layout")
        if ref_name is not None:
            check_ref_name(ref_name)
            annotations = {**(descriptor.annotations or {}), REF_NAME_ANNOTATION: ref_name}
            descriptor = Descriptor(
                media_type=descriptor.media_type,
                digest=descriptor.digest,
                size=descriptor.size,
                annotations=annotations,
                platform=descriptor.platform,
                artifact_type=descriptor.artifact_type,
                urls=descriptor.urls,
                extra=dict(descriptor.extra),
            )
        index = self.read_index()
        entries = [_entry(entry, self.root, i) for i, entry in enumerate(index["manifests"])]
        if ref_name is not None:
            entries = [entry for entry in entries if entry.ref_name != ref_name]
        else:
            entries = [entry for entry in entries if entry != descriptor]
        entries.append(descriptor)
        index["manifests"] = [entry.to_json() for entry in entries]
        self.write_index(index)
        return descriptor

    def resolve(self, ref_name: str | None = None) -> Descriptor:
        """The descriptor named ``ref_name``; with ``None``, the single entry of a one-image layout."""
        entries = self.manifests()
        if ref_name is None:
            if len(entries) != 1:
                raise LayoutError(
                    f"{self.root} lists {len(entries)} manifests; name one with a ref "
                    f"({', '.join(e.ref_name or str(e.digest) for e in entries) or 'none present'})"
                )
            return entries[0]
        matches = [entry for entry in entries if entry.ref_name == ref_name]
        if not matches:
            raise LayoutError(f"{self.root} has no manifest named {ref_name!r}")
        if len(matches) > 1:
            raise LayoutError(f"{self.root} lists {len(matches)} manifests named {ref_name!r}")
        return matches[0]


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary sibling and rename, so readers see the old or the new file, never a mix."""
    tmp = path.with_name(f"{_PARTIAL_PREFIX}{path.name}-{secrets.token_hex(4)}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
