"""Shared fixtures for the images tests (save/pull/push/build): a Cargohold server with a project, sample
images, and small helpers to look at what landed. Imported by the test_images_*/test_cli_images modules;
it holds no tests itself."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.client.control import ControlClient
from cargohold.client.settings import Connection
from cargohold.oci.digest import Digest
from cargohold.sample import SampleIndex, write_sample_index
from servers import InProcessServer


@pytest.fixture(name="conn")
def conn_fixture(server: InProcessServer) -> Iterator[Connection]:
    """A connection to a fresh server with one project, as the admin."""
    with ControlClient(server.url, server.admin_token) as control:
        project = control.create_project("images-test")
    yield Connection(server.url, server.admin_token, "test", str(project.id))


@pytest.fixture(name="multiarch")
def multiarch_fixture(tmp_path: Path) -> tuple[Path, SampleIndex]:
    """Two platforms plus BuildKit-style attestation manifests (unknown/unknown entries)."""
    layout = tmp_path / "multiarch"
    return layout, write_sample_index(layout, layers=2, layer_size=256 << 10, seed=7, ref="v1", attestations=True)


def skopeo_raw(image: str, *, creds: str | None = None) -> tuple[bytes, Digest]:
    """``skopeo inspect --raw``: the exact manifest bytes a third-party client sees, and their digest."""
    args = ["skopeo", "inspect", "--raw", "--tls-verify=false"]
    if creds:
        args += ["--creds", creds]
    proc = subprocess.run([*args, image], capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout, Digest.of(proc.stdout)


def skopeo_inspect(image: str) -> dict[str, object]:
    proc = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", image], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def blob_files(data_dir: Path, digest: Digest) -> list[Path]:
    """Where the server keeps ``digest`` on disk (to corrupt it behind the registry's back)."""
    return [p for p in data_dir.rglob(f"*{digest.hex}*") if p.is_file()]


def upload_requests(log: str) -> list[str]:
    """Access-log lines of blob uploads (POST/PATCH/PUT under /blobs/uploads/)."""
    return [line for line in log.splitlines() if "/blobs/uploads/" in line]
