"""cargohold save from every file-based source kind, to a real server; re-saves; metadata; failures."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from cargohold.client.control import ControlClient
from cargohold.client.settings import Connection
from cargohold.images import ImageError, save_image
from cargohold.oci.layout import OCILayout
from cargohold.sample import SampleIndex, write_sample_image
from fixtures_images import require_tools
from servers import InProcessServer
from test_images_support import conn_fixture, multiarch_fixture, skopeo_raw, upload_requests

__all__ = ["conn_fixture", "multiarch_fixture"]


def _creds(server: InProcessServer) -> str:
    return f"x-token:{server.admin_token}"


def test_save_multiarch_index_whole_and_resave_uploads_nothing(
    server: InProcessServer, conn: Connection, multiarch: tuple[Path, SampleIndex], tmp_path: Path
) -> None:
    layout_dir, sample = multiarch
    metadata_file = tmp_path / "meta.json"
    first = save_image(conn, f"oci:{layout_dir}:v1", save_tags=["main"], metadata_file=metadata_file)

    assert first.digest == str(sample.index.digest), "the index must keep its digest"
    assert sorted(first.platforms) == ["linux/amd64", "linux/arm64"]
    blob_bytes = sum(d.size for image in sample.images for d in image.blobs) + sum(
        d.size for d in sample.attestation_blobs
    )
    assert first.uploaded_size == blob_bytes
    # Every digest (images, attestation manifests and their blobs) is in the registry under the build tag.
    with ControlClient(server.url, server.admin_token) as control:
        build = control.get_build(first.build_id)
    assert build.status == "saved" and build.save_tags == ["main"]
    raw, digest = skopeo_raw(f"docker://{server.host}/{conn.project}:{first.build_id}", creds=_creds(server))
    assert digest == sample.index.digest
    listed = {m["digest"] for m in json.loads(raw)["manifests"]}
    assert {str(d.digest) for d in sample.attestations} <= listed
    for attestation in sample.attestations:
        _, att_digest = skopeo_raw(f"docker://{server.host}/{conn.project}@{attestation.digest}", creds=_creds(server))
        assert att_digest == attestation.digest

    metadata = json.loads(metadata_file.read_text())
    assert metadata["containerimage.digest"] == first.digest
    assert metadata["containerimage.descriptor"] == {
        "mediaType": sample.index.media_type,
        "digest": first.digest,
        "size": sample.index.size,
    }
    assert metadata["image.name"] == first.reference == f"{server.host}/{conn.project}:{first.build_id}"
    assert metadata["cargohold.build"] == {
        "buildID": first.build_id,
        "projectID": conn.project,
        "reference": first.reference,
    }

    log_before = len(upload_requests(server.log()))
    again = save_image(conn, f"oci:{layout_dir}:v1")
    assert again.build_id != first.build_id and again.digest == first.digest
    assert again.uploaded_size == 0 and again.uploaded_blobs == 0
    assert again.skipped_blobs == len(sample.digests) - 1 - len(sample.images) - len(sample.attestations)
    assert len(upload_requests(server.log())) == log_before, "a re-save must not start a single blob upload"


def test_save_oci_archive(server: InProcessServer, conn: Connection, tmp_path: Path) -> None:
    image = write_sample_image(tmp_path / "img", layers=2, layer_size=64 << 10, seed=3, ref="latest")
    archive = tmp_path / "img.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted((tmp_path / "img").rglob("*")):
            tar.add(path, arcname=str(path.relative_to(tmp_path / "img")), recursive=False)
    result = save_image(conn, f"oci-archive:{archive}")
    assert result.digest == str(image.manifest.digest)
    assert result.platforms == ["linux/amd64"]
    _, digest = skopeo_raw(f"docker://{result.reference}", creds=_creds(server))
    assert digest == image.manifest.digest


def test_save_docker_archive(server: InProcessServer, conn: Connection, tmp_path: Path) -> None:
    require_tools("skopeo")
    image = write_sample_image(tmp_path / "img", layers=2, layer_size=64 << 10, seed=4, ref="latest")
    archive = tmp_path / "docker.tar"
    proc = subprocess.run(
        ["skopeo", "--insecure-policy", "copy", f"oci:{tmp_path / 'img'}:latest", f"docker-archive:{archive}:app:v1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = save_image(conn, f"docker-archive:{archive}", save_tags=["docker"])
    raw, digest = skopeo_raw(f"docker://{result.reference}", creds=_creds(server))
    assert str(digest) == result.digest
    manifest = json.loads(raw)
    # Same layer content as the OCI original (docker-archive keeps layers as they were).
    assert [layer["digest"] for layer in manifest["layers"]] == [str(d.digest) for d in image.layers]
    assert result.platforms == ["linux/amd64"]


def test_failure_marks_build_failed_naming_the_blob(server: InProcessServer, conn: Connection, tmp_path: Path) -> None:
    image = write_sample_image(tmp_path / "img", layers=2, layer_size=64 << 10, seed=5, ref="latest")
    bad = image.layers[1]
    path = OCILayout.open(tmp_path / "img").blob_path(bad.digest)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content: only hashing can tell
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError) as caught:
        save_image(conn, f"oci:{tmp_path / 'img'}")
    message = str(caught.value)
    assert f"uploading blob {bad.digest}" in message and "marked failed" in message
    with ControlClient(server.url, server.admin_token) as control:
        builds = control.list_builds(str(conn.project)).builds
    assert len(builds) == 1 and builds[0].status == "failed"
    assert str(bad.digest) in json.dumps(builds[0].to_json())


def test_bad_source_creates_no_build(server: InProcessServer, conn: Connection, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not an image source"):
        save_image(conn, f"tarball:{tmp_path}")
    with pytest.raises(ImageError, match="does not exist"):
        save_image(conn, f"docker-archive:{tmp_path / 'missing.tar'}")
    shutil.rmtree(tmp_path / "nothing", ignore_errors=True)
    with ControlClient(server.url, server.admin_token) as control:
        assert control.list_builds(str(conn.project)).builds == []
