"""cargohold pull to every file output, platform selection, and refusal of corrupted content."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cargohold.client.errors import DigestMismatchError, PlatformNotFoundError, RegistryError
from cargohold.client.settings import Connection
from cargohold.images import ImageError, PullResult, pull_image, save_image
from cargohold.oci.archive import ArchiveError
from cargohold.oci.digest import Digest
from cargohold.oci.layout import OCILayout
from cargohold.sample import SampleIndex
from fixtures_images import layout_blob_digests, require_tools
from servers import InProcessServer
from test_images_support import blob_files, conn_fixture, multiarch_fixture, skopeo_inspect, skopeo_raw

__all__ = ["conn_fixture", "multiarch_fixture"]


def test_pull_outputs_and_platforms(
    server: InProcessServer, conn: Connection, multiarch: tuple[Path, SampleIndex], tmp_path: Path
) -> None:
    require_tools("skopeo", "umoci")
    layout_dir, sample = multiarch
    saved = save_image(conn, f"oci:{layout_dir}:v1", save_tags=["main"])
    arm = next(image for image in sample.images if image.platform == ("linux", "arm64"))

    # oci: with every platform: the whole index, attestations included, every blob verified on disk.
    whole = pull_image(conn, saved.build_id, output=f"oci:{tmp_path / 'all'}:v1", all_platforms=True)
    assert whole.digest == str(sample.index.digest)
    assert layout_blob_digests(tmp_path / "all") == sample.digests
    _, digest = skopeo_raw(f"oci:{tmp_path / 'all'}:v1")
    assert digest == sample.index.digest

    # oci: one platform, by PROJECT:TAG; umoci can read the image it names.
    one = pull_image(conn, f"{conn.project}:main", platform="linux/arm64", output=f"oci:{tmp_path / 'arm'}")
    assert one.digest == str(arm.manifest.digest) and one.platform == "linux/arm64"
    ref_name = one.image.rsplit(":", 1)[1]
    stat = subprocess.run(
        ["umoci", "stat", "--image", f"{tmp_path / 'arm'}:{ref_name}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert stat.returncode == 0, stat.stderr

    # oci-archive: and docker-archive: are readable by skopeo and keep the platform's content.
    pull_image(conn, saved.reference, platform="linux/arm64", output=f"oci-archive:{tmp_path / 'arm.tar'}")
    info = skopeo_inspect(f"oci-archive:{tmp_path / 'arm.tar'}")
    assert info["Architecture"] == "arm64" and info["Digest"] == str(arm.manifest.digest)
    result: PullResult = pull_image(
        conn,
        saved.build_id,
        platform="linux/arm64",
        tags=["app:arm"],
        output=f"docker-archive:{tmp_path / 'arm-docker.tar'}",
    )
    info = skopeo_inspect(f"docker-archive:{tmp_path / 'arm-docker.tar'}")
    assert info["Architecture"] == "arm64"
    assert info["Layers"] == [str(d.digest) for d in arm.layers]
    assert result.build_digest == saved.digest

    with pytest.raises(PlatformNotFoundError) as caught:
        pull_image(conn, saved.build_id, platform="linux/s390x", output=f"oci:{tmp_path / 'none'}")
    assert "linux/amd64, linux/arm64" in str(caught.value) and "unknown" not in str(caught.value)
    with pytest.raises(ImageError, match="all-platforms"):
        pull_image(conn, saved.build_id, all_platforms=True, output=f"docker-archive:{tmp_path / 'x.tar'}")


def test_pull_refuses_a_blob_that_does_not_match_its_digest(
    server: InProcessServer, conn: Connection, multiarch: tuple[Path, SampleIndex], tmp_path: Path
) -> None:
    layout_dir, sample = multiarch
    saved = save_image(conn, f"oci:{layout_dir}:v1")
    amd = next(image for image in sample.images if image.platform == ("linux", "amd64"))
    victim = amd.layers[0].digest
    files = blob_files(server.data_dir, victim)
    assert files, f"cannot find {victim} under {server.data_dir}"
    for path in files:  # flip one byte in place, behind the server's back, size unchanged
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))

    with pytest.raises((DigestMismatchError, RegistryError, ArchiveError, ImageError)) as caught:
        pull_image(conn, saved.build_id, platform="linux/amd64", output=f"docker-archive:{tmp_path / 'bad.tar'}")
    assert "digest" in str(caught.value)
    assert not (tmp_path / "bad.tar").exists(), "a refused pull must not leave an archive behind"

    with pytest.raises((DigestMismatchError, RegistryError, ImageError)):
        pull_image(conn, saved.build_id, platform="linux/amd64", output=f"oci:{tmp_path / 'bad'}")
    layout = OCILayout.open(tmp_path / "bad")
    assert not layout.has_blob(victim)
    assert all(
        Digest.parse(m["digest"]) != amd.manifest.digest
        for m in json.loads((tmp_path / "bad" / "index.json").read_text())["manifests"]
    )


def test_the_build_id_shape_the_client_assumes_is_the_one_the_server_hands_out() -> None:
    """``cargohold pull WORD`` decides "build or save-tag" by shape; the server's ID generator must agree."""
    from cargohold.images.pull import BUILD_ID_PATTERN
    from cargohold.metadata.control import new_id

    assert all(BUILD_ID_PATTERN.fullmatch(new_id()) for _ in range(500))
    assert not any(BUILD_ID_PATTERN.fullmatch(word) for word in ("main", "pr-42", "v1.2.3", "0123456789", "Abcdefghij"))
