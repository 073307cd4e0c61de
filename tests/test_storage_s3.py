"""The registry on an S3 bucket (moto): uploads across replicas, redirects, streaming, real clients, settings.

The store's own contract runs in tests/contracts (parametrized over filesystem and S3); the protocol and GC
suites run on S3 with ``CARGOHOLD_TEST_BLOB_STORE=s3`` (tests/s3server.py). This module covers what only a
registry on a bucket has: a chunked upload handed between two servers sharing the database and the bucket,
the 307 to a short-lived presigned URL (and what must happen before it), ``--blob-redirect off``, a CDN base,
the advertised chunk minimum, and skopeo and the Cargohold client following the redirect.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from sqlalchemy import update

from cargohold.client.credentials import Credentials
from cargohold.client.registry import RegistryClient
from cargohold.metadata.models import RepositoryBlob
from cargohold.oci.digest import Digest
from cargohold.storage.base import Redirect
from cargohold.storage.faults import classify
from cargohold.storage.s3 import MIN_PART, PART_SIZE, S3BlobStore, _PresignedUrls, _translated, s3_client
from cargohold.storage.s3url import S3Location
from containerd import Containerd
from control_helpers import FAST
from s3server import S3Bucket, aws_environment
from servers import InProcessServer, new_admin_token, running
from test_containerd import pull_with_containerd

MiB = 1 << 20


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _server(tmp_path: Path, bucket: S3Bucket, name: str = "a", **settings: object) -> InProcessServer:
    return InProcessServer(data_dir=tmp_path / name, settings={"storage_url": f"{bucket.url}/reg", **settings})


@pytest.fixture
def registry(tmp_path: Path, s3_bucket: S3Bucket) -> Iterator[InProcessServer]:
    with running(_server(tmp_path, s3_bucket), check_tracebacks=True) as server:
        assert isinstance(server, InProcessServer)
        yield server


def _push_chunked(http: httpx.Client, repo: str, data: bytes) -> str:
    """POST, one PATCH per 8 MiB, PUT with the digest: staged as several part objects."""
    started = http.post(f"/v2/{repo}/blobs/uploads/")
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    for offset in range(0, len(data), PART_SIZE):
        piece = data[offset : offset + PART_SIZE]
        headers = {"Content-Range": f"{offset}-{offset + len(piece) - 1}", "Content-Type": "application/octet-stream"}
        answer = http.patch(location, content=piece, headers=headers)
        assert answer.status_code == 202, answer.text
        location = answer.headers["Location"]
    digest = _digest(data)
    assert http.put(location, params={"digest": digest}).status_code == 201
    return digest


def _push(http: httpx.Client, repo: str, data: bytes) -> str:
    digest = _digest(data)
    response = http.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
    assert response.status_code == 201, response.text
    return digest


# --- the store itself, beyond the contract -----------------------------------------------------------


def test_large_upload_in_uneven_chunks_is_assembled_from_full_parts(s3_bucket: S3Bucket) -> None:
    """Chunks below S3's part minimum are merged into the next part (only the last part may be short), and the
    blob is assembled server-side by a multipart copy: moto, like S3, refuses a completion with a short middle
    part, so a wrong merge fails here."""
    store = S3BlobStore(S3Location.parse(f"{s3_bucket.url}/p"))
    data = os.urandom(21 * MiB + 12345)
    upload_id = "ab" * 16
    store.create_upload(upload_id)
    offset = 0
    for size in (1 * MiB, 3 * MiB, 9 * MiB, 100, 2 * MiB, 6 * MiB):  # odd sizes, several short tails
        writer = store.open_upload(upload_id)
        writer.write(data[offset : offset + size])
        writer.close()
        offset += size
        assert store.upload_size(upload_id) == offset
    writer = store.open_upload(upload_id)
    writer.write(data[offset:])
    writer.close()
    parts = store._parts(upload_id)
    assert len(parts) > 1 and all(part.size >= MIN_PART for part in parts[:-1])
    assert b"".join(store.read_upload(upload_id)) == data
    digest = Digest.parse(_digest(data))
    store.commit_upload(upload_id, digest)
    assert store.size(digest) == len(data)
    assert hashlib.sha256(b"".join(store.open_blob(digest))).hexdigest() == digest.hex
    assert b"".join(store.open_blob(digest, 5, 17)) == data[5:17]
    assert store.upload_size(upload_id) is None


def test_assembly_copies_parts_concurrently_and_a_failed_copy_leaves_nothing_visible(
    s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = S3BlobStore(S3Location.parse(f"{s3_bucket.url}/p"))
    data = os.urandom(3 * PART_SIZE + 1)

    def stage(upload_id: str) -> None:
        store.create_upload(upload_id)
        writer = store.open_upload(upload_id)
        for offset in range(0, len(data), PART_SIZE):
            writer.write(data[offset : offset + PART_SIZE])  # one part object each: 4 parts to copy
        writer.close()

    copy_part = store.client.upload_part_copy
    copiers: set[str] = set()
    fail_part: list[int] = [3]

    def flaky_copy(**kwargs: Any) -> Any:
        copiers.add(threading.current_thread().name)
        if kwargs["PartNumber"] in fail_part:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, "UploadPartCopy")
        return copy_part(**kwargs)

    monkeypatch.setattr(store.client, "upload_part_copy", flaky_copy)
    digest = Digest.parse(_digest(data))
    stage("cd" * 16)
    with pytest.raises(OSError, match="InternalError"):
        store.commit_upload("cd" * 16, digest)
    assert store.size(digest) is None  # nothing at the digest's key
    assert not store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")  # aborted, not billed
    assert store.upload_size("cd" * 16) == len(data)  # the staged bytes are still there to discard or retry

    fail_part.clear()
    store.commit_upload("cd" * 16, digest)
    assert hashlib.sha256(b"".join(store.open_blob(digest))).hexdigest() == digest.hex
    assert copiers and all(name.startswith("s3-assemble") for name in copiers)  # on the copy pool, not in line


def _offline_aws_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """The test AWS settings, pointing at a loopback ``endpoint`` nothing listens on."""
    for key, value in aws_environment(endpoint, tmp_path).items():
        monkeypatch.setenv(key, value)


def test_redirects_are_signed_on_the_event_loop_only_with_static_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refreshable credentials may go to the network mid-signature, so with them the blob GET signs on a worker
    thread; a CDN base or streaming signs nothing."""
    _offline_aws_environment(tmp_path, monkeypatch, "http://127.0.0.1:9")
    location = S3Location.parse("s3://bucket/prefix")
    assert S3BlobStore(location).locate_blocks is False  # static keys from the environment
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    (tmp_path / "token").write_text("a-web-identity-token")  # the role is assumed lazily: nothing is fetched here
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9")  # were the role assumed, never off this host
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/cargohold")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(tmp_path / "token"))
    assert S3BlobStore(location).locate_blocks is True
    assert S3BlobStore(location, redirect_url="https://cdn.example.test").locate_blocks is False
    assert S3BlobStore(location, redirect=False).locate_blocks is False


class _Captured(Exception):
    """Raised from boto3's before-send hook: the request is inspected, never sent."""


@pytest.mark.parametrize(("scheme", "signed"), [("http", True), ("https", False)])
def test_request_bodies_are_signed_only_where_tls_does_not_protect_them(
    scheme: str, signed: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline_aws_environment(tmp_path, monkeypatch, f"{scheme}://127.0.0.1:9")
    client = s3_client()
    seen: dict[str, str] = {}

    def capture(request: Any, **_: Any) -> None:
        for key, value in request.headers.items():
            seen[key.lower()] = value.decode() if isinstance(value, bytes) else str(value)
        raise _Captured

    client.meta.events.register("before-send.s3.PutObject", capture)
    body = b"staged bytes"
    with pytest.raises(_Captured):
        client.put_object(Bucket="b", Key="k", Body=body)
    payload = seen["x-amz-content-sha256"]
    assert payload == (hashlib.sha256(body).hexdigest() if signed else "UNSIGNED-PAYLOAD")
    assert "Signature=" in seen["authorization"]  # the request itself is signed either way


def test_object_store_errors_read_as_storage_faults(s3_bucket: S3Bucket) -> None:
    """A bucket that does not exist is an I/O fault (500 with one sentence), not a traceback."""
    from cargohold.storage.faults import classify

    store = S3BlobStore(S3Location.parse("s3://no-such-bucket-here"))
    with pytest.raises(OSError) as caught:
        store.create_upload("cd" * 16)
    fault = classify(caught.value)
    assert fault is not None and fault.kind == "io" and "NoSuchBucket" in str(caught.value)


# --- uploads across replicas ------------------------------------------------------------------------


@contextmanager
def _two_servers(tmp_path: Path, s3_bucket: S3Bucket) -> Iterator[tuple[InProcessServer, InProcessServer]]:
    """Two registries sharing one database and one bucket (and an admin token), each with its own data dir."""
    settings = {"storage_url": s3_bucket.url, "database_url": f"sqlite:///{tmp_path / 'shared.db'}"}
    token = new_admin_token()
    with (
        running(InProcessServer(tmp_path / "a", settings, admin_token=token)) as a,
        running(InProcessServer(tmp_path / "b", settings, admin_token=token)) as b,
    ):
        assert isinstance(a, InProcessServer) and isinstance(b, InProcessServer)
        yield a, b


def test_a_chunked_upload_moves_between_two_servers_sharing_database_and_bucket(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    """PATCH to one server, PATCH to the other, back, and PUT on the second: each server holding a stale or no
    running hash rebuilds it from the bucket, and the blob is the exact bytes."""
    data = os.urandom(13 * MiB + 777)
    cuts = [0, 6 * MiB, 6 * MiB + 1000, 12 * MiB, len(data)]
    with (
        _two_servers(tmp_path, s3_bucket) as (a, b),
        a.client() as on_a,
        b.client() as on_b,
    ):
        started = on_a.post("/v2/team/app/blobs/uploads/")
        assert started.status_code == 202, started.text
        assert started.headers["OCI-Chunk-Min-Length"] == str(MIN_PART)
        location = started.headers["Location"]
        for number, (start, end) in enumerate(itertools.pairwise(cuts[:-1])):
            http = (on_a, on_b, on_a)[number]
            response = http.patch(
                location,
                content=data[start:end],
                headers={"Content-Range": f"{start}-{end - 1}", "Content-Type": "application/octet-stream"},
            )
            assert response.status_code == 202, response.text
            assert response.headers["Range"] == f"0-{end - 1}"
            assert response.headers["OCI-Chunk-Min-Length"] == str(MIN_PART)
        status = on_b.get(location)
        assert status.headers["Range"] == f"0-{cuts[-2] - 1}"
        finished = on_b.put(location, params={"digest": _digest(data)}, content=data[cuts[-2] :])
        assert finished.status_code == 201, finished.text
        pulled = on_a.get(f"/v2/team/app/blobs/{_digest(data)}", follow_redirects=True)
        assert pulled.status_code == 200 and pulled.content == data
    assert "vanished" not in a.log() + b.log()


def test_a_wrong_digest_after_a_handover_stores_nothing(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    with (
        _two_servers(tmp_path, s3_bucket) as (a, b),
        a.client() as on_a,
        b.client() as on_b,
    ):
        location = on_a.post("/v2/team/app/blobs/uploads/").headers["Location"]
        assert on_a.patch(location, content=b"x" * 1000).status_code == 202
        wrong = on_b.put(location, params={"digest": _digest(b"something else")})
        assert wrong.status_code == 400 and wrong.json()["errors"][0]["code"] == "DIGEST_INVALID"
        store = b.state.blobs
        assert list(store.iter_digests()) == [] and list(store.iter_uploads()) == []


# --- serving blobs ----------------------------------------------------------------------------------


def test_blob_get_redirects_to_a_short_lived_presigned_url_after_authorisation(registry: InProcessServer) -> None:
    data = os.urandom(300_000)
    with registry.client(follow_redirects=False) as http:
        digest = _push(http, "team/app", data)
        response = http.get(f"/v2/team/app/blobs/{digest}")
        assert response.status_code == 307, response.text
        assert response.headers["Docker-Content-Digest"] == digest
        url = urlsplit(response.headers["Location"])
        query = parse_qs(url.query)
        assert url.path == f"/{registry.state.blobs.bucket}/reg/blobs/sha256/{digest.split(':')[1]}"  # type: ignore[attr-defined]
        assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Signature"][0]
        assert 0 < int(query["X-Amz-Expires"][0]) <= 900  # short-lived (moto checks neither: see s3server)
        followed = httpx.get(response.headers["Location"], timeout=30)  # what a client does, without our token
        assert followed.status_code == 200 and followed.content == data
        head = http.head(f"/v2/team/app/blobs/{digest}")  # HEAD answers itself
        assert head.status_code == 200 and "Location" not in head.headers
        assert head.headers["Content-Length"] == str(len(data)) and head.headers["Docker-Content-Digest"] == digest
        assert http.get(f"/v2/other/repo/blobs/{digest}").status_code == 404  # not linked there: no URL
    with registry.anonymous(follow_redirects=False) as anonymous:
        refused = anonymous.get(f"/v2/team/app/blobs/{digest}")
        assert refused.status_code == 401 and "Location" not in refused.headers


def test_redirects_skip_the_thread_pool_reuse_young_urls_and_still_refresh_stale_links(
    registry: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SQLite metadata and a bucket, a blob GET waits on nothing, so it is answered on the event loop; a
    link old enough to need refreshing (a write) still goes to a worker thread and is refreshed."""
    state = registry.state
    offloaded: list[str] = []
    original_run = state.run

    async def recording_run(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        offloaded.append(getattr(func, "__name__", repr(func)))
        return await original_run(func, *args, **kwargs)

    data = os.urandom(1000)
    with registry.client(follow_redirects=False) as http:
        digest = _push(http, "team/app", data)
        monkeypatch.setattr(state, "run", recording_run)
        first, second = (http.get(f"/v2/team/app/blobs/{digest}") for _ in range(2))
        assert first.status_code == second.status_code == 307
        assert first.headers["Location"] == second.headers["Location"]  # signed once, reused while young
        assert http.head(f"/v2/team/app/blobs/{digest}").status_code == 200
        assert http.get(f"/v2/team/app/blobs/{digest}").status_code == 307
        assert http.get(f"/v2/other/app/blobs/{digest}").status_code == 404
        assert "readable_blob" not in offloaded

        long_ago = datetime.now(UTC) - 2 * state.settings.gc_grace
        with state.metadata.db.write() as session:
            session.execute(update(RepositoryBlob).values(linked_at=long_ago))
        assert http.get(f"/v2/team/app/blobs/{digest}").status_code == 307
        assert "readable_blob" in offloaded
        linked = state.metadata.linked_blob("team/app", digest)
        assert linked is not None and linked[1] > long_ago + state.settings.gc_grace


def test_presigned_urls_are_reused_only_while_young_and_forgotten_on_delete(
    s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = S3BlobStore(S3Location.parse(f"{s3_bucket.url}/p"), redirect_ttl=300)
    now = [1000.0]
    store._presigned = _PresignedUrls(300, clock=lambda: now[0])
    signatures: list[int] = []
    sign = store.client.generate_presigned_url

    def counting_sign(*args: Any, **kwargs: Any) -> str:
        signatures.append(kwargs["ExpiresIn"])
        return str(sign(*args, **kwargs))

    monkeypatch.setattr(store.client, "generate_presigned_url", counting_sign)
    digest = Digest.parse(_digest(b"x"))

    def url() -> str:
        located = store.locate(digest, known_size=1)
        assert isinstance(located, Redirect)
        return located.url

    signed = url()
    now[0] += 59
    assert url() == signed and signatures == [300]  # 59 s into a 300 s life: reused
    now[0] += 2
    url()  # 61 s: past a fifth of its life, signed again
    assert signatures == [300, 300]
    url()
    assert signatures == [300, 300]
    store.delete(digest)  # the object never existed: nothing deleted, but the URL is forgotten all the same
    url()
    assert signatures == [300, 300, 300]


def test_content_the_bucket_holds_is_not_copied_again(
    registry: InProcessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same layer pushed by a second project: linked, its staged parts dropped, no copy to the blob's key
    (which on SQLite would run under the write lock)."""
    store = registry.state.blobs
    assert isinstance(store, S3BlobStore)
    data = os.urandom(3 * PART_SIZE)  # several parts: a multipart assembly the first time
    written: list[str] = []
    for method in ("put_object", "copy_object", "upload_part_copy", "create_multipart_upload"):
        original = getattr(store.client, method)

        def recording(*args: Any, _original: Any = original, _method: str = method, **kwargs: Any) -> Any:
            written.append(f"{_method} {kwargs['Key']}")
            return _original(*args, **kwargs)

        monkeypatch.setattr(store.client, method, recording)
    with registry.client() as http:
        digest = _push_chunked(http, "team/first", data)
        blob_key = store.blob_key(Digest.parse(digest))
        assert f"create_multipart_upload {blob_key}" in written
        written.clear()
        assert _push_chunked(http, "team/second", data) == digest
        assert not [call for call in written if call.endswith(blob_key)], written
        assert http.get(f"/v2/team/second/blobs/{digest}", follow_redirects=True).content == data
    assert not list(store._list(f"{store.prefix}uploads/")), "the second upload's staged parts were left behind"


def test_blob_redirect_off_streams_through_the_server(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    data = os.urandom(3 * MiB + 5)
    with running(_server(tmp_path, s3_bucket, blob_redirect=False)) as server, server.client() as http:
        digest = _push(http, "team/app", data)
        whole = http.get(f"/v2/team/app/blobs/{digest}")
        assert whole.status_code == 200 and whole.content == data and whole.headers["Docker-Content-Digest"] == digest
        part = http.get(f"/v2/team/app/blobs/{digest}", headers={"Range": "bytes=1000-"})
        assert part.status_code == 206 and part.content == data[1000:]
        assert part.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
        store = server.state.blobs
        assert isinstance(store, S3BlobStore)
        store.client.delete_object(Bucket=store.bucket, Key=store.blob_key(Digest.parse(digest)))  # lost object
        lost = http.get(f"/v2/team/app/blobs/{digest}")
        assert lost.status_code == 404 and lost.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert "its object is missing from the store" in server.log() and "Traceback" not in server.log()


def test_blob_redirect_url_points_at_a_cdn(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    settings = {"blob_redirect_url": "https://cdn.example.test/blobs-base/"}
    with running(_server(tmp_path, s3_bucket, **settings)) as server, server.client(follow_redirects=False) as http:
        digest = _push(http, "team/app", b"layer")
        response = http.get(f"/v2/team/app/blobs/{digest}")
        assert response.status_code == 307
        assert response.headers["Location"] == f"https://cdn.example.test/blobs-base/reg/blobs/sha256/{digest[7:]}"


# --- real clients follow the redirect -----------------------------------------------------------------


def test_skopeo_and_the_cargohold_client_push_and_pull_through_redirects(
    registry: InProcessServer, tmp_path: Path
) -> None:
    from cargohold.sample import write_sample_image
    from fixtures_images import layout_blob_digests, require_tools, skopeo_copy

    require_tools("skopeo")
    src = tmp_path / "src"
    image = write_sample_image(src, layers=2, layer_size=6 * MiB, seed=5)
    token = registry.admin_token
    assert token is not None
    skopeo_copy(f"oci:{src}:latest", f"docker://{registry.host}/ci/app:1", token)
    out = tmp_path / "pulled"
    skopeo_copy(f"docker://{registry.host}/ci/app:1", f"oci:{out}:pulled", token)
    assert layout_blob_digests(out) == image.digests
    access_log = registry.log()
    assert "status=307" in access_log  # skopeo's layer GETs were redirected, not streamed
    with RegistryClient(registry.host, credentials=Credentials("x-token", token), retry=FAST) as client:
        for blob in image.blobs:
            chunks: list[bytes] = []
            size = client.download_blob("ci/app", blob.digest, chunks.append)
            assert hashlib.sha256(b"".join(chunks)).hexdigest() == blob.digest.hex and size == blob.size


# --- settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://", "names no valid bucket"),
        ("s3://Bad_Bucket", "names no valid bucket"),
        ("s3://bucket/../x", "'..'"),
        ("gs://bucket", "write s3://BUCKET"),
    ],
)
def test_bad_storage_urls_are_refused_in_one_sentence(url: str, message: str) -> None:
    from click.testing import CliRunner

    from cargohold.cli.serve import serve

    result = CliRunner().invoke(serve, ["--storage-url", url, "--print-config"])
    assert result.exit_code != 0 and message in result.output and "--storage-url (storage_url)" in result.output


def test_the_filesystem_store_needs_no_boto3_and_s3_without_it_says_what_to_install(tmp_path: Path) -> None:
    """boto3 is the s3 extra: a server on the filesystem never imports it; asking for a bucket without it is one
    sentence naming the extra (run in a child process where importing boto3 fails)."""
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['boto3'] = None\n"
        "from pathlib import Path\n"
        "from cargohold.storage import open_blob_store\n"
        f"store = open_blob_store(None, Path({str(tmp_path / 'data')!r}))\n"
        "assert type(store).__name__ == 'FilesystemBlobStore' and 'botocore' not in sys.modules\n"
        "try:\n"
        "    open_blob_store('s3://bucket', Path('.'))\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert "needs boto3" in result.stdout and "cargohold[server,s3]" in result.stdout


# --- garbage collection on a bucket ---------------------------------------------------------------------


def test_a_crash_between_bucket_and_database_leaves_an_orphan_that_gc_collects_later(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    """The commit's copy lands, its transaction does not (a crash, a database error): the object has no row.
    GC keeps it while it is younger than the grace window (a commit in flight looks the same), deletes it
    after, and never touches a referenced blob."""
    from datetime import UTC, datetime, timedelta

    from cargohold.lifecycle.gc import GarbageCollector
    from cargohold.metadata.control import ControlStore
    from cargohold.metadata.db import Database
    from cargohold.metadata.store import MetadataStore
    from test_lifecycle_support import Env, FakeClock

    db = Database(f"sqlite:///{tmp_path / 'metadata.db'}")
    db.migrate()
    store = S3BlobStore(S3Location.parse(f"{s3_bucket.url}/gc"))
    env = Env(db, MetadataStore(db), ControlStore(db), store)
    kept = env.image("team/app", [b"referenced layer"], ["v1"])
    assert kept
    orphan = b"committed, then the transaction failed"
    upload_id = "ef" * 16
    store.create_upload(upload_id)
    writer = store.open_upload(upload_id)
    writer.write(orphan)
    writer.close()
    with pytest.raises(RuntimeError), env.metadata.transaction() as transaction:
        transaction.link_blob("team/app", _digest(orphan), len(orphan))
        store.commit_upload(upload_id, Digest.parse(_digest(orphan)))
        raise RuntimeError("the database failed before the commit")
    assert store.size(Digest.parse(_digest(orphan))) == len(orphan)  # in the bucket, unknown to the database
    grace = timedelta(hours=1)
    young = GarbageCollector(db, store, grace=grace, clock=FakeClock(datetime.now(UTC))).run()
    assert young.orphan_files == 0 and store.size(Digest.parse(_digest(orphan))) == len(orphan)
    later = GarbageCollector(db, store, grace=grace, clock=FakeClock(datetime.now(UTC) + 2 * grace)).run()
    assert later.completed and later.orphan_files == 1 and later.bytes_freed == len(orphan)
    assert store.size(Digest.parse(_digest(orphan))) is None
    assert store.size(Digest.parse(_digest(b"referenced layer"))) == len(b"referenced layer")


def _docker(*args: str, env: dict[str, str], stdin: str | None = None) -> str:
    import subprocess

    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, input=stdin, timeout=300, env={**os.environ, **env}
    )
    assert result.returncode == 0, f"docker {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_docker_pulls_through_redirects(registry: InProcessServer, session_dockerd: str, tmp_path: Path) -> None:
    """A private dockerd pulls an image whose layers the registry redirects to the bucket (and drops the
    registry's token when it follows them: moto would not mind, S3 would refuse two authentications)."""
    from cargohold.sample import write_sample_image
    from fixtures_images import require_tools, skopeo_copy

    require_tools("skopeo", "docker")
    src = tmp_path / "src"
    image = write_sample_image(src, layers=2, layer_size=1 * MiB, seed=9)
    token = registry.admin_token
    assert token is not None
    skopeo_copy(f"oci:{src}:latest", f"docker://{registry.host}/ci/docker:1", token)
    docker_env = {"DOCKER_HOST": session_dockerd, "DOCKER_CONFIG": str(tmp_path / "docker-config")}
    _docker("login", registry.host, "-u", "x-token", "--password-stdin", env=docker_env, stdin=token)
    _docker("pull", f"{registry.host}/ci/docker:1", env=docker_env)
    inspected = _docker("image", "inspect", "--format", "{{.Id}}", f"{registry.host}/ci/docker:1", env=docker_env)
    assert str(image.config.digest) in inspected
    redirected = [line for line in registry.log().splitlines() if "status=307" in line and "/blobs/" in line]
    assert len(redirected) >= 2  # both layers (and the config) came from the bucket
    _docker("image", "rm", f"{registry.host}/ci/docker:1", env=docker_env)


def test_containerd_pulls_through_redirects(
    registry: InProcessServer, session_containerd: Containerd, tmp_path: Path
) -> None:
    """containerd's resolver follows the 307 to the bucket for the config and both layers."""
    pull_with_containerd(registry, session_containerd, tmp_path, "ci/containerd")
    redirected = [line for line in registry.log().splitlines() if "status=307" in line and "/blobs/" in line]
    assert len(redirected) >= 3


def test_storage_settings_come_from_the_config_file_and_the_environment(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cargohold.cli.serve import serve

    config = tmp_path / "cargohold.toml"
    config.write_text(
        'storage_url = "s3://ci-blobs/registry"\nblob_redirect = "off"\nblob_redirect_url = "https://cdn.example.test"\n'
    )
    shown = CliRunner().invoke(serve, ["--config", str(config), "--print-config"])
    assert shown.exit_code == 0, shown.output
    assert 'storage_url = "s3://ci-blobs/registry"' in shown.output and 'blob_redirect = "off"' in shown.output
    from_env = CliRunner().invoke(serve, ["--print-config"], env={"CARGOHOLD_STORAGE_URL": "s3://other"})
    assert 'storage_url = "s3://other"' in from_env.output
    bad = CliRunner().invoke(serve, ["--print-config", "--blob-redirect-url", "ftp://x"])
    assert bad.exit_code != 0 and "--blob-redirect-url (blob_redirect_url)" in bad.output


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (ClientError({"Error": {"Code": "QuotaExceeded", "Message": "bucket quota"}}, "UploadPart"), "full"),
        (ClientError({"Error": {"Code": "XMinioStorageFull", "Message": "disk full"}}, "PutObject"), "full"),
        (ClientError({"Error": {"Code": "EntityTooLarge", "Message": "too big"}}, "CopyObject"), "full"),
        (ClientError({"Error": {"Code": "InternalError", "Message": "oops"}}, "PutObject"), "io"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "io"),
    ],
)
def test_object_store_refusals_are_answered_like_a_full_or_failing_disk(failure: Exception, kind: str) -> None:
    """Issue 18's rules for object storage: a quota refusal is "storage full" (507 and the full-disk handling),
    anything else the store or the network fails with is an I/O fault (one clean error, staged bytes dropped)."""
    with pytest.raises(OSError) as raised, _translated("store a part"):
        raise failure
    fault = classify(raised.value)
    assert fault is not None and fault.kind == kind, fault
