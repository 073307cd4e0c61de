"""containerd pulls from Cargohold through its own resolver (the code Kubernetes nodes pull with).

A private containerd (tests/containerd.py) pulls an image skopeo pushed: by tag and by digest, unpacked by the
``native`` snapshotter, with the ``x-token`` login; without credentials it is refused. The same test runs on a
bucket with redirects in tests/test_storage_s3.py.
"""

from __future__ import annotations

from pathlib import Path

from cargohold.sample import write_sample_image
from containerd import Containerd
from fixtures_images import require_tools, skopeo_copy
from servers import InProcessServer


def pull_with_containerd(registry: InProcessServer, containerd: Containerd, tmp_path: Path, repository: str) -> None:
    """Push a two-layer image with skopeo, pull it with ctr by tag and by digest, check what containerd stored."""
    require_tools("skopeo", "containerd", "ctr")
    image = write_sample_image(tmp_path / "src", layers=2, layer_size=512 << 10, seed=31)
    token = registry.admin_token
    assert token is not None
    tagged = f"{registry.host}/{repository}:1"
    skopeo_copy(f"oci:{tmp_path / 'src'}:latest", f"docker://{tagged}", token)
    login = ["--plain-http", "--user", f"x-token:{token}"]
    by_digest = f"{registry.host}/{repository}@{image.manifest.digest}"
    try:
        containerd.ctr("images", "pull", *login, "--snapshotter", "native", tagged)
        listed = containerd.ctr("images", "ls")
        assert tagged in listed and str(image.manifest.digest) in listed
        stored = containerd.ctr("content", "ls", "--quiet")
        for blob in (image.config, *image.layers):
            assert str(blob.digest) in stored, f"{blob.digest} was not fetched"
        containerd.ctr("images", "pull", *login, "--snapshotter", "native", by_digest)
        refused = containerd.run("images", "pull", "--plain-http", tagged)  # no credentials
        assert refused.returncode != 0 and "401" in refused.stderr + refused.stdout
    finally:
        containerd.run("images", "rm", tagged, by_digest)


def test_containerd_pulls_by_tag_and_by_digest(
    server: InProcessServer, session_containerd: Containerd, tmp_path: Path
) -> None:
    pull_with_containerd(server, session_containerd, tmp_path, "ci/containerd")
