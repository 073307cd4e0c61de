"""The ``cargohold save/pull/push`` commands end to end, as a CI job would run them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cargohold.client.settings import Connection
from cargohold.sample import SampleIndex
from conftest import ServerProcess
from refregistry import RefRegistry, refregistry_auth_fixture
from test_images_support import conn_fixture, multiarch_fixture, skopeo_raw

__all__ = ["conn_fixture", "multiarch_fixture", "refregistry_auth_fixture"]


def cli(
    conn: Connection,
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "CARGOHOLD_REGISTRY": conn.registry,
        "CARGOHOLD_TOKEN": str(conn.token),
        "CARGOHOLD_PROJECT_ID": str(conn.project),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "DOCKER_CONFIG": str(tmp_path / "docker-config"),
        "CI": "true",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "cargohold", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=180,
        check=False,
    )


def test_save_pull_push_commands(
    server: ServerProcess,
    conn: Connection,
    multiarch: tuple[Path, SampleIndex],
    refregistry_auth: RefRegistry,
    tmp_path: Path,
) -> None:
    layout_dir, sample = multiarch
    meta = tmp_path / "meta.json"
    saved = cli(
        conn,
        tmp_path,
        "save",
        f"oci:{layout_dir}:v1",
        "--save-tag",
        "main",
        "--save-tag",
        "pr-1",
        "--metadata-file",
        str(meta),
        "--json",
    )
    assert saved.returncode == 0, saved.stderr
    data = json.loads(saved.stdout)
    assert data["digest"] == str(sample.index.digest)
    assert data["pull_command"] == f"cargohold pull {data['build_id']}"
    assert sorted(data["save_tags"]) == ["main", "pr-1"]
    assert json.loads(meta.read_text())["cargohold.build"]["buildID"] == data["build_id"]
    # CI=true: plain line-per-step progress on stderr, no terminal control sequences.
    assert "created build" in saved.stderr and "\x1b[" not in saved.stderr

    human = cli(conn, tmp_path, "save", f"oci:{layout_dir}:v1", "--progress", "quiet")
    assert human.returncode == 0, human.stderr
    assert human.stderr == ""
    assert "0 B newly uploaded" in human.stdout and "cargohold push" in human.stdout

    pulled = cli(
        conn,
        tmp_path,
        "pull",
        f"{conn.project}:main",
        "--platform",
        "linux/arm64",
        "--output",
        f"oci:{tmp_path / 'out'}",
        "--json",
    )
    assert pulled.returncode == 0, pulled.stderr
    arm = next(image for image in sample.images if image.platform == ("linux", "arm64"))
    assert json.loads(pulled.stdout)["digest"] == str(arm.manifest.digest)

    nomatch = cli(
        conn,
        tmp_path,
        "pull",
        data["build_id"],
        "--platform",
        "windows/amd64",
        "--output",
        f"oci:{tmp_path / 'none'}",
        "--progress",
        "quiet",
    )
    assert nomatch.returncode == 1
    lines = nomatch.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), nomatch.stderr
    assert "linux/amd64, linux/arm64" in lines[0]

    tag = f"{refregistry_auth.host}/final/app:1.0"
    pushed = cli(
        conn,
        tmp_path,
        "push",
        data["build_id"],
        "-t",
        tag,
        "--progress",
        "plain",
        env={"CARGOHOLD_PUSH_REGISTRY_USERNAME": "ci", "CARGOHOLD_PUSH_REGISTRY_PASSWORD": "s3cret-pass"},
    )
    assert pushed.returncode == 0, pushed.stderr
    assert f"pushed {tag}@{sample.index.digest}" in pushed.stdout
    assert skopeo_raw(f"docker://{tag}", creds="ci:s3cret-pass")[1] == sample.index.digest


def test_errors_are_one_sentence(server: ServerProcess, conn: Connection, tmp_path: Path) -> None:
    missing = cli(conn, tmp_path, "save", f"docker-archive:{tmp_path / 'nope.tar'}")
    assert missing.returncode == 1
    assert (
        missing.stderr.strip() == f"error: {tmp_path / 'nope.tar'} does not exist; check the path after "
        "docker-archive:."
    )
    unknown = cli(conn, tmp_path, "pull", "doesnotexist0", "--output", f"oci:{tmp_path / 'o'}")
    assert unknown.returncode == 1 and unknown.stderr.startswith("error:") and "Traceback" not in unknown.stderr
    nobuilder = cli(conn, tmp_path, "build", str(tmp_path), "--builder", "no such")
    assert nobuilder.returncode == 1
    assert "is neither docker-buildx, docker, buildah nor a buildx builder name" in nobuilder.stderr
