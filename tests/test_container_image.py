"""The Dockerfile builds an image that runs Cargohold: built, started, pushed to and pulled from with skopeo.

No image registry is needed: the Dockerfile's base (``debian:bookworm-slim``) is made here with
``debootstrap --variant=minbase`` and imported into the tests' private dockerd under that name. The
debootstrap tarball is cached between runs (``$XDG_CACHE_HOME/cargohold-tests``, keyed by the Debian
release), so only the first run pays for it. RUN steps reach Debian's and Python's package registries through
the host network (``--network host``); the host's CA bundle is handed to the build as the Dockerfile's
documented ``ca-certificates`` secret, for hosts behind a TLS-intercepting proxy.

One test, because building is slow; it prints how long each step took.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from cargohold.oci.digest import Digest
from cargohold.sample import write_sample_image
from fixtures_images import require_tools
from processes import free_port

pytestmark = [pytest.mark.slow, pytest.mark.tools]

ROOT = Path(__file__).resolve().parent.parent
RELEASE = "bookworm"
BASE_TAG = "debian:bookworm-slim"
MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cargohold-tests"


def debootstrap_tarball() -> Path:
    """``<cache>/debian-<release>-minbase.tar``, made once (needs root and Debian's package registry)."""
    tarball = cache_dir() / f"debian-{RELEASE}-minbase-slim.tar"
    if tarball.is_file():
        return tarball
    if os.geteuid() != 0:
        pytest.skip("debootstrap needs root")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chroot-", dir=tarball.parent) as work:
        rootfs = Path(work) / "rootfs"
        run("debootstrap", "--variant=minbase", RELEASE, str(rootfs), MIRROR, timeout=900)
        slim(rootfs)
        partial = tarball.with_suffix(".partial")
        run("tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), ".", timeout=300)
        partial.rename(tarball)
    return tarball


SLIM_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")


def slim(rootfs: Path) -> None:
    """Make the minbase tree what the Debian "slim" images are: no documentation, manual pages or
    translations, now or in packages installed later (a dpkg path-exclude file), no apt caches."""
    (rootfs / "etc" / "dpkg" / "dpkg.cfg.d" / "slim").write_text(
        "".join(f"path-exclude {pattern}\n" for pattern in SLIM_EXCLUDES) + "path-include /usr/share/doc/*/copyright\n"
    )
    for pattern in SLIM_EXCLUDES:
        for path in rootfs.glob(pattern.lstrip("/")):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.name != "copyright":
                path.unlink()
    for cache in ("var/cache/apt", "var/lib/apt/lists"):
        for path in (rootfs / cache).glob("*"):
            if path.is_file():
                path.unlink()


def run(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def test_image_builds_runs_and_serves_skopeo(session_dockerd: str, tmp_path: Path) -> None:
    require_tools("debootstrap", "docker", "skopeo")
    timings: dict[str, float] = {}
    docker_env = {
        "DOCKER_HOST": session_dockerd,
        "DOCKER_CONFIG": str(tmp_path / "docker-config"),
        "DOCKER_BUILDKIT": "1",
    }

    def docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run("docker", *args, timeout=timeout, env=docker_env)

    started = time.monotonic()
    tarball = debootstrap_tarball()
    timings["debootstrap (cached after the first run)"] = time.monotonic() - started

    mark = time.monotonic()
    docker("import", str(tarball), BASE_TAG, timeout=300)
    timings["import base"] = time.monotonic() - mark

    mark = time.monotonic()
    build = ["build", "--network", "host", "--tag", "cargohold-test:latest"]
    if HOST_CA_BUNDLE.is_file():
        build += ["--secret", f"id=ca-certificates,src={HOST_CA_BUNDLE}"]
    docker(*build, str(ROOT), timeout=900)
    timings["build"] = time.monotonic() - mark

    inspected = json.loads(docker("image", "inspect", "cargohold-test:latest").stdout)[0]
    config = inspected["Config"]
    assert config["User"] == "cargohold"
    assert "/data" in config["Volumes"]
    assert config["Healthcheck"]["Test"][-3:] == ["python3", "-m", "cargohold.ops.healthcheck"]

    port = free_port()
    token = secrets.token_urlsafe(24)
    name = f"cargohold-test-{port}"
    mark = time.monotonic()
    docker(
        "run", "--detach", "--name", name, "--network", "host", "--health-interval", "1s",
        "-e", "CARGOHOLD_HOST=127.0.0.1", "-e", f"CARGOHOLD_PORT={port}",
        "-e", f"CARGOHOLD_PUBLIC_URL=http://127.0.0.1:{port}", "-e", f"CARGOHOLD_ADMIN_TOKEN={token}",
        "cargohold-test:latest",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        status = ""
        while status != "healthy":
            assert time.monotonic() < deadline, docker("logs", name).stdout + docker("logs", name).stderr
            status = docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
            time.sleep(0.5)
        timings["start until healthy"] = time.monotonic() - mark
        assert docker("exec", name, "id", "-u").stdout.strip() != "0"
        no_compiler = subprocess.run(
            ["docker", "exec", name, "sh", "-c", "command -v gcc || command -v cc || command -v x86_64-linux-gnu-gcc"],
            capture_output=True, text=True, timeout=120, env={**os.environ, **docker_env}, check=False,
        )  # fmt: skip
        assert no_compiler.returncode != 0, f"a compiler is in the final image: {no_compiler.stdout}"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json()["status"] == "ok"

        mark = time.monotonic()
        image = write_sample_image(tmp_path / "img", layers=2, layer_size=256 << 10, seed=31, ref="latest")
        creds = f"x-token:{token}"
        reference = f"docker://127.0.0.1:{port}/container/app:1"
        run("skopeo", "copy", "--preserve-digests", "--dest-tls-verify=false", "--dest-creds", creds,
            f"oci:{tmp_path / 'img'}:latest", reference)  # fmt: skip
        raw = run("skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", creds, reference).stdout
        assert Digest.of(raw.encode()) == image.manifest.digest, "the registry serves the manifest as pushed"
        run("skopeo", "copy", "--src-tls-verify=false", "--src-creds", creds, reference, f"oci:{tmp_path / 'back'}:1")
        pulled = json.loads((tmp_path / "back" / "index.json").read_text())["manifests"][0]
        assert pulled["annotations"]["org.opencontainers.image.ref.name"] == "1"
        timings["skopeo push + pull"] = time.monotonic() - mark

        listing = docker("exec", name, "ls", "-ln", "/data").stdout
        assert "metadata.db" in listing and " 10001 " in listing, listing
    finally:
        subprocess.run(
            ["docker", "rm", "--force", name], capture_output=True, env={**os.environ, **docker_env}, check=False
        )
    size_mb = inspected["Size"] / 1e6
    print(
        f"\nimage size {size_mb:.0f} MB; " + "; ".join(f"{step}: {seconds:.1f} s" for step, seconds in timings.items())
    )
