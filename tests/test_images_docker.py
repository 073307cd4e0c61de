"""The Docker-daemon and buildah paths, against a private dockerd and a private buildah store.

The daemon is started by the fixture with its own data root, ``--storage-driver vfs --iptables=false
--bridge=none`` and a socket in a temp dir (reached through DOCKER_HOST), so no host daemon is touched.
When dockerd/buildah cannot run in this environment the tests skip and say exactly why (the daemon's last
log lines), instead of silently passing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.client.settings import Connection
from cargohold.images import (
    BuildOptions,
    DockerEngine,
    ImageError,
    PlainProgress,
    build_and_save,
    pull_image,
    save_image,
)
from cargohold.images.docker import registry_reach
from cargohold.sample import write_sample_image
from processes import stop_process
from servers import InProcessServer
from test_images_support import conn_fixture, skopeo_raw

__all__ = ["conn_fixture"]

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def private_dockerd(*, own_network: bool = False) -> Iterator[str]:
    """A private dockerd; yields its DOCKER_HOST value.

    ``own_network``: the daemon runs in a network namespace of its own (``unshare -n`` with only ``lo`` up),
    like a Docker-in-Docker daemon: its 127.0.0.1 is not ours, so it cannot reach a registry on our loopback
    while its unix socket (a file) still serves us.
    """
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed (apt-get install docker.io)")
    # Short path: unix socket paths are limited to 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="chd-", dir="/tmp"))
    host = f"unix://{root}/docker.sock"
    log = root / "dockerd.log"
    command = [
        "dockerd",
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "--pidfile",
        str(root / "docker.pid"),
        "-H",
        host,
        "--storage-driver",
        "vfs",
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
    ]
    if own_network:
        if shutil.which("unshare") is None or shutil.which("ip") is None:
            pytest.skip("unshare and ip (util-linux, iproute2) are needed for a daemon in its own network")
        command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "dockerd-netns", *command]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                pytest.skip(f"dockerd cannot start here (exit {proc.returncode}): {' | '.join(tail)}")
            with DockerEngine(host) as engine:
                if engine.ping():
                    break
            if time.monotonic() > deadline:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                pytest.skip(f"dockerd did not answer within 60s: {' | '.join(tail)}")
            time.sleep(0.3)
        yield host
    finally:
        stop_process(proc, timeout=30)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def dockerd() -> Iterator[str]:
    """A private dockerd on this machine's network; yields its DOCKER_HOST value."""
    with private_dockerd() as host:
        yield host


def test_pull_into_daemon_then_save_from_daemon(
    server: InProcessServer, conn: Connection, dockerd: str, tmp_path: Path
) -> None:
    image = write_sample_image(tmp_path / "img", layers=2, layer_size=128 << 10, seed=21, ref="latest")
    saved = save_image(conn, f"oci:{tmp_path / 'img'}")
    stream = io.StringIO()
    pulled = pull_image(
        conn, saved.build_id, tags=["cargohold-test/app:ci"], docker_host=dockerd, progress=PlainProgress(stream)
    )
    assert pulled.digest == str(image.manifest.digest)
    # The daemon pulled from Cargohold itself (a loopback registry is one of its insecure registries by default),
    # with the build-scoped pull token as X-Registry-Auth: no docker login, no load.
    assert pulled.via == "daemon-pull", stream.getvalue()
    assert pulled.target is None, "no bake target was asked for (and the daemon's pull token stays out of results)"
    by_daemon = [
        line
        for line in server.log().splitlines()
        if f"path=/v2/{conn.project}/blobs/{image.layers[0].digest}" in line and "docker/" in line
    ]
    assert by_daemon, "the daemon (User-Agent docker/...) fetched the layers itself"
    assert "/images/load" not in stream.getvalue() and "streaming the image" not in stream.getvalue()
    lines = stream.getvalue().splitlines()
    assert sum(line.split()[0] == "downloaded" for line in lines if line.startswith("  ")) == 2, lines
    assert not any("uploaded" in line for line in lines), lines
    with DockerEngine(dockerd) as engine:
        inspected = engine.inspect_image("cargohold-test/app:ci")
    assert inspected is not None, "the image must be in the daemon under the requested tag"
    assert inspected["Id"] == str(image.config.digest)
    assert inspected["RootFS"]["Layers"] == [str(d.digest) for d in image.layers]  # uncompressed: digest == diff_id

    again = save_image(conn, "docker-daemon:cargohold-test/app:ci", docker_host=dockerd)
    _, digest = skopeo_raw(f"docker://{again.reference}", creds=f"x-token:{server.admin_token}")
    assert str(digest) == again.digest
    assert again.uploaded_size == 0, "the daemon's export has the same layers: nothing new to upload"


def test_pull_falls_back_to_a_load_when_the_daemon_cannot_reach_cargohold(conn: Connection, tmp_path: Path) -> None:
    """A daemon in its own network namespace is told to pull from 127.0.0.1 (allowed by its configuration) and
    fails on the network: the image is streamed into it instead, verified, and the log says so once."""
    image = write_sample_image(tmp_path / "img", layers=2, layer_size=64 << 10, seed=22, ref="latest")
    saved = save_image(conn, f"oci:{tmp_path / 'img'}")
    stream = io.StringIO()
    with private_dockerd(own_network=True) as isolated:
        pulled = pull_image(
            conn, saved.build_id, tags=["cargohold-test/far:ci"], docker_host=isolated, progress=PlainProgress(stream)
        )
        with DockerEngine(isolated) as engine:
            inspected = engine.inspect_image("cargohold-test/far:ci")
    assert pulled.via == "load" and pulled.digest == str(image.manifest.digest)
    assert inspected is not None and inspected["Id"] == str(image.config.digest)
    said = [line for line in stream.getvalue().splitlines() if "cannot pull from Cargohold" in line]
    assert len(said) == 1 and "connection refused" in said[0], stream.getvalue()
    assert not any(": done, 0 B" in line for line in stream.getvalue().splitlines()), stream.getvalue()


def test_registry_reach_follows_the_daemons_insecure_registries(dockerd: str) -> None:
    """The decision uses the real daemon's RegistryConfig (nothing is contacted: IP literals are not looked up)."""
    with DockerEngine(dockerd) as engine:
        config = engine.info()["RegistryConfig"]
    assert registry_reach("http://127.0.0.1:5000", config) is None  # 127.0.0.0/8 is insecure by default
    assert registry_reach("https://192.0.2.10", config) is None
    assert "not one of the Docker daemon's insecure registries" in (
        registry_reach("http://192.0.2.10:5000", config) or ""
    )
    listed = {**config, "IndexConfigs": {**config.get("IndexConfigs", {}), "192.0.2.10:5000": {"Secure": False}}}
    assert registry_reach("http://192.0.2.10:5000", listed) is None
    assert "path" in (registry_reach("http://127.0.0.1:5000/cargohold", config) or "")


def test_docker_build_and_save(server: InProcessServer, conn: Connection, dockerd: str, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "hello.txt").write_text("hello from cargohold\n")
    (context / "Dockerfile").write_text("FROM scratch\nARG GREETING\nLABEL greeting=$GREETING\nCOPY hello.txt /\n")
    options = BuildOptions(
        context=str(context), tags=["cargohold-test/built:1"], build_args=["GREETING=hi"], labels=["org.example.test=1"]
    )
    result = build_and_save(conn, options, builder="docker", docker_host=dockerd, metadata_file=tmp_path / "meta.json")
    assert result.builder == "docker" and result.save is not None
    assert result.build_id == result.save.build_id
    with DockerEngine(dockerd) as engine:
        inspected = engine.inspect_image("cargohold-test/built:1")
    assert inspected is not None and inspected["Config"]["Labels"]["greeting"] == "hi"
    assert (
        skopeo_raw(f"docker://{result.reference}", creds=f"x-token:{server.admin_token}")[1].__str__() == result.digest
    )


def _require_buildx() -> None:
    probe = subprocess.run(["docker", "buildx", "version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        message = "needs the docker buildx plugin (scripts/bootstrap.sh installs Debian's docker-buildx)"
        if os.environ.get("CARGOHOLD_REQUIRE_TOOLS") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def test_buildx_build_and_save(server: InProcessServer, conn: Connection, dockerd: str, tmp_path: Path) -> None:
    """buildx on its default ``docker`` driver with the classic image store (what Debian's dockerd runs)
    refuses OCI export; the build goes into the daemon and is saved from there, and --load is then a no-op."""
    _require_buildx()
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "hello.txt").write_text("hello from buildx\n")
    (context / "Dockerfile").write_text("FROM scratch\nARG GREETING\nLABEL greeting=$GREETING\nCOPY hello.txt /\n")
    options = BuildOptions(context=str(context), tags=["cargohold-test/buildx:1"], build_args=["GREETING=bx"])
    # "default" is the buildx builder *instance* of the docker context (what build-push-action calls builder).
    result = build_and_save(
        conn, options, builder="default", docker_host=dockerd, load=True, metadata_file=tmp_path / "meta.json"
    )
    assert result.builder == "docker-buildx" and result.save is not None
    assert result.imageid and result.imageid.startswith("sha256:")
    assert result.loaded == [], "the image was built into the daemon; nothing to load"
    with DockerEngine(dockerd) as engine:
        inspected = engine.inspect_image("cargohold-test/buildx:1")
    assert inspected is not None and inspected["Id"] == result.imageid
    assert inspected["Config"]["Labels"]["greeting"] == "bx"
    _, digest = skopeo_raw(f"docker://{result.reference}", creds=f"x-token:{server.admin_token}")
    assert str(digest) == result.digest
    assert json.loads((tmp_path / "meta.json").read_text())["containerimage.digest"] == result.digest


def test_buildx_multi_platform_on_the_docker_driver_explains(
    server: InProcessServer, conn: Connection, dockerd: str, tmp_path: Path
) -> None:
    """Several platforms need OCI export, which the docker driver lacks here: buildx's own reason is shown."""
    _require_buildx()
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\nLABEL x=1\n")
    options = BuildOptions(context=str(context), platforms=["linux/amd64", "linux/386"])
    with pytest.raises(ImageError, match=r"docker buildx build failed .*(driver|exporter)"):
        build_and_save(conn, options, builder="docker-buildx", docker_host=dockerd)
    with pytest.raises(ImageError, match="docker buildx has no builder named 'nosuch'"):
        build_and_save(conn, options, builder="nosuch", docker_host=dockerd)


def test_buildah_build_and_save(
    server: InProcessServer, conn: Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed (apt-get install buildah)")
    storage = tmp_path / "containers-storage.conf"
    storage.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp_path / "graph"}"\nrunroot = "{tmp_path / "run"}"\n'
    )
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(storage))
    monkeypatch.setenv("BUILDAH_ISOLATION", "chroot")
    monkeypatch.setenv("STORAGE_DRIVER", "vfs")
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "hello.txt").write_text("hello from buildah\n")
    (context / "Containerfile").write_text("FROM scratch\nCOPY hello.txt /\n")
    options = BuildOptions(context=str(context), file=str(context / "Containerfile"))
    result = build_and_save(conn, options, builder="buildah", save_tags=["buildah"])
    assert result.builder == "buildah" and result.save is not None
    assert result.save.save_tags == ["buildah"]
    assert str(skopeo_raw(f"docker://{result.reference}", creds=f"x-token:{server.admin_token}")[1]) == result.digest
    assert os.path.isdir(tmp_path / "graph"), "buildah used the private store"
