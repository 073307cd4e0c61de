"""The nginx reference config (deploy/nginx/cargohold.conf) in front of a real server, with TLS from a test
CA: skopeo and Docker push and pull through it, layers bigger than nginx's default body limit included, and
what clients are handed (token realm, upload locations) points at the proxy, not at Cargohold behind it.

The config file is used as shipped, with only its addresses and certificate paths replaced (each replacement
must match exactly once, so the test notices when the file changes shape).
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cargohold.oci.digest import Digest
from cargohold.sample import write_sample_image
from fixtures_images import require_tools
from nginx import private_nginx
from processes import free_port
from servers import ServerProcess
from tls_helpers import PrivateCA

pytestmark = [pytest.mark.slow, pytest.mark.tools]

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "deploy" / "nginx" / "cargohold.conf"
DOCKER_CERTS = Path("/etc/docker/certs.d")


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{REFERENCE.name} should contain {old!r} exactly once"
    return text.replace(old, new)


@pytest.fixture
def nginx_front(tmp_path: Path) -> Iterator[tuple[ServerProcess, int, PrivateCA]]:
    require_tools("nginx", "skopeo", "docker")
    ca = PrivateCA.create(tmp_path / "ca")
    cert, key, _ = ca.issue("front", ("127.0.0.1", "localhost"))
    port = free_port()
    server = ServerProcess(
        data_dir=tmp_path / "data",
        extra_args=["--public-url", f"https://127.0.0.1:{port}", "--trusted-proxy", "127.0.0.1/32"],
    ).start()
    config = REFERENCE.read_text()
    config = replace_once(config, "listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    config = replace_once(config, "listen 80;", f"listen 127.0.0.1:{free_port()};")
    config = replace_once(config, "server 127.0.0.1:5000;", f"server 127.0.0.1:{server.port};")
    config = replace_once(config, "/etc/nginx/tls/fullchain.pem", str(cert))
    config = replace_once(config, "/etc/nginx/tls/privkey.pem", str(key))
    (tmp_path / "cargohold.conf").write_text(config)
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    try:
        with private_nginx(
            tmp_path, f"  include {tmp_path}/cargohold.conf;\n", f"https://127.0.0.1:{port}/healthz", verify=context
        ):
            yield server, port, ca
    finally:
        server.stop()


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    result = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_skopeo_and_docker_through_nginx(
    nginx_front: tuple[ServerProcess, int, PrivateCA], session_dockerd: str, tmp_path: Path
) -> None:
    server, port, ca = nginx_front
    front = f"127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(ca.cert_path))

    with httpx.Client(base_url=f"https://{front}", verify=context, timeout=30) as http:
        challenge = http.get("/v2/", headers={"X-Request-ID": "through-nginx-1"})
        assert challenge.status_code == 401
        assert f'realm="https://{front}/token"' in challenge.headers["WWW-Authenticate"]
        assert challenge.headers["X-Request-ID"] == "through-nginx-1"
        http.auth = httpx.BasicAuth("x-token", server.admin_token)
        upload = http.post("/v2/front/app/blobs/uploads/")
        assert upload.status_code == 202 and upload.headers["Location"].startswith("/v2/front/app/blobs/uploads/")
        assert http.delete(upload.headers["Location"]).status_code == 204
    logged = [line for line in server.log().splitlines() if "id=through-nginx-1" in line]
    assert len(logged) == 1 and "remote=127.0.0.1" in logged[0], server.log()[-2000:]

    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(ca.cert_path, certs / "ca.crt")
    creds = f"x-token:{server.admin_token}"
    # A 3 MiB layer: nginx's default client_max_body_size (1 MiB) would refuse it with an HTML 413.
    image = write_sample_image(tmp_path / "img", layers=2, layer_size=3 << 20, seed=41, ref="latest")
    reference = f"docker://{front}/front/app:1"
    run("skopeo", "copy", "--preserve-digests", "--dest-cert-dir", str(certs), "--dest-creds", creds,
        f"oci:{tmp_path / 'img'}:latest", reference)  # fmt: skip
    raw = run("skopeo", "inspect", "--raw", "--cert-dir", str(certs), "--creds", creds, reference)
    assert Digest.of(raw.encode()) == image.manifest.digest
    run("skopeo", "copy", "--src-cert-dir", str(certs), "--src-creds", creds, reference, f"oci:{tmp_path / 'back'}:1")

    # Docker trusts the proxy's CA through /etc/docker/certs.d/<host:port>/ca.crt (removed afterwards).
    created_root = not DOCKER_CERTS.exists()
    host_certs = DOCKER_CERTS / front
    host_certs.mkdir(parents=True, exist_ok=True)
    shutil.copy(ca.cert_path, host_certs / "ca.crt")
    docker_env = {"DOCKER_HOST": session_dockerd, "DOCKER_CONFIG": str(tmp_path / "docker-config")}
    try:
        run("docker", "login", front, "-u", "x-token", "--password-stdin", env=docker_env, stdin=server.admin_token)
        run("docker", "pull", f"{front}/front/app:1", env=docker_env)
        run("docker", "tag", f"{front}/front/app:1", f"{front}/front/copy:2", env=docker_env)
        run("docker", "push", f"{front}/front/copy:2", env=docker_env)
    finally:
        shutil.rmtree(host_certs, ignore_errors=True)
        if created_root:
            shutil.rmtree(DOCKER_CERTS, ignore_errors=True)
    pushed = run("skopeo", "inspect", "--cert-dir", str(certs), "--creds", creds, f"docker://{front}/front/copy:2")
    assert str(image.layers[0].digest) in pushed or '"Layers"' in pushed
    access = (tmp_path / "nginx-access.log").read_text()
    assert "docker/" in access and '"PUT /v2/front/copy/manifests/2' in access
    assert " 413 " not in access
