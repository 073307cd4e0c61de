"""Image copies: layout → registry, registry → registry (same host: mounts; other host: streamed),
registry → layout; whole indexes with attestations, single platforms, and referrers."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cargohold.client.copy import LayoutStore, RegistryRepo, copy_image, select_platform
from cargohold.client.errors import PlatformNotFoundError
from cargohold.client.registry import Manifest, RegistryClient, referrers_tag
from cargohold.client.retry import RetryPolicy
from cargohold.oci import mediatypes
from cargohold.oci.digest import Digest
from cargohold.oci.layout import OCILayout
from cargohold.sample import SampleIndex, write_sample_index
from refregistry import RefRegistry, refregistry2_fixture, refregistry_fixture  # noqa: F401 - fixtures

pytestmark = pytest.mark.tools
FAST = RetryPolicy(attempts=3, initial=0.01, maximum=0.05)


def skopeo_raw(ref: str) -> bytes:
    """Manifest bytes as skopeo sees them: an independent check that our digests are the registry's."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    proc = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def sample(tmp_path: Path) -> tuple[OCILayout, SampleIndex]:
    layout_dir = tmp_path / "src-layout"
    sample = write_sample_index(layout_dir, layers=2, layer_size=(2 << 20), seed=7, ref="v1", attestations=True)
    return OCILayout.open(layout_dir), sample


def test_layout_to_registry_to_registry_to_layout(
    refregistry: RefRegistry,
    refregistry2: RefRegistry,
    sample: tuple[OCILayout, SampleIndex],
    tmp_path: Path,
) -> None:
    layout, info = sample
    index_digest = info.index.digest
    all_blobs = {d.digest for img in info.images for d in img.blobs} | {d.digest for d in info.attestation_blobs}
    with RegistryClient(refregistry.host, retry=FAST) as a, RegistryClient(refregistry2.host, retry=FAST) as b:
        # layout -> registry A (this is `cargohold save`)
        pushed = copy_image(LayoutStore(layout), "v1", RegistryRepo(a, "team/app"), ["v1", "latest"])
        assert pushed.digest == index_digest
        assert set(pushed.uploaded) == all_blobs
        # children (images and attestation manifests) before the index
        assert pushed.manifests[-1] == index_digest
        assert set(pushed.manifests[:-1]) == {i.manifest.digest for i in info.images} | {
            d.digest for d in info.attestations
        }
        for tag in ("v1", "latest"):
            assert sha256(skopeo_raw(f"{refregistry.host}/team/app:{tag}")) == str(index_digest)

        # registry A -> A, other repository: every blob is mounted, nothing streamed
        progress: list[int] = []
        same = copy_image(
            RegistryRepo(a, "team/app"), "v1", RegistryRepo(a, "other/copy"), ["v1"], progress=progress.append
        )
        assert set(same.mounted) == all_blobs and not same.uploaded
        assert sum(progress) == sum(d.size for img in info.images for d in img.blobs) + sum(
            d.size for d in info.attestation_blobs
        )
        assert sha256(skopeo_raw(f"{refregistry.host}/other/copy:v1")) == str(index_digest)

        # registry A -> registry B: streamed GET -> upload, digests preserved
        other = copy_image(RegistryRepo(a, "team/app"), "v1", RegistryRepo(b, "mirror/app"), ["v1"], jobs=3)
        assert set(other.uploaded) == all_blobs
        raw = skopeo_raw(f"{refregistry2.host}/mirror/app:v1")
        assert sha256(raw) == str(index_digest)
        for child in json.loads(raw)["manifests"]:
            assert sha256(skopeo_raw(f"{refregistry2.host}/mirror/app@{child['digest']}")) == child["digest"]
        # again: everything already there, nothing moves
        again = copy_image(RegistryRepo(a, "team/app"), "v1", RegistryRepo(b, "mirror/app"), ["v1"])
        assert set(again.skipped) == all_blobs and not again.uploaded

        # registry B -> layout (this is `cargohold pull --output oci:DIR`)
        out = OCILayout.create(tmp_path / "pulled")
        pulled = copy_image(RegistryRepo(b, "mirror/app"), "v1", LayoutStore(out), ["v1"])
        assert pulled.digest == index_digest
        assert out.resolve("v1").digest == index_digest
        for digest in info.digests:
            assert out.has_blob(digest)
            assert out.blob_path(digest).read_bytes() == layout.blob_path(digest).read_bytes()


def test_single_platform_and_platform_errors(
    refregistry: RefRegistry,
    sample: tuple[OCILayout, SampleIndex],
    tmp_path: Path,
) -> None:
    layout, info = sample
    arm = next(img for img in info.images if img.platform[1] == "arm64")
    with RegistryClient(refregistry.host, retry=FAST) as client:
        result = copy_image(
            LayoutStore(layout), "v1", RegistryRepo(client, "one/arch"), ["arm"], platform="linux/arm64"
        )
        assert result.digest == arm.manifest.digest
        assert set(result.uploaded) == {d.digest for d in arm.blobs}
        got = client.get_manifest("one/arch", "arm")
        assert got.media_type == mediatypes.OCI_MANIFEST and got.digest == arm.manifest.digest
        with pytest.raises(PlatformNotFoundError) as err:
            copy_image(LayoutStore(layout), "v1", RegistryRepo(client, "one/arch"), ["x"], platform="linux/s390x")
    assert "linux/s390x" in str(err.value)
    assert "available platforms: linux/amd64, linux/arm64" in str(err.value)
    assert "unknown" not in str(err.value)
    with pytest.raises(ValueError, match="os/arch"):
        select_platform({"manifests": []}, "linux")


def test_referrers_are_copied_via_fallback_tag(
    refregistry: RefRegistry,
    refregistry2: RefRegistry,
    sample: tuple[OCILayout, SampleIndex],
) -> None:
    layout, info = sample
    with RegistryClient(refregistry.host, retry=FAST) as a, RegistryClient(refregistry2.host, retry=FAST) as b:
        copy_image(LayoutStore(layout), "v1", RegistryRepo(a, "sig/app"), ["v1"], include_referrers=False)
        # Attach a signature-like artifact to the first platform image, pushed as a referrer.
        subject = info.images[0].manifest
        empty = a.push_blob_bytes("sig/app", mediatypes.EMPTY_JSON)
        sig_layer = a.push_blob_bytes("sig/app", b"signature bytes")
        body = {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_MANIFEST,
            "artifactType": "application/vnd.test.sig",
            "config": {"mediaType": mediatypes.OCI_EMPTY, "digest": str(empty.digest), "size": 2},
            "layers": [
                {"mediaType": "application/vnd.test.sig", "digest": str(sig_layer.digest), "size": sig_layer.size}
            ],
            "subject": subject.to_json(),
        }
        data = json.dumps(body).encode()
        sig = Manifest(data, mediatypes.OCI_MANIFEST, Digest.of(data))
        src_repo = RegistryRepo(a, "sig/app")
        if not src_repo.put_manifest(sig, None):
            src_repo.add_referrer(subject.digest, sig.descriptor(artifact_type="application/vnd.test.sig"))
        assert [d.digest for d in a.referrers("sig/app", subject.digest)] == [sig.digest]

        result = copy_image(src_repo, "v1", RegistryRepo(b, "sig/mirror"), ["v1"])
        assert result.referrers == [sig.digest]
        found = b.referrers("sig/mirror", subject.digest)
        assert [(d.digest, d.artifact_type) for d in found] == [(sig.digest, "application/vnd.test.sig")]
        assert b.blob_exists("sig/mirror", sig_layer.digest) == sig_layer.size
        # the 2.8 registry has no referrers API, so the fallback tag must have been written
        assert referrers_tag(subject.digest) in b.list_tags("sig/mirror")
