"""Crash safety: a registry killed with SIGKILL mid-upload must never expose a partial blob.

CI runners get pre-empted and registries get OOM-killed; what must hold afterwards is that a digest the
registry answers for is exactly the content that hashes to it. So we stream a large upload, ``kill -9``
the server in the middle of it, restart on the same data directory and check: the blob is unknown, a
retried upload completes, the content served hashes correctly, and every file in the blob store on disk
hashes to its own name.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

from fixtures_images import TOKEN_USER, require_tools
from refregistry import RefRegistry
from servers import ServerProcess

MiB = 1 << 20
TOTAL_CHUNKS = 64  # 64 MiB: large enough that the kill lands while bytes are still flowing.
KILL_AFTER = 20
REPO = "crash/big"
_BLOB_NAME = re.compile(r"^(?:[0-9a-f]{64}|[0-9a-f]{128})$")

pytestmark = pytest.mark.slow

Registry = ServerProcess | RefRegistry
"""A real process: the point is ``kill -9``."""


def _chunk(i: int, block: bytes) -> bytes:
    """Chunk ``i`` of the test blob: a shared random block made unique by a per-chunk prefix."""
    return hashlib.sha256(i.to_bytes(8, "big")).digest() + block[32:]


def _blob_digest(block: bytes) -> str:
    hasher = hashlib.sha256()
    for i in range(TOTAL_CHUNKS):
        hasher.update(_chunk(i, block))
    return f"sha256:{hasher.hexdigest()}"


def _body(block: bytes, on_chunk: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """Stream the blob without ever holding more than one chunk; ``on_chunk`` runs before each one."""
    for i in range(TOTAL_CHUNKS):
        if on_chunk is not None:
            on_chunk(i)
        yield _chunk(i, block)


def _new_registry(data_dir: Path, token: str) -> Registry:
    if os.environ.get("CARGOHOLD_TEST_REGISTRY") == "docker-registry":
        require_tools("docker-registry")
        return RefRegistry(data_dir)
    return ServerProcess(data_dir=data_dir, admin_token=token)


def _client(registry: Registry, token: str) -> httpx.Client:
    return httpx.Client(base_url=registry.url, auth=(TOKEN_USER, token), timeout=60)


def _start_upload(http: httpx.Client) -> str:
    resp = http.post(f"/v2/{REPO}/blobs/uploads/")
    assert resp.status_code == 202, f"POST upload: {resp.status_code} {resp.text}"
    return urljoin(str(http.base_url) + "/", resp.headers["Location"])


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


@pytest.mark.parametrize("mode", ["streamed", "chunked"])
def test_kill_9_mid_upload_leaves_no_partial_blob(tmp_path: Path, mode: str) -> None:
    token = os.urandom(16).hex()
    data_dir = tmp_path / "data"
    block = random.Random(1234).randbytes(MiB)
    digest = _blob_digest(block)

    first = _new_registry(data_dir, token).start()
    try:
        killed: list[int] = []

        def kill_midway(i: int) -> None:
            if i == KILL_AFTER and not killed:
                first.stop(kill=True)
                killed.append(i)

        with _client(first, token) as http:
            location = _start_upload(http)
            with pytest.raises(httpx.TransportError):
                if mode == "streamed":
                    http.patch(
                        location,
                        content=_body(block, kill_midway),
                        headers={"Content-Type": "application/octet-stream"},
                    )
                else:
                    # One PATCH per MiB with Content-Range, as chunked clients do; the server dies
                    # between two of them, after having accepted KILL_AFTER chunks.
                    offset = 0
                    for i, chunk in enumerate(_body(block)):
                        kill_midway(i)
                        resp = http.patch(
                            location,
                            content=chunk,
                            headers={
                                "Content-Type": "application/octet-stream",
                                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                            },
                        )
                        assert resp.status_code == 202, f"PATCH chunk {i}: {resp.status_code} {resp.text}"
                        location = urljoin(location, resp.headers["Location"])
                        offset += len(chunk)
        assert killed == [KILL_AFTER], "the server was never killed: the upload finished too early"
    finally:
        first.stop(kill=True)

    second = _new_registry(data_dir, token).start()
    try:
        with _client(second, token) as http:
            resp = http.head(f"/v2/{REPO}/blobs/{digest}")
            assert resp.status_code == 404, f"partial blob visible after crash: HEAD -> {resp.status_code}"

            location = _start_upload(http)
            resp = http.patch(location, content=_body(block), headers={"Content-Type": "application/octet-stream"})
            assert resp.status_code == 202, f"PATCH: {resp.status_code} {resp.text}"
            location = urljoin(location, resp.headers["Location"])
            resp = http.put(_with_digest(location, digest))
            assert resp.status_code == 201, f"PUT ?digest: {resp.status_code} {resp.text}"

            resp = http.head(f"/v2/{REPO}/blobs/{digest}")
            assert resp.status_code == 200
            assert int(resp.headers["Content-Length"]) == TOTAL_CHUNKS * MiB
            hasher = hashlib.sha256()
            size = 0
            with http.stream("GET", f"/v2/{REPO}/blobs/{digest}") as stream:
                assert stream.status_code == 200
                for piece in stream.iter_bytes(MiB):
                    hasher.update(piece)
                    size += len(piece)
            assert (f"sha256:{hasher.hexdigest()}", size) == (digest, TOTAL_CHUNKS * MiB)
    finally:
        second.stop()

    if isinstance(second, ServerProcess):
        _assert_blob_store_is_content_addressed(data_dir / "blobs", expect=digest)


def _assert_blob_store_is_content_addressed(blobs: Path, expect: str) -> None:
    """Every regular file under ``blobs/`` is named by (and ends in) the hex digest of its own bytes."""
    found: list[str] = []
    for path in sorted(p for p in blobs.rglob("*") if p.is_file()):
        assert _BLOB_NAME.match(path.name), f"non-blob file in the blob store (a leftover partial?): {path}"
        algorithm = "sha256" if len(path.name) == 64 else "sha512"
        hasher = hashlib.new(algorithm)
        with open(path, "rb") as fh:
            while piece := fh.read(MiB):
                hasher.update(piece)
        assert hasher.hexdigest() == path.name, f"{path} does not hash to its name"
        found.append(f"{algorithm}:{path.name}")
    assert expect in found, f"the completed blob is not in {blobs}: {found}"
