"""Wire-level helpers for the OCI distribution protocol tests.

Everything here speaks plain HTTP through httpx (or http.client for paths httpx would normalise) and
computes digests with hashlib, so the tests pin the protocol rather than the server's own code.

Each test module shares the session's in-process registry (``server = servers.shared_server_fixture()``) and
uses fresh repository names (:func:`new_repo`) for isolation; ``no_tracebacks = traceback_guard_fixture()``
fails any test after which the server log gained a Python traceback.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from http.client import HTTPConnection
from typing import Any
from urllib.parse import urljoin

import httpx

from servers import Server

# --- media types (spelled out here on purpose: the tests must not share constants with the server) ---
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
OCTET_STREAM = "application/octet-stream"
ALL_MANIFEST_TYPES = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])

EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

ALGORITHMS = ("sha256", "sha512")

OCI_ERROR_CODES = frozenset(
    {
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
        "TOOMANYREQUESTS",
    }
)
"""The error codes the distribution spec (v1.1, "Error Codes") allows in ``errors[].code``."""

MANIFEST_SIZE_LIMIT = 4 * 1024 * 1024
RANGE_RE = re.compile(r"^0-(\d+)$")


# --- data -----------------------------------------------------------------------------------------


def random_blob(size: int = 2048) -> bytes:
    """Unique random bytes (never collide with another test's blob)."""
    return os.urandom(size)


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def new_repo(prefix: str = "proto") -> str:
    """A fresh, valid, two-component repository name."""
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def descriptor(media_type: str, data: bytes, algorithm: str = "sha256", **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data, algorithm), "size": len(data), **extra}


def to_bytes(obj: Any, pretty: bool = True) -> bytes:
    """Serialise a manifest. ``pretty`` uses an unusual layout so re-serialising would change the digest."""
    if pretty:
        return (json.dumps(obj, indent=3) + "\n").encode()
    return json.dumps(obj, separators=(",", ":")).encode()


def image_manifest(
    config: dict[str, Any],
    layers: list[dict[str, Any]],
    *,
    media_type: str = OCI_MANIFEST,
    artifact_type: str | None = None,
    subject: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
    if artifact_type is not None:
        manifest["artifactType"] = artifact_type
    manifest["config"] = config
    manifest["layers"] = layers
    if subject is not None:
        manifest["subject"] = subject
    if annotations is not None:
        manifest["annotations"] = annotations
    return manifest


def index_manifest(
    manifests: list[dict[str, Any]],
    *,
    media_type: str = OCI_INDEX,
    artifact_type: str | None = None,
    subject: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
    if artifact_type is not None:
        index["artifactType"] = artifact_type
    index["manifests"] = manifests
    if subject is not None:
        index["subject"] = subject
    if annotations is not None:
        index["annotations"] = annotations
    return index


# --- HTTP -----------------------------------------------------------------------------------------


def describe(resp: httpx.Response) -> str:
    body = "" if resp.request.method == "HEAD" else resp.text[:500]
    return f"{resp.request.method} {resp.request.url} -> {resp.status_code} {dict(resp.headers)} {body!r}"


def registry_headers(resp: httpx.Response) -> httpx.Headers:
    """The registry's own answer's headers: with an object store, a blob GET is a 307 to the bucket (which
    cannot send ``Docker-Content-Digest``), followed by the client; its headers are the redirect's."""
    return resp.history[0].headers if resp.history else resp.headers


def resolve(http: httpx.Client, location: str | None) -> httpx.URL:
    """Resolve a (relative or absolute) Location header against the registry's base URL."""
    assert location, "response has no Location header"
    return httpx.URL(urljoin(str(http.base_url).rstrip("/") + "/", location))


def with_params(url: httpx.URL, **params: str) -> httpx.URL:
    """``url`` with extra query parameters, keeping whatever opaque state the server put in it."""
    return url.copy_merge_params(params)


def assert_error(
    resp: httpx.Response,
    status: int | Collection[int],
    codes: str | Collection[str] | None = None,
) -> str:
    """Assert an error status and (except for HEAD) an OCI JSON error body; return errors[0].code."""
    statuses = {status} if isinstance(status, int) else set(status)
    assert resp.status_code in statuses, f"expected {sorted(statuses)}: {describe(resp)}"
    if resp.request.method == "HEAD":
        return ""
    content_type = resp.headers.get("content-type", "")
    assert content_type.split(";")[0].strip() == "application/json", f"error is not JSON: {describe(resp)}"
    body = resp.json()
    assert isinstance(body, dict), describe(resp)
    errors = body.get("errors")
    assert isinstance(errors, list), f"no errors list: {describe(resp)}"
    assert errors, f"empty errors list: {describe(resp)}"
    for error in errors:
        assert isinstance(error, dict), describe(resp)
        assert error.get("code") in OCI_ERROR_CODES, f"code not in the OCI set: {describe(resp)}"
        assert isinstance(error.get("message", ""), str), describe(resp)
    code: str = errors[0]["code"]
    if codes is not None:
        wanted = {codes} if isinstance(codes, str) else set(codes)
        assert code in wanted, f"expected code in {sorted(wanted)}: {describe(resp)}"
    return code


def upload_range_end(resp: httpx.Response) -> int:
    """The inclusive end offset of an upload's ``Range: 0-<end>`` header."""
    value = resp.headers.get("range")
    assert value is not None, f"no Range header: {describe(resp)}"
    match = RANGE_RE.match(value)
    assert match, f"Range header not of the form 0-<end>: {describe(resp)}"
    return int(match.group(1))


def start_upload(http: httpx.Client, repo: str) -> httpx.URL:
    resp = http.post(f"/v2/{repo}/blobs/uploads/")
    assert resp.status_code == 202, describe(resp)
    return resolve(http, resp.headers.get("location"))


def put_upload(http: httpx.Client, location: httpx.URL, digest: str, data: bytes = b"") -> httpx.Response:
    return http.put(
        with_params(location, digest=digest),
        content=data,
        headers={"Content-Type": OCTET_STREAM},
    )


def patch_chunk(http: httpx.Client, location: httpx.URL, chunk: bytes, start: int) -> httpx.Response:
    return http.patch(
        location,
        content=chunk,
        headers={"Content-Type": OCTET_STREAM, "Content-Range": f"{start}-{start + len(chunk) - 1}"},
    )


def push_blob(http: httpx.Client, repo: str, data: bytes, algorithm: str = "sha256") -> str:
    """POST + PUT (the most common push flow); returns the digest."""
    digest = digest_of(data, algorithm)
    resp = put_upload(http, start_upload(http, repo), digest, data)
    assert resp.status_code == 201, describe(resp)
    return digest


def blob_exists(http: httpx.Client, repo: str, digest: str) -> bool:
    resp = http.head(f"/v2/{repo}/blobs/{digest}")
    assert resp.status_code in (200, 404), describe(resp)
    return resp.status_code == 200


def put_manifest(http: httpx.Client, repo: str, reference: str, body: bytes, media_type: str | None) -> httpx.Response:
    headers = {"Content-Type": media_type} if media_type else {}
    return http.put(f"/v2/{repo}/manifests/{reference}", content=body, headers=headers)


def push_manifest(http: httpx.Client, repo: str, reference: str, body: bytes, media_type: str) -> httpx.Response:
    resp = put_manifest(http, repo, reference, body, media_type)
    assert resp.status_code == 201, describe(resp)
    return resp


def get_manifest(http: httpx.Client, repo: str, reference: str, accept: str = ALL_MANIFEST_TYPES) -> httpx.Response:
    return http.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": accept})


@dataclass
class Pushed:
    """A manifest that is in the registry: its exact bytes, digest, media type and descriptor."""

    body: bytes
    media_type: str
    digest: str
    manifest: dict[str, Any]
    blobs: dict[str, bytes] = field(default_factory=dict)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.body), **extra}


def push_image(
    http: httpx.Client,
    repo: str,
    reference: str | None = None,
    *,
    media_type: str = OCI_MANIFEST,
    layer_count: int = 2,
    layer_size: int = 1024,
    algorithm: str = "sha256",
    config_media_type: str | None = None,
    config_data: bytes | None = None,
    artifact_type: str | None = None,
    subject: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> Pushed:
    """Push config + layers, then the image manifest (by ``reference``, or by its digest when None)."""
    docker = media_type == DOCKER_MANIFEST
    if config_data is None:
        config_data = to_bytes(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": []},
                "nonce": uuid.uuid4().hex,
            }
        )
    if config_media_type is None:
        config_media_type = DOCKER_CONFIG if docker else OCI_CONFIG
    blobs = {push_blob(http, repo, config_data, algorithm): config_data}
    layers = []
    for _ in range(layer_count):
        data = random_blob(layer_size)
        blobs[push_blob(http, repo, data, algorithm)] = data
        layers.append(descriptor(DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP, data, algorithm))
    manifest = image_manifest(
        descriptor(config_media_type, config_data, algorithm),
        layers,
        media_type=media_type,
        artifact_type=artifact_type,
        subject=subject,
        annotations=annotations,
    )
    body = to_bytes(manifest)
    digest = digest_of(body, algorithm)
    push_manifest(http, repo, reference or digest, body, media_type)
    return Pushed(body, media_type, digest, manifest, blobs)


def push_index(
    http: httpx.Client,
    repo: str,
    reference: str | None = None,
    *,
    media_type: str = OCI_INDEX,
    children: int = 2,
    subject: dict[str, Any] | None = None,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
) -> tuple[Pushed, list[Pushed]]:
    """Push ``children`` image manifests by digest, then an index over them."""
    child_type = DOCKER_MANIFEST if media_type == DOCKER_LIST else OCI_MANIFEST
    pushed = [push_image(http, repo, media_type=child_type, layer_count=1) for _ in range(children)]
    platforms = [{"architecture": arch, "os": "linux"} for arch in ("amd64", "arm64", "s390x", "ppc64le")]
    entries = [child.descriptor(platform=platforms[i % len(platforms)]) for i, child in enumerate(pushed)]
    index = index_manifest(
        entries, media_type=media_type, subject=subject, artifact_type=artifact_type, annotations=annotations
    )
    body = to_bytes(index)
    digest = digest_of(body)
    push_manifest(http, repo, reference or digest, body, media_type)
    return Pushed(body, media_type, digest, index), pushed


def push_artifact(
    http: httpx.Client,
    repo: str,
    subject: dict[str, Any] | None,
    artifact_type: str | None = "application/vnd.example.sbom.v1+json",
    *,
    annotations: dict[str, str] | None = None,
    config_media_type: str = OCI_EMPTY,
    config_data: bytes = EMPTY_JSON,
    reference: str | None = None,
) -> Pushed:
    """Push an OCI artifact manifest (empty config unless told otherwise) with one small layer."""
    blobs = {push_blob(http, repo, config_data): config_data}
    payload = random_blob(256)
    blobs[push_blob(http, repo, payload)] = payload
    manifest = image_manifest(
        descriptor(config_media_type, config_data),
        [descriptor("application/vnd.example.payload", payload)],
        artifact_type=artifact_type,
        subject=subject,
        annotations=annotations,
    )
    body = to_bytes(manifest)
    digest = digest_of(body)
    push_manifest(http, repo, reference or digest, body, OCI_MANIFEST)
    return Pushed(body, OCI_MANIFEST, digest, manifest, blobs)


def raw_request(
    server: Server, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Send ``path`` byte-for-byte (no dot-segment or percent normalisation, unlike httpx)."""
    conn = HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        all_headers = {"Content-Length": str(len(body)), **(headers or {})}
        token = getattr(server, "admin_token", None)  # authenticate like Server.client() does
        if token:
            basic = base64.b64encode(f"x-token:{token}".encode()).decode()
            all_headers.setdefault("Authorization", f"Basic {basic}")
        for key, value in all_headers.items():
            conn.putheader(key, value)
        conn.endheaders(body or None)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def assert_raw_error(
    status: int, headers: dict[str, str], body: bytes, statuses: Collection[int], codes: Collection[str]
) -> str:
    detail = f"{status} {headers} {body[:300]!r}"
    assert status in statuses, f"expected {sorted(statuses)}: {detail}"
    assert headers.get("content-type", "").split(";")[0].strip() == "application/json", detail
    errors = json.loads(body)["errors"]
    assert errors, detail
    assert errors[0]["code"] in codes, f"expected code in {sorted(codes)}: {detail}"
    return str(errors[0]["code"])


def collect_pages(http: httpx.Client, first: str, key: str) -> tuple[list[str], list[str]]:
    """Follow ``Link: <...>; rel="next"`` from ``first``; return (all items, the Link values seen)."""
    items: list[str] = []
    links: list[str] = []
    url: str | httpx.URL = first
    for _ in range(100):
        resp = http.get(url)
        assert resp.status_code == 200, describe(resp)
        items.extend(resp.json().get(key) or [])
        link = resp.headers.get("link")
        if link is None:
            return items, links
        links.append(link)
        match = re.fullmatch(r'<([^>]+)>;\s*rel="next"', link.strip())
        assert match, f"malformed Link header {link!r}"
        url = resolve(http, match.group(1))
    raise AssertionError("pagination did not terminate within 100 pages")
