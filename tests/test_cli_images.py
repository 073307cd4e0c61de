"""The ``cargohold save/pull/push`` commands end to end, as a CI job would run them (subprocesses)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cargohold.client.settings import Connection
from cargohold.sample import SampleIndex, write_sample_image
from refregistry import RefRegistry, refregistry_auth_fixture
from servers import InProcessServer
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
    server: InProcessServer,
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


def test_errors_are_one_sentence(server: InProcessServer, conn: Connection, tmp_path: Path) -> None:
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


def test_json_errors_are_json_on_stdout_with_the_same_exit_code(
    server: InProcessServer, conn: Connection, tmp_path: Path
) -> None:
    """``--json`` readers get ``{"error": {"code", "message"}}`` on stdout; people still get one sentence."""
    unknown = cli(conn, tmp_path, "pull", "doesnotexist0", "--output", f"oci:{tmp_path / 'o'}", "--json")
    assert unknown.returncode == 1 and unknown.stderr == "", unknown.stderr
    error = json.loads(unknown.stdout)["error"]
    assert error["code"] == "NOT_FOUND" and "doesnotexist0" in error["message"], error
    missing = cli(conn, tmp_path, "save", f"docker-archive:{tmp_path / 'nope.tar'}", "--json")
    assert missing.returncode == 1
    assert json.loads(missing.stdout) == {
        "error": {
            "code": "IMAGE_ERROR",
            "message": f"{tmp_path / 'nope.tar'} does not exist; check the path after docker-archive:.",
        }
    }
    listing = cli(conn, tmp_path, "builds", "list", "--json", env={"CARGOHOLD_TOKEN": "chp_wrong"})
    assert listing.returncode == 1 and set(json.loads(listing.stdout)["error"]) == {"code", "message"}


def test_plain_progress_says_what_moved_and_never_done_before_an_error(
    server: InProcessServer, conn: Connection, multiarch: tuple[Path, SampleIndex], tmp_path: Path
) -> None:
    layout_dir, _ = multiarch
    first = cli(conn, tmp_path, "save", f"oci:{layout_dir}:v1", "--progress", "plain", "--json")
    assert first.returncode == 0, first.stderr
    build_id = json.loads(first.stdout)["build_id"]
    # Saved again: every blob is already there, so nothing is counted as transferred.
    again = cli(conn, tmp_path, "save", f"oci:{layout_dir}:v1", "--progress", "plain")
    assert again.returncode == 0, again.stderr
    totals = [line for line in again.stderr.splitlines() if line.startswith("saving ") and ": done, " in line]
    assert len(totals) == 1 and ": done, 0 B in " in totals[0] and "already there" in totals[0], again.stderr

    pulled = cli(conn, tmp_path, "pull", build_id, "--output", f"oci:{tmp_path / 'layout'}", "--progress", "plain")
    assert pulled.returncode == 0, pulled.stderr
    blob_lines = [line.split()[0] for line in pulled.stderr.splitlines() if line.startswith("  ")]
    assert blob_lines and set(blob_lines) == {"downloaded"}, pulled.stderr

    # A pull that fails mid-transfer (the server's layer files are corrupted behind its back) never claims "done".
    layers = [p for p in (server.data_dir / "blobs").rglob("*") if p.is_file() and p.stat().st_size >= 256 << 10]
    assert layers
    for path in layers:
        with open(path, "r+b") as handle:
            handle.write(b"corrupted")
    failed = cli(conn, tmp_path, "pull", build_id, "--output", f"oci:{tmp_path / 'bad'}", "--progress", "plain")
    assert failed.returncode == 1
    assert "done," not in failed.stderr and failed.stderr.strip().splitlines()[-1].startswith("error:"), failed.stderr


def test_bare_save_tags_resolve_in_the_configured_project_and_targets_are_pulled_and_pushed(
    server: InProcessServer, conn: Connection, refregistry_auth: RefRegistry, tmp_path: Path
) -> None:
    """``cargohold pull main`` with a project configured; a build-ID-shaped save-tag is tried as a build first
    and then as the save-tag (documented order); bake targets saved in one build are pulled and pushed by name."""
    main = write_sample_image(tmp_path / "main", layers=1, layer_size=8192, seed=31, ref="v1")
    app = write_sample_image(tmp_path / "app", layers=1, layer_size=8192, seed=32, ref="v1")
    tests = write_sample_image(tmp_path / "tests", layers=1, layer_size=8192, seed=33, ref="v1")
    saved = cli(
        conn,
        tmp_path,
        "save",
        f"oci:{tmp_path / 'main'}:v1",
        "--save-tag",
        "main",
        "--save-tag",
        "nightlybld",  # shaped like a build ID
        "--target",
        f"app=oci:{tmp_path / 'app'}:v1",
        "--target",
        f"tests=oci:{tmp_path / 'tests'}:v1",
        "--json",
    )
    assert saved.returncode == 0, saved.stderr
    data = json.loads(saved.stdout)
    assert data["metadata"]["cargohold.build"]["targets"] == ["app", "tests"]

    for word in ("main", "nightlybld", data["build_id"]):
        pulled = cli(conn, tmp_path, "pull", word, "--output", f"oci:{tmp_path / ('by-' + word)}", "--json")
        assert pulled.returncode == 0, (word, pulled.stderr)
        assert json.loads(pulled.stdout)["digest"] == str(main.manifest.digest), word
        assert json.loads(pulled.stdout)["build_id"] == data["build_id"], word

    unconfigured = cli(
        conn, tmp_path, "pull", "main", "--output", f"oci:{tmp_path / 'x'}", env={"CARGOHOLD_PROJECT_ID": ""}
    )
    assert unconfigured.returncode == 1
    assert "'main' is not a build ID; to pull the save-tag main, configure the project" in unconfigured.stderr

    target = cli(conn, tmp_path, "pull", "main", "--target", "app", "--output", f"oci:{tmp_path / 'app-out'}", "--json")
    assert target.returncode == 0, target.stderr
    result = json.loads(target.stdout)
    assert result["digest"] == str(app.manifest.digest) and result["target"] == "app"
    assert result["reference"] == f"{server.host}/{conn.project}:{data['build_id']}-app"
    unknown = cli(conn, tmp_path, "pull", "main", "--target", "nope", "--output", f"oci:{tmp_path / 'n'}")
    assert unknown.returncode == 1 and "has no target 'nope'; its targets: app, tests" in unknown.stderr

    tag = f"{refregistry_auth.host}/final/tests:1.0"
    pushed = cli(
        conn,
        tmp_path,
        "push",
        "main",
        "--target",
        "tests",
        "-t",
        tag,
        env={"CARGOHOLD_PUSH_REGISTRY_USERNAME": "ci", "CARGOHOLD_PUSH_REGISTRY_PASSWORD": "s3cret-pass"},
    )
    assert pushed.returncode == 0, pushed.stderr
    assert skopeo_raw(f"docker://{tag}", creds="ci:s3cret-pass")[1] == tests.manifest.digest


def test_build_refuses_a_flag_the_builder_cannot_apply_before_building(
    server: InProcessServer, conn: Connection, tmp_path: Path
) -> None:
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed (scripts/bootstrap.sh installs it)")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    refused = cli(conn, tmp_path, "build", str(tmp_path), "--builder", "buildah", "--attest", "type=sbom", "--json")
    assert refused.returncode == 1, refused.stderr
    error = json.loads(refused.stdout)["error"]
    assert error["code"] == "IMAGE_ERROR"
    assert error["message"].startswith("the buildah builder cannot apply --attest (input 'attests'); use --builder")
