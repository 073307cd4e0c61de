"""cargohold push: Cargohold -> the CNCF reference registry (open, and htpasswd via a Docker config), and a
destination that answers garbage."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cargohold.client.settings import Connection
from cargohold.images import ImageError, push_image, save_image
from cargohold.sample import SampleIndex
from protocol_helpers import push_blob
from refregistry import RefRegistry, refregistry_auth_fixture, refregistry_fixture
from servers import InProcessServer
from test_images_support import conn_fixture, multiarch_fixture, skopeo_raw

__all__ = ["conn_fixture", "multiarch_fixture", "refregistry_auth_fixture", "refregistry_fixture"]


def test_push_whole_index_to_reference_registry(
    server: InProcessServer,
    conn: Connection,
    multiarch: tuple[Path, SampleIndex],
    refregistry: RefRegistry,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty-docker-config"))  # anonymous, whatever the host has
    layout_dir, sample = multiarch
    saved = save_image(conn, f"oci:{layout_dir}:v1")
    tags = [f"{refregistry.host}/team/app:1.0", f"{refregistry.host}/team/app:latest", f"{refregistry.host}/mirror:1"]
    result = push_image(conn, saved.build_id, tags)
    assert result.digests == {tag: str(sample.index.digest) for tag in tags}
    for tag in tags:
        raw, digest = skopeo_raw(f"docker://{tag}")
        assert digest == sample.index.digest
    listed = {m["digest"] for m in json.loads(raw)["manifests"]}
    assert listed == {str(i.manifest.digest) for i in sample.images} | {str(a.digest) for a in sample.attestations}
    for child in listed:
        _, digest = skopeo_raw(f"docker://{refregistry.host}/team/app@{child}")
        assert str(digest) == child
    by_repo = {item.tag: item for item in result.results}
    assert by_repo[tags[0]].uploaded == by_repo[tags[1]].uploaded > 0, "tags of one repository share one copy"

    # A second push of the same build: every blob is already there.
    again = push_image(conn, saved.build_id, [tags[0]])
    assert again.results[0].uploaded == 0 and again.results[0].skipped > 0

    # --platform pushes just one image manifest.
    arm = next(image for image in sample.images if image.platform == ("linux", "arm64"))
    single = push_image(conn, saved.build_id, [f"{refregistry.host}/team/app:arm"], platform="linux/arm64")
    assert single.digest == str(arm.manifest.digest)
    assert skopeo_raw(f"docker://{refregistry.host}/team/app:arm")[1] == arm.manifest.digest


def test_push_with_docker_config_credentials(
    server: InProcessServer,
    conn: Connection,
    multiarch: tuple[Path, SampleIndex],
    refregistry_auth: RefRegistry,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    layout_dir, sample = multiarch
    saved = save_image(conn, f"oci:{layout_dir}:v1")
    tag = f"{refregistry_auth.host}/secure/app:1"
    for name in ("USERNAME", "PASSWORD", "AUTH"):
        monkeypatch.delenv(f"CARGOHOLD_PUSH_REGISTRY_{name}", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    (tmp_path / "docker").mkdir()
    with pytest.raises(ImageError):  # no credentials yet: the registry refuses, and the error says where
        push_image(conn, saved.build_id, [tag])
    auth = base64.b64encode(b"ci:s3cret-pass").decode()
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {refregistry_auth.host: {"auth": auth}}}))
    result = push_image(conn, saved.build_id, [tag])
    assert result.digests[tag] == str(sample.index.digest)
    assert skopeo_raw(f"docker://{tag}", creds="ci:s3cret-pass")[1] == sample.index.digest


class _Garbage(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = b"\x00\xffthis is not a registry\x00"
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _answer

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def garbage_registry() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_push_to_garbage_destination_fails_clearly(
    server: InProcessServer,
    conn: Connection,
    multiarch: tuple[Path, SampleIndex],
    garbage_registry: str,
) -> None:
    layout_dir, _ = multiarch
    saved = save_image(conn, f"oci:{layout_dir}:v1")
    with pytest.raises(ImageError) as caught:
        push_image(conn, saved.build_id, [f"{garbage_registry}/x/y:1"])
    message = str(caught.value)
    assert f"pushing to {garbage_registry}/x/y:1 failed" in message
    assert "sha256:" in message, "the error names the blob or manifest that failed"
    assert "\n" not in message


def test_referrers_of_a_build_travel_with_it(
    server: InProcessServer,
    conn: Connection,
    multiarch: tuple[Path, SampleIndex],
    refregistry: RefRegistry,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A signature pushed with ``subject`` = the build's index is readable with the build's pull token and is
    copied by ``cargohold push`` (the reference registry has no referrers API: the tag fallback is used)."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty-docker-config"))
    layout_dir, sample = multiarch
    saved = save_image(conn, f"oci:{layout_dir}:v1")
    project = str(conn.project)
    signature = b'{"signed": "yes"}'
    with server.client() as admin:
        sig_digest = push_blob(admin, project, signature)
        empty_digest = push_blob(admin, project, b"{}")
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.example.signature",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty_digest, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": sig_digest, "size": len(signature)}],
            "subject": {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": str(sample.index.digest),
                "size": sample.index.size,
            },
        }
        body = json.dumps(manifest).encode()
        referrer = "sha256:" + hashlib.sha256(body).hexdigest()
        put = admin.put(
            f"/v2/{project}/manifests/{referrer}",
            content=body,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert put.status_code == 201, put.text
        pull_token = admin.get("/api/v1/pull-info", params={"ref": saved.build_id}).json()["token"]

    with server.client(token=pull_token) as scoped:
        listed = scoped.get(f"/v2/{project}/referrers/{sample.index.digest}")
        assert listed.status_code == 200, listed.text
        assert [entry["digest"] for entry in listed.json()["manifests"]] == [referrer]
        assert scoped.get(f"/v2/{project}/manifests/{referrer}").status_code == 200
        assert scoped.get(f"/v2/{project}/blobs/{sig_digest}").status_code == 200

    tag = f"{refregistry.host}/signed/app:1"
    push_image(conn, saved.build_id, [tag])
    fallback = f"docker://{refregistry.host}/signed/app:sha256-{sample.index.digest.hex}"
    raw, _ = skopeo_raw(fallback)
    assert [entry["digest"] for entry in json.loads(raw)["manifests"]] == [referrer]
    assert str(skopeo_raw(f"docker://{refregistry.host}/signed/app@{referrer}")[1]) == referrer
