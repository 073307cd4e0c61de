"""Unit tests for cargohold.oci.layout: streaming writes, verification, index handling, path safety."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest

from cargohold.oci import mediatypes
from cargohold.oci.descriptor import REF_NAME_ANNOTATION, Descriptor, DescriptorError
from cargohold.oci.digest import Digest, DigestError
from cargohold.oci.layout import (
    BlobNotFoundError,
    BlobVerificationError,
    LayoutError,
    OCILayout,
    canonical_json,
)


def test_create_writes_marker_index_and_blobs_dir(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "img")
    assert json.loads((layout.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout.root / "index.json").read_text())
    assert index == {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []}
    assert (layout.root / "blobs").is_dir()
    # Re-creating keeps existing content.
    layout.write_json({"a": 1}, mediatypes.OCI_CONFIG)
    desc = layout.write_json({"b": 2}, mediatypes.OCI_MANIFEST)
    layout.add_manifest(desc, "v1")
    again = OCILayout.create(layout.root)
    assert again.resolve("v1").digest == desc.digest


def test_open_rejects_non_layouts(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="not an OCI layout"):
        OCILayout.open(tmp_path)
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with pytest.raises(LayoutError, match="unsupported"):
        OCILayout.open(tmp_path)


def test_streaming_write_hashes_and_lands_at_digest_path(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    chunks = [os.urandom(100_000) for _ in range(5)]
    expected = hashlib.sha256(b"".join(chunks)).hexdigest()
    digest, size = layout.write_blob(iter(chunks))
    assert str(digest) == f"sha256:{expected}"
    assert size == 500_000
    assert layout.blob_path(digest) == tmp_path / "blobs" / "sha256" / expected
    assert hashlib.sha256(layout.blob_path(digest).read_bytes()).hexdigest() == expected
    assert list(layout.iter_blobs()) == [digest]


def test_write_with_wrong_expected_digest_stores_nothing(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    wrong = Digest.of(b"something else")
    with pytest.raises(BlobVerificationError):
        layout.write_blob([b"payload"], expected=wrong)
    with pytest.raises(BlobVerificationError, match="bytes"):
        layout.write_blob([b"payload"], expected=Digest.of(b"payload"), expected_size=3)
    assert list((tmp_path / "blobs" / "sha256").iterdir()) == []


def test_sha512_blobs(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    digest, _ = layout.write_blob([b"x" * 10], algorithm="sha512")
    assert digest.algorithm == "sha512"
    assert layout.blob_path(digest).parent.name == "sha512"
    assert layout.read_blob(digest) == b"x" * 10


def test_aborted_writer_leaves_no_partial_file(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    with pytest.raises(RuntimeError), layout.blob_writer() as writer:
        writer.write(b"half a layer")
        raise RuntimeError("build died")
    with layout.blob_writer() as writer:
        writer.write(b"forgotten")  # leaving the block without commit discards it
    assert list((tmp_path / "blobs" / "sha256").iterdir()) == []


def test_tarfile_can_stream_into_blob_writer(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    src = tmp_path / "hello.txt"
    src.write_bytes(b"hello layer\n")
    with layout.blob_writer() as writer:
        with tarfile.open(fileobj=writer, mode="w|") as tar:
            tar.add(src, arcname="hello.txt")
        digest = writer.commit()
    with tarfile.open(layout.blob_path(digest)) as tar:
        member = tar.extractfile("hello.txt")
        assert member is not None and member.read() == b"hello layer\n"


def test_open_blob_verifies_content_at_eof(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    digest, size = layout.write_blob([b"a" * 3000])
    assert b"".join(layout.iter_blob(digest, size, chunk_size=1000)) == b"a" * 3000
    # Corrupt the stored bytes without changing the length.
    layout.blob_path(digest).write_bytes(b"b" * 3000)
    with pytest.raises(BlobVerificationError, match="corrupt"):
        b"".join(layout.iter_blob(digest, size))
    # Truncation is reported as a size mismatch.
    layout.blob_path(digest).write_bytes(b"a" * 10)
    with pytest.raises(BlobVerificationError, match="expected 3000"):
        b"".join(layout.iter_blob(digest, size))
    with pytest.raises(BlobVerificationError):
        layout.read_blob(digest)


def test_open_blob_rejects_content_longer_than_announced(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    digest, _ = layout.write_blob([b"z" * 100])
    with pytest.raises(BlobVerificationError, match="larger"):
        b"".join(layout.iter_blob(digest, size=50, chunk_size=10))


def test_missing_blob(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    with pytest.raises(BlobNotFoundError):
        layout.open_blob(Digest.of(b"nope"))
    assert not layout.has_blob(Digest.of(b"nope"))


@pytest.mark.parametrize(
    "evil",
    [
        "sha256:../../../etc/passwd",
        "sha256/../../x:" + "a" * 64,
        "../sha256:" + "a" * 64,
        "sha256:" + "A" * 64,
        "md5:" + "a" * 32,
        "sha256:" + "a" * 63,
        "",
    ],
)
def test_path_tricks_are_rejected_before_touching_disk(tmp_path: Path, evil: str) -> None:
    layout = OCILayout.create(tmp_path)
    with pytest.raises(DigestError):
        layout.blob_path(evil)
    with pytest.raises(DigestError):
        layout.open_blob(evil)
    # A Digest built directly (bypassing parse) is re-validated too.
    with pytest.raises(DigestError):
        layout.blob_path(Digest("sha256", "../../etc/passwd"))


def test_symlinked_blob_is_refused(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path / "layout")
    secret = tmp_path / "secret"
    secret.write_bytes(b"outside")
    digest = Digest.of(b"outside")
    (layout.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    layout.blob_path(digest).symlink_to(secret)
    assert not layout.has_blob(digest)
    with pytest.raises(LayoutError):
        layout.open_blob(digest)


def test_add_manifest_and_resolve(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    first = layout.write_json({"n": 1}, mediatypes.OCI_MANIFEST)
    second = layout.write_json({"n": 2}, mediatypes.OCI_MANIFEST, platform={"os": "linux"})
    stored = layout.add_manifest(first, "latest")
    assert stored.annotations == {REF_NAME_ANNOTATION: "latest"}
    layout.add_manifest(second, "other")
    assert layout.resolve("latest").digest == first.digest
    assert layout.resolve("other").platform == {"os": "linux"}
    # Re-using a ref name moves it; the old entry under that name disappears.
    layout.add_manifest(second, "latest")
    names = [(d.ref_name, d.digest) for d in layout.manifests()]
    assert names == [("other", second.digest), ("latest", second.digest)]
    with pytest.raises(LayoutError, match="no manifest named"):
        layout.resolve("missing")
    with pytest.raises(LayoutError, match="name one"):
        layout.resolve()
    on_disk = json.loads((tmp_path / "index.json").read_text())
    assert on_disk["manifests"][1]["annotations"][REF_NAME_ANNOTATION] == "latest"


def test_add_manifest_without_name_is_deduplicated(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    desc = layout.write_json({"n": 1}, mediatypes.OCI_MANIFEST)
    layout.add_manifest(desc)
    layout.add_manifest(desc)
    assert layout.resolve() == desc


def test_add_manifest_requires_blob_and_valid_ref(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    ghost = Descriptor(mediatypes.OCI_MANIFEST, Digest.of(b"ghost"), 5)
    with pytest.raises(BlobNotFoundError):
        layout.add_manifest(ghost, "x")
    desc = layout.write_json({}, mediatypes.OCI_MANIFEST)
    for bad in ["", "-x", "a//b", "../up", "a b"]:
        with pytest.raises(LayoutError, match="ref name"):
            layout.add_manifest(desc, bad)
    for good in ["latest", "v1.2.3", "example.com/app:1.0", "a--b", "sha+x@y"]:
        layout.add_manifest(desc, good)


def test_descriptor_round_trip_keeps_unknown_fields() -> None:
    raw = {
        "mediaType": mediatypes.OCI_LAYER_GZIP,
        "digest": str(Digest.of(b"l")),
        "size": 1,
        "urls": ["https://example.invalid/l"],
        "annotations": {"k": "v"},
        "artifactType": "application/x",
    }
    assert Descriptor.from_json(raw).to_json() == raw
    assert Descriptor.from_json({**raw, "data": "bA=="}).to_json() == {**raw, "data": "bA=="}
    with pytest.raises(DescriptorError, match="descriptor: "):
        Descriptor.from_json({**raw, "digest": "sha256:bad"})
    with pytest.raises(DescriptorError, match="no valid size"):
        Descriptor.from_json({**raw, "size": -1})
    with pytest.raises(DescriptorError):
        Descriptor.from_json({"mediaType": "x", "size": 1})
    with pytest.raises(DescriptorError, match="annotations that are not a string map"):
        Descriptor.from_json({**raw, "annotations": {"k": 1}})


def test_read_index_rejects_garbage(tmp_path: Path) -> None:
    layout = OCILayout.create(tmp_path)
    (tmp_path / "index.json").write_text("[]")
    with pytest.raises(LayoutError, match="schemaVersion"):
        layout.read_index()
    (tmp_path / "index.json").write_text('{"schemaVersion": 2, "manifests": [{"digest": "sha256:x"}]}')
    with pytest.raises(LayoutError):
        layout.read_index()


def test_canonical_json_is_deterministic() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'
