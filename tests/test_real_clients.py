"""Interoperability with real OCI clients: skopeo pushes and pulls, umoci unpacks.

These are the tests that tell us a CI system could actually use the registry: images must come back out
byte-identical (same manifest digest, same blob digests), multi-platform indexes with BuildKit attestation
entries must survive untouched, and cross-repository mounts must work the way skopeo performs them.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from pathlib import Path

import httpx
import pytest

from cargohold.oci import mediatypes
from cargohold.oci.layout import OCILayout
from cargohold.sample import SampleImage, write_sample_image, write_sample_index
from fixtures_images import (  # noqa: F401 - the *_fixture imports register fixtures
    TOKEN_USER,
    Registry,
    admin_token_fixture,
    file_sha256,
    index_entry,
    layout_blob_digests,
    registry_fixture,
    require_tools,
    run,
    skopeo_copy,
)

pytestmark = pytest.mark.tools

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools("skopeo", "umoci")


def _push_pull_image(registry: Registry, token: str, tmp_path: Path, repo: str, image: SampleImage, src: Path) -> Path:
    """Push ``src:latest`` to ``repo:build-1`` and pull it back into a new layout; return that layout."""
    skopeo_copy(f"oci:{src}:latest", f"docker://{registry.host}/{repo}:build-1", token)
    out = tmp_path / "pulled"
    skopeo_copy(f"docker://{registry.host}/{repo}:build-1", f"oci:{out}:pulled", token)
    return out


def test_skopeo_round_trip_multi_layer_image_is_byte_identical(
    registry: Registry, admin_token: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    image = write_sample_image(src, layers=4, layer_size=3 * MiB, seed=11)
    out = _push_pull_image(registry, admin_token, tmp_path, "ci/app", image, src)

    entry = index_entry(out, "pulled")
    assert entry["digest"] == str(image.manifest.digest)
    assert entry["mediaType"] == mediatypes.OCI_MANIFEST
    assert layout_blob_digests(out) == image.digests
    pulled = OCILayout.open(out)
    original = OCILayout.open(src)
    for digest in image.digests:
        assert file_sha256(pulled.blob_path(digest)) == digest.hex
    assert pulled.read_blob(image.manifest.digest) == original.read_blob(image.manifest.digest)

    # The registry reports the same digest and the exact media type over plain HTTP too.
    with httpx.Client(base_url=registry.url, auth=(TOKEN_USER, admin_token), timeout=30) as http:
        resp = http.head("/v2/ci/app/manifests/build-1", headers={"Accept": mediatypes.ALL_MANIFEST_ACCEPT})
        assert resp.status_code == 200, resp.text
        assert resp.headers["Docker-Content-Digest"] == str(image.manifest.digest)
        assert resp.headers["Content-Type"] == mediatypes.OCI_MANIFEST


@pytest.mark.parametrize("attestations", [False, True], ids=["plain", "with-attestations"])
def test_skopeo_round_trip_multi_platform_index(
    registry: Registry, admin_token: str, tmp_path: Path, attestations: bool
) -> None:
    src = tmp_path / "src"
    sample = write_sample_index(src, layers=2, layer_size=1 * MiB, seed=5, attestations=attestations)
    ref = f"docker://{registry.host}/ci/multi:build-7"
    skopeo_copy(f"oci:{src}:latest", ref, admin_token, "--all")
    out = tmp_path / "pulled"
    skopeo_copy(ref, f"oci:{out}:pulled", admin_token, "--all")

    entry = index_entry(out, "pulled")
    assert entry["digest"] == str(sample.index.digest)
    assert entry["mediaType"] == mediatypes.OCI_INDEX
    assert layout_blob_digests(out) == sample.digests
    pulled_index = OCILayout.open(out).read_json(sample.index.digest)
    platforms = [(m["platform"]["os"], m["platform"]["architecture"]) for m in pulled_index["manifests"]]
    expected = [("linux", "amd64"), ("linux", "arm64")]
    if attestations:
        expected += [("unknown", "unknown")] * 2
        refs = [m["annotations"]["vnd.docker.reference.digest"] for m in pulled_index["manifests"][2:]]
        assert refs == [str(img.manifest.digest) for img in sample.images]
    assert platforms == expected

    # Each platform's manifest is individually addressable by digest in the registry.
    with httpx.Client(base_url=registry.url, auth=(TOKEN_USER, admin_token), timeout=30) as http:
        for manifest in [*(img.manifest for img in sample.images), *sample.attestations]:
            resp = http.get(f"/v2/ci/multi/manifests/{manifest.digest}", headers={"Accept": manifest.media_type})
            assert resp.status_code == 200, resp.text
            assert resp.headers["Docker-Content-Digest"] == str(manifest.digest)


def test_umoci_unpacks_pulled_image(registry: Registry, admin_token: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    image = write_sample_image(src, layers=3, layer_size=2 * MiB, seed=3)
    out = _push_pull_image(registry, admin_token, tmp_path, "ci/unpack", image, src)
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--rootless", "--image", f"{out}:pulled", str(bundle))

    rootfs = bundle / "rootfs"
    for path, content in image.info_files.items():
        assert (rootfs / path).read_bytes() == content
    # The random payload of the last layer matches what the original layer tar holds.
    with tarfile.open(OCILayout.open(src).blob_path(image.layers[-1].digest)) as tar:
        member = tar.extractfile(f"layer-{len(image.layers) - 1}/data.bin")
        assert member is not None
        hasher = hashlib.sha256()
        while chunk := member.read(MiB):
            hasher.update(chunk)
    unpacked = rootfs / f"layer-{len(image.layers) - 1}" / "data.bin"
    assert unpacked.stat().st_size == 2 * MiB
    assert file_sha256(unpacked) == hasher.hexdigest()


# Access-log lines differ between servers ("POST /path HTTP/1.1" 201 vs method=POST path="/path" status=201),
# so match only what both contain: the method, the path with its query, and the status code.
_MOUNT = re.compile(
    r"\bPOST\b[^\n]*/v2/b/y/blobs/uploads/\?[^\s\"]*mount=sha256(?:%3A|:)([0-9a-f]{64})[^\n]*(?:status=|\" )201\b"
)
_UPLOAD_PUT = re.compile(r"\bPUT\b[^\n]*/v2/b/y/blobs/uploads/[^\s\"]*digest=sha256(?:%3A|:)([0-9a-f]{64})")


def test_skopeo_cross_repository_mount(registry: Registry, admin_token: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    image = write_sample_image(src, layers=3, layer_size=1 * MiB, seed=21)
    skopeo_copy(f"oci:{src}:latest", f"docker://{registry.host}/a/x:latest", admin_token)
    log_before = len(registry.log())
    skopeo_copy(f"docker://{registry.host}/a/x:latest", f"docker://{registry.host}/b/y:latest", admin_token)
    log = registry.log()[log_before:]

    mounted = {m.group(1) for m in _MOUNT.finditer(log)}
    uploaded = {m.group(1) for m in _UPLOAD_PUT.finditer(log)}
    layers = {layer.digest.hex for layer in image.layers}
    # skopeo asks for a mount of every layer it has seen in a/x; the registry must grant each one
    # (201 Created) so no layer byte is uploaded twice. (skopeo always re-sends the small config.)
    assert layers <= mounted, f"layers not mounted: {layers - mounted}\nlog:\n{log}"
    assert not (uploaded & layers), f"layers re-uploaded instead of mounted: {uploaded & layers}\nlog:\n{log}"

    with httpx.Client(base_url=registry.url, auth=(TOKEN_USER, admin_token), timeout=30) as http:
        resp = http.head("/v2/b/y/manifests/latest", headers={"Accept": mediatypes.ALL_MANIFEST_ACCEPT})
        assert resp.headers.get("Docker-Content-Digest") == str(image.manifest.digest)
        for blob in image.blobs:
            resp = http.head(f"/v2/b/y/blobs/{blob.digest}")
            assert resp.status_code == 200
            assert int(resp.headers["Content-Length"]) == blob.size
