"""An S3-compatible server for tests: ``moto`` in server mode on a free 127.0.0.1 port, one per session.

Why a ``python -m moto.server`` child process rather than ``moto.server.ThreadedMotoServer`` in the test
process: it starts in ~1 s instead of ~0.35 s (paid once per session), and buys isolation: its own
interpreter and GIL (a 64 MiB multipart upload took the same time either way on a loaded 2-core machine, so
this is about isolation, not speed), its memory goes away with it, its request log goes to a file instead of
the test output, a crash in it cannot take pytest down, and the client's CPU stays measurable on its own,
which bench/choices/s3_clients.py relies on.

Each test gets a fresh bucket and the standard AWS environment pointing at the server (endpoint, dummy keys,
region, no config files, no instance-metadata look-ups), so any AWS SDK in the test process or in a child
process (``cargohold serve``) resolves the server the way it would resolve a real store. After the test the
bucket is dropped with everything in it.

moto accepts any credentials and does not check request signatures unless told to; a test of presigned URL
expiry or tampering therefore needs a real check of its own, not moto's word.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from cargohold.storage.base import BlobStore
from processes import ManagedProcess, free_port
from tooling import tool_missing

REGION = "us-east-1"
ACCESS_KEY = "cargohold-test-key"
SECRET_KEY = "cargohold-test-secret"
AWS_VARIABLES_CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
"""Variables that would make an SDK look for credentials elsewhere (a profile, STS, a container endpoint)."""


def aws_environment(endpoint: str, config_dir: Path) -> dict[str, str]:
    """The AWS variables that point an SDK at ``endpoint`` with the test keys and nowhere else.

    ``config_dir`` receives empty AWS config and credentials files so a developer's ``~/.aws`` is never read.
    """
    config_dir.mkdir(parents=True, exist_ok=True)
    for name in ("config", "credentials"):
        (config_dir / name).touch()
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(config_dir / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(config_dir / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        # Plain HTTP to the loopback server: boto3 allows it for an explicit endpoint, obstore needs consent.
        "AWS_ALLOW_HTTP": "true",
    }


@dataclass
class S3Server(ManagedProcess):
    """One ``moto`` S3 server process bound to 127.0.0.1."""

    name = "moto S3 server"

    base_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> S3Server:
        self.launch(
            [sys.executable, "-m", "moto.server", "--host", "127.0.0.1", "--port", str(self.port)],
            log_path=self.base_dir / f"moto-{self.port}.log",
            health_url=f"{self.endpoint}/moto-api/",
            env={"AWS_EC2_METADATA_DISABLED": "true"},
            timeout=timeout,
        )
        return self

    def create_bucket(self, name: str) -> None:
        # moto does not check signatures, so the fixture needs no AWS SDK: an Authorization header whose
        # credential scope names the service is all moto's router looks at.
        scope = f"{ACCESS_KEY}/20250101/{REGION}/s3/aws4_request"
        authorization = f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host, Signature=0"
        response = httpx.put(f"{self.endpoint}/{name}", headers={"Authorization": authorization}, timeout=30)
        if response.status_code != 200:
            raise RuntimeError(f"moto refused to create bucket {name}: {response.status_code} {response.text}")

    def drop_bucket(self, name: str) -> None:
        """Delete one bucket with everything in it (registries in S3 mode share the server: no global reset)."""
        import boto3

        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )
        for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=name)

    def reset(self) -> None:
        """Drop every bucket and object (moto's own reset API)."""
        httpx.post(f"{self.endpoint}/moto-api/reset", timeout=30).raise_for_status()

    def environment(self, config_dir: Path) -> dict[str, str]:
        """The AWS variables that point an SDK at this server and nowhere else (see :func:`aws_environment`)."""
        return aws_environment(self.endpoint, config_dir)


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the session's server and the environment that reaches it."""

    server: S3Server
    name: str
    env: dict[str, str]

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def url(self) -> str:
        return f"s3://{self.name}"


def require_moto() -> None:
    """Fail (CI) or skip unless moto's server mode (moto plus Flask) is installed."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        tool_missing("needs moto's S3 server: pip install 'moto[server]' (scripts/bootstrap.sh installs it)")


_SESSION_SERVER: S3Server | None = None


_SESSION_LOCK = threading.RLock()


def session_s3_server() -> S3Server:
    """The session's one moto server (per xdist worker), started on first use: by the ``s3_server`` fixture or
    by a registry running in S3 mode (:func:`registry_storage`). :func:`stop_session_s3_server` stops it."""
    global _SESSION_SERVER
    with _SESSION_LOCK:  # servers starting in threads at once (the replicas) must share one moto server
        if _SESSION_SERVER is None:
            require_moto()
            _SESSION_SERVER = S3Server(base_dir=Path(tempfile.mkdtemp(prefix="cargohold-s3server-"))).start()
        return _SESSION_SERVER


def stop_session_s3_server() -> None:
    global _SESSION_SERVER
    if _SESSION_SERVER is not None:
        _SESSION_SERVER.stop()
        shutil.rmtree(_SESSION_SERVER.base_dir, ignore_errors=True)
        _SESSION_SERVER = None


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture() -> Iterator[S3Server]:
    """One moto S3 server for the whole session, always stopped (conftest stops it at the session's end)."""
    yield session_s3_server()


# --- registries in S3 mode -----------------------------------------------------------------------------

TEST_BLOB_STORE = os.environ.get("CARGOHOLD_TEST_BLOB_STORE", "filesystem")
"""``s3``: every test registry (``server``, ``server_process``, the shared and module servers) keeps its blobs
in a bucket of the session's moto server instead of its data dir, so the protocol, GC and lifecycle suites
run against the S3 store unchanged: ``CARGOHOLD_TEST_BLOB_STORE=s3 pytest tests/test_protocol_*.py``.
``s3-stream``: the same with ``--blob-redirect off`` (blob GETs stream through the server)."""
S3_MODE = TEST_BLOB_STORE in ("s3", "s3-stream")
_REGISTRY_BUCKETS: set[str] = set()


def registry_storage(data_dir: Path) -> tuple[str | None, dict[str, str]]:
    """The storage URL and AWS environment of a test registry on ``data_dir`` (None, {}: the filesystem).

    In S3 mode each data dir gets its own bucket, named after it, so a restarted server finds its blobs again.
    The AWS variables are also set in this process for the rest of the session (in-process servers resolve
    them like ``cargohold serve`` does); ``s3_bucket`` points them at the same server, so nothing conflicts.
    """
    if not S3_MODE:
        return None, {}
    with _SESSION_LOCK:
        return _registry_storage(data_dir)


def _registry_storage(data_dir: Path) -> tuple[str, dict[str, str]]:
    server = session_s3_server()
    env = server.environment(server.base_dir / "aws")
    if not _REGISTRY_BUCKETS:
        for variable in AWS_VARIABLES_CLEARED:
            os.environ.pop(variable, None)
        os.environ.update(env)
    name = _registry_bucket(data_dir)
    if name not in _REGISTRY_BUCKETS:
        server.create_bucket(name)
        _REGISTRY_BUCKETS.add(name)
    return f"s3://{name}/registry", env


@pytest.fixture(name="s3_bucket")
def s3_bucket_fixture(s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """A fresh, empty bucket with the AWS environment of this process pointing at it; the server is reset after."""
    name = f"cargohold-{secrets.token_hex(6)}"
    env = s3_server.environment(tmp_path / "aws")
    for variable in AWS_VARIABLES_CLEARED:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    s3_server.create_bucket(name)
    try:
        yield S3Bucket(server=s3_server, name=name, env=env)
    finally:
        s3_server.drop_bucket(name)


def _registry_bucket(data_dir: Path) -> str:
    return "registry-" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:20]


def stored_blob_count(data_dir: Path) -> int:
    """How many blobs the test registry on ``data_dir`` stores: files under its data dir, or objects in its bucket."""
    if not S3_MODE:
        return sum(1 for path in (data_dir / "blobs").rglob("*") if path.is_file())
    import boto3

    server = session_s3_server()
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=_registry_bucket(data_dir), Prefix="registry/blobs/"
    )
    return sum(len(page.get("Contents", [])) for page in pages)


def blob_store_for(data_dir: Path, *, fsync: bool = False) -> BlobStore:
    """The blob store a store-level test (no server) should use: the data dir's filesystem, or in S3 mode a
    bucket of the session's moto server named after ``data_dir``."""
    from cargohold.storage.filesystem import FilesystemBlobStore

    storage_url, _ = registry_storage(data_dir)
    if storage_url is None:
        return FilesystemBlobStore(data_dir, fsync=fsync)
    from cargohold.storage.s3 import S3BlobStore
    from cargohold.storage.s3url import S3Location

    return S3BlobStore(S3Location.parse(storage_url))
