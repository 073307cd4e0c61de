"""RegistryClient against the CNCF reference registry: blobs, manifests, tags, referrers fallback."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import httpx
import pytest

from cargohold.client.errors import DigestMismatchError, RegistryError, parse_retry_after
from cargohold.client.registry import Manifest, RegistryClient, bytes_source, file_source, referrers_tag
from cargohold.client.retry import RetryPolicy
from cargohold.oci import mediatypes
from cargohold.oci.digest import Digest
from refregistry import RefRegistry, refregistry_fixture  # noqa: F401 - fixtures

pytestmark = pytest.mark.tools
FAST = RetryPolicy(attempts=4, initial=0.001, maximum=0.01)


@pytest.fixture
def client(refregistry: RefRegistry) -> RegistryClient:
    with RegistryClient(refregistry.host, retry=FAST) as c:
        yield c  # type: ignore[misc]


def push_image(client: RegistryClient, repo: str, tag: str | None, payload: bytes, **extra: object) -> Manifest:
    """A tiny image (config + one layer) pushed with the client itself."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    config_desc = client.push_blob_bytes(repo, config.encode())
    layer_desc = client.push_blob_bytes(repo, payload)
    body = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": str(config_desc.digest), "size": config_desc.size},
        "layers": [{"mediaType": mediatypes.OCI_LAYER_TAR, "digest": str(layer_desc.digest), "size": layer_desc.size}],
        **extra,
    }
    manifest = Manifest.from_bytes(json.dumps(body).encode(), mediatypes.OCI_MANIFEST)
    client.put_manifest(repo, tag or manifest.digest, manifest)
    return manifest


def test_multi_mb_blob_round_trip_from_file(client: RegistryClient, tmp_path: Path) -> None:
    src = tmp_path / "blob"
    size = (12 << 20) + 12345
    with open(src, "wb") as handle:
        for _ in range(size >> 20):
            handle.write(os.urandom(1 << 20))
        handle.write(os.urandom(size & ((1 << 20) - 1)))
    digest = Digest("sha256", hashlib.sha256(src.read_bytes()).hexdigest())
    sent: list[int] = []
    assert client.blob_exists("big/blob", digest) is None
    assert client.upload_blob("big/blob", digest, size, file_source(src), progress=sent.append) == "uploaded"
    assert sum(sent) == size
    assert client.blob_exists("big/blob", digest) == size

    received: list[int] = []
    out = tmp_path / "out"
    assert client.download_blob_to_file("big/blob", digest, out, size=size, progress=received.append) == size
    assert sum(received) == size
    assert out.read_bytes() == src.read_bytes()


def test_upload_with_wrong_digest_is_rejected(client: RegistryClient) -> None:
    data = os.urandom(2 << 20)
    wrong = Digest.of(b"something else")
    with pytest.raises(RegistryError) as info:
        client.upload_blob("bad/digest", wrong, len(data), bytes_source(data))
    assert info.value.status == 400 and "DIGEST_INVALID" in info.value.codes
    assert f"pushing blob {wrong.algorithm}:{wrong.hex[:12]}… to {client.host}/bad/digest failed: 400" in str(
        info.value
    )
    assert client.blob_exists("bad/digest", wrong) is None


def test_download_verifies_digest(client: RegistryClient, tmp_path: Path) -> None:
    data = os.urandom(1 << 16)
    client.push_blob_bytes("verify/me", data)
    # Ask for the blob under a digest it does not have: the registry 404s, nothing is written.
    missing = Digest.of(b"nope")
    out = tmp_path / "x"
    with pytest.raises(RegistryError) as info:
        client.download_blob_to_file("verify/me", missing, out)
    assert info.value.status == 404 and "BLOB_UNKNOWN" in info.value.codes and not out.exists()
    # Size mismatch is caught even when the digest exists.
    with pytest.raises(DigestMismatchError):
        client.download_blob("verify/me", Digest.of(data), lambda _: None, size=10)


def test_cross_repo_mount(client: RegistryClient) -> None:
    data = os.urandom(3 << 20)
    digest = Digest.of(data)
    client.upload_blob("mount/src", digest, len(data), bytes_source(data))
    assert client.upload_blob("mount/dst", digest, len(data), bytes_source(data), mount_from="mount/src") == "mounted"
    assert client.blob_exists("mount/dst", digest) == len(data)
    # Mount from a repo that lacks the blob: registry answers 202, we continue with that session.
    other = os.urandom(3 << 20)
    od = Digest.of(other)
    assert client.upload_blob("mount/dst2", od, len(other), bytes_source(other), mount_from="mount/src") == "uploaded"
    assert client.blob_exists("mount/dst2", od) == len(other)


def test_manifest_put_get_head_and_tags(client: RegistryClient) -> None:
    manifest = push_image(client, "app/web", "v1", b"layer-one")
    got = client.get_manifest("app/web", "v1")
    assert got == manifest
    assert client.get_manifest("app/web", manifest.digest).data == manifest.data
    head = client.head_manifest("app/web", "v1")
    assert head is not None and head.digest == manifest.digest and head.size == len(manifest.data)
    assert client.head_manifest("app/web", "nope") is None
    for i in range(7):
        client.put_manifest("app/web", f"t{i}", manifest)
    tags = client.list_tags("app/web", page_size=3)  # forces Link pagination
    assert sorted(tags) == sorted(["v1", *[f"t{i}" for i in range(7)]])
    with pytest.raises(RegistryError) as info:
        client.get_manifest("app/web", "missing")
    assert info.value.status == 404 and "MANIFEST_UNKNOWN" in info.value.codes


def test_referrers_fall_back_to_tag_schema(client: RegistryClient) -> None:
    subject = push_image(client, "ref/app", "v1", b"base")
    # The 2.8 registry has no referrers API: with no fallback tag there are simply no referrers.
    assert client.referrers("ref/app", subject.digest) == []
    sig = push_image(
        client,
        "ref/app",
        None,
        b"signature",
        artifactType="application/vnd.test.sig",
        subject=subject.descriptor().to_json(),
    )
    index = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_INDEX,
        "manifests": [{**sig.descriptor().to_json(), "artifactType": "application/vnd.test.sig"}],
    }
    data = json.dumps(index).encode()
    client.put_manifest("ref/app", referrers_tag(subject.digest), Manifest(data, mediatypes.OCI_INDEX, Digest.of(data)))
    found = client.referrers("ref/app", subject.digest)
    assert [d.digest for d in found] == [sig.digest]
    assert client.referrers("ref/app", subject.digest, artifact_type="application/other") == []


def test_manifest_digest_mismatch_by_digest_is_refused() -> None:
    real = b'{"schemaVersion":2}'
    claimed = Digest.of(b"other")

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=real, headers={"Content-Type": mediatypes.OCI_MANIFEST})

    with (
        RegistryClient("http://reg.test", retry=FAST, transport=httpx.MockTransport(handle)) as c,
        pytest.raises(DigestMismatchError),
    ):
        c.get_manifest("x", claimed)


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("garbage") is None
    assert parse_retry_after(None) is None


def test_clients_share_one_verifying_tls_context() -> None:
    """The CA bundle is loaded once per process, not once per client; verify=False stays unverified."""
    import ssl

    from cargohold.client.control import ControlClient

    registry, control = RegistryClient("https://r.example"), ControlClient("https://r.example", "token")
    insecure = RegistryClient("https://r.example", verify=False)
    try:
        contexts = [c._http._transport._pool._ssl_context for c in (registry, control, insecure)]  # type: ignore[attr-defined]
    finally:
        for client in (registry, control, insecure):
            client.close()
    assert contexts[0] is contexts[1] and contexts[0].verify_mode == ssl.CERT_REQUIRED
    assert contexts[2].verify_mode == ssl.CERT_NONE
