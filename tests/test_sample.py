"""Unit tests for cargohold.sample: determinism, validity of the generated images, bounded memory."""

from __future__ import annotations

import json
import subprocess
import tarfile
import tracemalloc
import zlib
from pathlib import Path

import pytest

from cargohold.oci import mediatypes
from cargohold.oci.layout import OCILayout
from cargohold.sample import (
    ATTESTATION_TYPE,
    IN_TOTO_MEDIA_TYPE,
    REFERENCE_DIGEST_ANNOTATION,
    REFERENCE_TYPE_ANNOTATION,
    write_sample_image,
    write_sample_index,
)
from fixtures_images import require_tools

KiB = 1 << 10
MiB = 1 << 20


def _verify_all_blobs(layout: OCILayout) -> set[str]:
    digests = set()
    for digest in layout.iter_blobs():
        for _ in layout.iter_blob(digest):  # raises on any hash mismatch
            pass
        digests.add(str(digest))
    return digests


def test_same_arguments_give_identical_digests(tmp_path: Path) -> None:
    a = write_sample_image(tmp_path / "a", layers=2, layer_size=1 * MiB + 123, seed=7)
    b = write_sample_image(tmp_path / "b", layers=2, layer_size=1 * MiB + 123, seed=7)
    c = write_sample_image(tmp_path / "c", layers=2, layer_size=1 * MiB + 123, seed=8)
    assert a.digests == b.digests
    assert a.manifest.digest == b.manifest.digest
    assert not ({d.digest for d in a.layers} & {d.digest for d in c.layers})
    assert len({d.digest for d in a.layers}) == 2, "layers of one image must differ from each other"


def test_image_structure_is_valid_oci(tmp_path: Path) -> None:
    image = write_sample_image(tmp_path, layers=3, layer_size=300 * KiB, seed=1, platform=("linux", "arm", "v7"))
    layout = OCILayout.open(tmp_path)
    assert layout.resolve("latest").digest == image.manifest.digest
    assert _verify_all_blobs(layout) == {str(d) for d in image.digests}

    manifest = layout.read_json(image.manifest.digest)
    assert manifest["mediaType"] == mediatypes.OCI_MANIFEST
    assert manifest["schemaVersion"] == 2
    assert manifest["config"]["digest"] == str(image.config.digest)
    assert [layer["digest"] for layer in manifest["layers"]] == [str(d.digest) for d in image.layers]
    assert {layer["mediaType"] for layer in manifest["layers"]} == {mediatypes.OCI_LAYER_TAR}
    for desc in image.layers:
        assert layout.blob_path(desc.digest).stat().st_size == desc.size

    config = layout.read_json(image.config.digest)
    assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm", "v7")
    assert config["rootfs"] == {"type": "layers", "diff_ids": [str(d.digest) for d in image.layers]}
    assert len(config["history"]) == 3


def test_layers_are_real_tar_archives_with_incompressible_payload(tmp_path: Path) -> None:
    image = write_sample_image(tmp_path, layers=1, layer_size=2 * MiB + 5, seed=2)
    layout = OCILayout.open(tmp_path)
    with tarfile.open(layout.blob_path(image.layers[0].digest)) as tar:
        names = tar.getnames()
        assert names == ["layer-0", "layer-0/info.txt", "layer-0/data.bin"]
        info = tar.extractfile("layer-0/info.txt")
        assert info is not None and info.read() == image.info_files["layer-0/info.txt"]
        data_member = tar.getmember("layer-0/data.bin")
        assert data_member.size == 2 * MiB + 5
        data = tar.extractfile(data_member)
        assert data is not None
        head = data.read(MiB)
    # Random bytes: compression must not help, or transfer benchmarks would measure gzip instead of I/O.
    assert len(zlib.compress(head, 6)) > 0.99 * len(head)


def test_layer_streaming_keeps_memory_flat(tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        write_sample_image(tmp_path, layers=1, layer_size=48 * MiB, seed=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"peak Python allocation {peak / MiB:.1f} MiB for a 48 MiB layer"


def test_index_with_attestations(tmp_path: Path) -> None:
    sample = write_sample_index(tmp_path, layers=2, layer_size=64 * KiB, seed=4, attestations=True)
    layout = OCILayout.open(tmp_path)
    assert layout.resolve("latest").digest == sample.index.digest
    assert _verify_all_blobs(layout) == {str(d) for d in sample.digests}

    index = layout.read_json(sample.index.digest)
    assert index["mediaType"] == mediatypes.OCI_INDEX
    entries = index["manifests"]
    assert [e["platform"] for e in entries] == [
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64"},
        {"os": "unknown", "architecture": "unknown"},
        {"os": "unknown", "architecture": "unknown"},
    ]
    amd64, arm64 = sample.images
    assert not ({d.digest for d in amd64.blobs} & {d.digest for d in arm64.blobs})
    for entry, image in zip(entries[2:], sample.images, strict=True):
        assert entry["annotations"] == {
            REFERENCE_TYPE_ANNOTATION: ATTESTATION_TYPE,
            REFERENCE_DIGEST_ANNOTATION: str(image.manifest.digest),
        }
        attestation = layout.read_json(entry["digest"])
        assert [layer["mediaType"] for layer in attestation["layers"]] == [IN_TOTO_MEDIA_TYPE]
        statement = layout.read_json(attestation["layers"][0]["digest"])
        assert statement["subject"][0]["digest"] == {"sha256": image.manifest.digest.hex}
    for image in sample.images:
        config = layout.read_json(image.config.digest)
        assert (config["os"], config["architecture"]) == image.platform


def test_index_without_attestations_and_ref_none(tmp_path: Path) -> None:
    sample = write_sample_index(tmp_path, [("linux", "amd64")], layers=1, layer_size=1, ref=None)
    assert sample.attestations == []
    assert json.loads((tmp_path / "index.json").read_text())["manifests"] == []
    assert OCILayout.open(tmp_path).has_blob(sample.index.digest)


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one layer"):
        write_sample_image(tmp_path, layers=0, layer_size=1, seed=0)
    with pytest.raises(ValueError, match="platform"):
        write_sample_image(tmp_path, layers=1, layer_size=1, seed=0, platform=("linux",))
    with pytest.raises(ValueError, match="distinct"):
        write_sample_index(tmp_path, [("linux", "amd64"), ("linux", "amd64")])


@pytest.mark.tools
def test_umoci_accepts_sample_image(tmp_path: Path) -> None:
    require_tools("umoci")
    image = write_sample_image(tmp_path / "img", layers=2, layer_size=100 * KiB, seed=9)
    out = subprocess.run(
        ["umoci", "stat", "--json", "--image", f"{tmp_path / 'img'}:latest"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    history = json.loads(out.stdout)["history"]
    assert [h["layer"]["digest"] for h in history] == [str(d.digest) for d in image.layers]


@pytest.mark.tools
def test_skopeo_reads_sample_index(tmp_path: Path) -> None:
    require_tools("skopeo")
    sample = write_sample_index(tmp_path, layers=1, layer_size=10 * KiB, attestations=True)
    out = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{tmp_path}:latest"], capture_output=True, check=False)
    assert out.returncode == 0, out.stderr
    assert OCILayout.open(tmp_path).read_blob(sample.index.digest) == out.stdout
    for image in sample.images:
        os_, arch = image.platform
        out = subprocess.run(
            ["skopeo", "--override-os", os_, "--override-arch", arch, "inspect", f"oci:{tmp_path}:latest"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        # skopeo reports the index digest as "Digest"; the per-platform image shows in its layers.
        inspected = json.loads(out.stdout)
        assert inspected["Digest"] == str(sample.index.digest)
        assert (inspected["Os"], inspected["Architecture"]) == (os_, arch)
        assert inspected["Layers"] == [str(d.digest) for d in image.layers]
