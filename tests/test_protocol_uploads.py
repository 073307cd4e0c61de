"""Blob upload sessions: monolithic, POST+PUT, streamed, chunked, status, cancel, mount (end-4a..6, 11, 13, 14)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest

from protocol_helpers import (
    ALGORITHMS,
    OCTET_STREAM,
    assert_error,
    blob_exists,
    describe,
    digest_of,
    new_repo,
    patch_chunk,
    push_blob,
    put_upload,
    random_blob,
    registry_headers,
    resolve,
    start_upload,
    upload_range_end,
    with_params,
)
from servers import Server, shared_server_fixture, traceback_guard_fixture

server = shared_server_fixture()
no_tracebacks = traceback_guard_fixture()


def assert_blob_served(http: httpx.Client, repo: str, digest: str, data: bytes) -> None:
    resp = http.get(f"/v2/{repo}/blobs/{digest}")
    assert resp.status_code == 200, describe(resp)
    assert resp.content == data
    assert registry_headers(resp).get("docker-content-digest") == digest


def assert_created(http: httpx.Client, resp: httpx.Response, repo: str, digest: str) -> None:
    """A 201 whose Location is the blob URL and whose Docker-Content-Digest is the digest."""
    assert resp.status_code == 201, describe(resp)
    assert resp.headers.get("docker-content-digest") == digest, describe(resp)
    location = resolve(http, resp.headers.get("location"))
    assert location.path == f"/v2/{repo}/blobs/{digest}", describe(resp)


def test_post_starts_a_session_with_location_and_chunk_min_length(http: httpx.Client) -> None:
    resp = http.post(f"/v2/{new_repo()}/blobs/uploads/")
    assert resp.status_code == 202, describe(resp)
    assert resp.headers.get("location"), describe(resp)
    min_length = resp.headers.get("oci-chunk-min-length")
    assert min_length is not None and min_length.isdigit() and int(min_length) > 0, describe(resp)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_monolithic_post_with_digest_creates_the_blob(http: httpx.Client, algorithm: str) -> None:
    repo, data = new_repo(), random_blob(40_000)
    digest = digest_of(data, algorithm)
    resp = http.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data, headers={"Content-Type": OCTET_STREAM}
    )
    assert_created(http, resp, repo, digest)
    assert_blob_served(http, repo, digest, data)
    follow = http.get(resolve(http, resp.headers["location"]))
    assert follow.status_code == 200 and follow.content == data, describe(follow)


def test_monolithic_post_with_wrong_digest_is_rejected_and_stores_nothing(http: httpx.Client) -> None:
    repo, data = new_repo(), random_blob(1000)
    wrong = digest_of(random_blob(1000))
    resp = http.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": wrong}, content=data, headers={"Content-Type": OCTET_STREAM}
    )
    assert_error(resp, 400, "DIGEST_INVALID")
    assert not blob_exists(http, repo, wrong)
    assert not blob_exists(http, repo, digest_of(data))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_post_then_put_with_whole_body_creates_the_blob(http: httpx.Client, algorithm: str) -> None:
    repo, data = new_repo(), random_blob(70_000)
    digest = digest_of(data, algorithm)
    resp = put_upload(http, start_upload(http, repo), digest, data)
    assert_created(http, resp, repo, digest)
    assert_blob_served(http, repo, digest, data)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_streamed_patch_then_put_creates_the_blob(http: httpx.Client, algorithm: str) -> None:
    repo, data = new_repo(), random_blob(100_000)
    location = start_upload(http, repo)
    resp = http.patch(location, content=data, headers={"Content-Type": OCTET_STREAM})
    assert resp.status_code == 202, describe(resp)
    assert upload_range_end(resp) == len(data) - 1
    location = resolve(http, resp.headers.get("location"))
    digest = digest_of(data, algorithm)
    assert_created(http, put_upload(http, location, digest), repo, digest)
    assert_blob_served(http, repo, digest, data)


def test_streamed_patch_with_chunked_transfer_encoding_is_accepted(http: httpx.Client) -> None:
    repo, data = new_repo(), random_blob(200_000)

    def body() -> Iterator[bytes]:
        for start in range(0, len(data), 32_768):
            yield data[start : start + 32_768]

    location = start_upload(http, repo)
    resp = http.patch(location, content=body(), headers={"Content-Type": OCTET_STREAM})
    assert resp.status_code == 202, describe(resp)
    assert upload_range_end(resp) == len(data) - 1
    digest = digest_of(data)
    assert_created(http, put_upload(http, resolve(http, resp.headers.get("location")), digest), repo, digest)
    assert_blob_served(http, repo, digest, data)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_chunked_patches_report_the_received_range_each_time(http: httpx.Client, algorithm: str) -> None:
    repo, data = new_repo(), random_blob(90_000)
    location = start_upload(http, repo)
    for start in range(0, len(data), 30_000):
        resp = patch_chunk(http, location, data[start : start + 30_000], start)
        assert resp.status_code == 202, describe(resp)
        assert upload_range_end(resp) == start + 30_000 - 1
        location = resolve(http, resp.headers.get("location"))
    digest = digest_of(data, algorithm)
    assert_created(http, put_upload(http, location, digest), repo, digest)
    assert_blob_served(http, repo, digest, data)


def test_upload_status_reports_the_bytes_received_so_far(http: httpx.Client) -> None:
    repo, data = new_repo(), random_blob(12_345)
    location = start_upload(http, repo)
    resp = patch_chunk(http, location, data, 0)
    assert resp.status_code == 202, describe(resp)
    status = http.get(resolve(http, resp.headers.get("location")))
    assert status.status_code == 204, describe(status)
    assert upload_range_end(status) == len(data) - 1
    assert status.headers.get("location"), describe(status)


def test_upload_status_waits_for_a_patch_still_staging(server: Server) -> None:
    """A client whose PATCH broke off asks the status at once; the answer must count every byte that request
    stages, not a size read halfway (resuming from there was refused, or from 0 appended: DIGEST_INVALID)."""
    repo = new_repo()
    first, rest = random_blob(16 << 20), random_blob(1 << 20)  # first: more than loopback socket buffers hold
    release, status_done = threading.Event(), threading.Event()
    answers: dict[str, httpx.Response] = {}

    def body() -> Iterator[bytes]:
        yield first
        # httpx asks for more only once ``first`` is written: the server is reading, so the PATCH holds the session.
        sent.set()
        release.wait(timeout=30)
        yield rest

    def patch() -> None:
        with server.client() as client:
            answers["patch"] = client.patch(location, content=body(), headers={"Content-Type": OCTET_STREAM})

    def status() -> None:
        with server.client() as client:
            answers["status"] = client.get(location)
        status_done.set()

    with server.client() as client:
        location = start_upload(client, repo)
    sent = threading.Event()
    patcher = threading.Thread(target=patch)
    patcher.start()
    assert sent.wait(timeout=30)
    checker = threading.Thread(target=status)
    checker.start()
    answered_early = status_done.wait(timeout=0.5)
    release.set()
    patcher.join(timeout=30)
    checker.join(timeout=30)
    assert answers["patch"].status_code == 202, describe(answers["patch"])
    assert answers["status"].status_code == 204, describe(answers["status"])
    assert not answered_early, f"status answered mid-PATCH with Range {answers['status'].headers.get('range')}"
    assert upload_range_end(answers["status"]) == len(first) + len(rest) - 1


def test_upload_status_before_any_data_is_204_with_empty_range(http: httpx.Client) -> None:
    location = start_upload(http, new_repo())
    status = http.get(location)
    assert status.status_code == 204, describe(status)
    assert status.headers.get("location"), describe(status)
    assert status.headers.get("range") in (None, "0-0"), describe(status)


@pytest.mark.parametrize("bad_start", [500, 0, 999], ids=["gap", "restart-at-zero", "overlap"])
def test_out_of_order_chunk_returns_416_and_keeps_the_session(http: httpx.Client, bad_start: int) -> None:
    repo, data = new_repo(), random_blob(3000)
    location = start_upload(http, repo)
    first = patch_chunk(http, location, data[:1000], 0)
    assert first.status_code == 202, describe(first)
    location = resolve(http, first.headers.get("location"))
    bad = patch_chunk(http, location, data[bad_start : bad_start + 1000], bad_start)
    assert bad.status_code == 416, describe(bad)
    status = http.get(location)
    assert status.status_code == 204, describe(status)
    assert upload_range_end(status) == 999
    second = patch_chunk(http, location, data[1000:], 1000)
    assert second.status_code == 202, describe(second)
    digest = digest_of(data)
    final = put_upload(http, resolve(http, second.headers.get("location")), digest)
    assert_created(http, final, repo, digest)
    assert_blob_served(http, repo, digest, data)


def test_put_may_carry_the_final_chunk_with_content_range(http: httpx.Client) -> None:
    repo, data = new_repo(), random_blob(50_000)
    location = start_upload(http, repo)
    resp = patch_chunk(http, location, data[:20_000], 0)
    assert resp.status_code == 202, describe(resp)
    digest = digest_of(data)
    final = http.put(
        with_params(resolve(http, resp.headers.get("location")), digest=digest),
        content=data[20_000:],
        headers={"Content-Type": OCTET_STREAM, "Content-Range": f"20000-{len(data) - 1}"},
    )
    assert_created(http, final, repo, digest)
    assert_blob_served(http, repo, digest, data)


def test_put_may_carry_the_final_chunk_without_content_range(http: httpx.Client) -> None:
    repo, data = new_repo(), random_blob(50_000)
    location = start_upload(http, repo)
    resp = patch_chunk(http, location, data[:20_000], 0)
    assert resp.status_code == 202, describe(resp)
    digest = digest_of(data)
    final = put_upload(http, resolve(http, resp.headers.get("location")), digest, data[20_000:])
    assert_created(http, final, repo, digest)
    assert_blob_served(http, repo, digest, data)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_put_with_wrong_digest_returns_digest_invalid_and_no_blob(http: httpx.Client, algorithm: str) -> None:
    repo, data = new_repo(), random_blob(4000)
    wrong = digest_of(random_blob(4000), algorithm)
    resp = put_upload(http, start_upload(http, repo), wrong, data)
    assert_error(resp, 400, "DIGEST_INVALID")
    assert not blob_exists(http, repo, wrong)
    assert not blob_exists(http, repo, digest_of(data, algorithm))


@pytest.mark.parametrize(
    "bad_digest",
    [
        "sha256:xyz",
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha512:" + "a" * 64,
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "not-a-digest",
        "sha256:../../../../etc/passwd",
    ],
)
def test_put_with_malformed_digest_returns_digest_invalid(http: httpx.Client, bad_digest: str) -> None:
    repo = new_repo()
    resp = put_upload(http, start_upload(http, repo), bad_digest, random_blob(500))
    assert_error(resp, 400, "DIGEST_INVALID")


def test_put_without_digest_is_rejected_with_400(http: httpx.Client) -> None:
    resp = http.put(start_upload(http, new_repo()), content=random_blob(500), headers={"Content-Type": OCTET_STREAM})
    assert_error(resp, 400, {"DIGEST_INVALID", "BLOB_UPLOAD_INVALID"})


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_zero_length_blob_uploads_and_is_served(http: httpx.Client, algorithm: str) -> None:
    repo = new_repo()
    digest = digest_of(b"", algorithm)
    resp = put_upload(http, start_upload(http, repo), digest, b"")
    assert_created(http, resp, repo, digest)
    head = http.head(f"/v2/{repo}/blobs/{digest}")
    assert head.status_code == 200, describe(head)
    assert head.headers.get("content-length") == "0"
    assert_blob_served(http, repo, digest, b"")


def test_completed_session_is_gone(http: httpx.Client) -> None:
    repo, data = new_repo(), random_blob(100)
    location = start_upload(http, repo)
    assert put_upload(http, location, digest_of(data), data).status_code == 201
    assert_error(http.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


def test_cancelled_upload_returns_204_then_is_unknown(http: httpx.Client) -> None:
    repo, data = new_repo(), random_blob(1000)
    location = start_upload(http, repo)
    resp = patch_chunk(http, location, data, 0)
    assert resp.status_code == 202, describe(resp)
    location = resolve(http, resp.headers.get("location"))
    cancel = http.delete(location)
    assert cancel.status_code == 204, describe(cancel)
    assert_error(http.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(patch_chunk(http, location, data, 1000), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(put_upload(http, location, digest_of(data)), 404, "BLOB_UPLOAD_UNKNOWN")
    assert not blob_exists(http, repo, digest_of(data))


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "DELETE"])
def test_unknown_upload_id_returns_blob_upload_unknown(http: httpx.Client, method: str) -> None:
    repo = new_repo()
    push_blob(http, repo, random_blob(10))
    url = httpx.URL(f"{http.base_url}/v2/{repo}/blobs/uploads/{uuid.uuid4()}")
    if method == "PUT":
        url = with_params(url, digest=digest_of(b"x"))
    resp = http.request(
        method, url, content=b"x" if method in ("PATCH", "PUT") else None, headers={"Content-Type": OCTET_STREAM}
    )
    assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")


def test_upload_session_cannot_be_used_through_another_repository(http: httpx.Client) -> None:
    repo, other, data = new_repo(), new_repo(), random_blob(500)
    push_blob(http, other, random_blob(10))
    location = start_upload(http, repo)
    prefix = f"/v2/{repo}/blobs/uploads/"
    if not location.path.startswith(prefix):
        pytest.skip("upload Location is not of the /v2/<name>/blobs/uploads/<id> form")
    hijacked = location.copy_with(path=location.path.replace(repo, other, 1))
    resp = put_upload(http, hijacked, digest_of(data), data)
    assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")
    assert not blob_exists(http, other, digest_of(data))


def test_reupload_of_an_existing_blob_succeeds(http: httpx.Client) -> None:
    repo, data = new_repo(), random_blob(2000)
    digest = push_blob(http, repo, data)
    assert_created(http, put_upload(http, start_upload(http, repo), digest, data), repo, digest)
    assert_blob_served(http, repo, digest, data)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_mount_from_repository_holding_the_blob_returns_201(http: httpx.Client, algorithm: str) -> None:
    source, target, data = new_repo(), new_repo(), random_blob(5000)
    digest = push_blob(http, source, data, algorithm)
    resp = http.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source})
    assert_created(http, resp, target, digest)
    assert_blob_served(http, target, digest, data)


def test_mount_of_a_missing_blob_falls_back_to_an_upload_session(http: httpx.Client) -> None:
    source, target, data = new_repo(), new_repo(), random_blob(5000)
    push_blob(http, source, random_blob(10))
    digest = digest_of(data)
    resp = http.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source})
    assert resp.status_code == 202, describe(resp)
    location = resolve(http, resp.headers.get("location"))
    assert not blob_exists(http, target, digest)
    assert_created(http, put_upload(http, location, digest, data), target, digest)
    assert_blob_served(http, target, digest, data)


def test_mount_from_a_repository_without_the_blob_does_not_expose_it(http: httpx.Client) -> None:
    holder, bystander, target, data = new_repo(), new_repo(), new_repo(), random_blob(700)
    digest = push_blob(http, holder, data)
    push_blob(http, bystander, random_blob(10))
    resp = http.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": bystander})
    assert resp.status_code == 202, describe(resp)
    assert not blob_exists(http, target, digest)
    assert_error(http.get(f"/v2/{target}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


def test_mount_from_an_unknown_repository_falls_back_to_an_upload_session(http: httpx.Client) -> None:
    target = new_repo()
    digest = digest_of(random_blob(10))
    resp = http.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": new_repo()})
    assert resp.status_code == 202, describe(resp)
    assert resp.headers.get("location"), describe(resp)


def test_mount_without_from_either_mounts_or_opens_a_session(http: httpx.Client) -> None:
    source, target, data = new_repo(), new_repo(), random_blob(900)
    digest = push_blob(http, source, data)
    resp = http.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest})
    assert resp.status_code in (201, 202), describe(resp)
    if resp.status_code == 201:
        assert_blob_served(http, target, digest, data)
    else:
        assert resp.headers.get("location"), describe(resp)
        assert not blob_exists(http, target, digest)


def test_concurrent_uploads_of_the_same_blob_all_succeed(server: Server) -> None:
    repo, data = new_repo(), random_blob(400_000)
    digest = digest_of(data)
    barrier = threading.Barrier(4)
    results: list[int | str] = []
    lock = threading.Lock()

    def upload() -> None:
        try:
            with server.client() as client:
                location = start_upload(client, repo)
                patched = client.patch(location, content=data, headers={"Content-Type": OCTET_STREAM})
                assert patched.status_code == 202, describe(patched)
                barrier.wait(timeout=20)
                status: int | str = put_upload(client, resolve(client, patched.headers["location"]), digest).status_code
        except Exception as exc:  # reported through results
            status = repr(exc)
        with lock:
            results.append(status)

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [201, 201, 201, 201]
    with server.client() as client:
        assert_blob_served(client, repo, digest, data)


def test_mount_with_a_malformed_digest_falls_back_to_an_upload_session(http: httpx.Client) -> None:
    source, target = new_repo(), new_repo()
    push_blob(http, source, random_blob(10))
    resp = http.post(f"/v2/{target}/blobs/uploads/", params={"mount": "sha256:xyz", "from": source})
    assert resp.status_code == 202, describe(resp)
    assert resp.headers.get("location"), describe(resp)


def test_concurrent_patches_at_the_same_offset_accept_exactly_one(server: Server) -> None:
    repo, chunks = new_repo(), [random_blob(200_000), random_blob(200_000)]
    with server.client() as client:
        location = start_upload(client, repo)
    barrier = threading.Barrier(2)
    outcomes: list[tuple[int, bytes]] = []

    def send(chunk: bytes) -> None:
        with server.client() as client:
            barrier.wait(timeout=20)
            outcomes.append((patch_chunk(client, location, chunk, 0).status_code, chunk))

    threads = [threading.Thread(target=send, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(status for status, _ in outcomes) == [202, 416]
    winner = next(chunk for status, chunk in outcomes if status == 202)
    with server.client() as client:
        assert upload_range_end(client.get(location)) == 200_000 - 1
        final = put_upload(client, location, digest_of(winner))
        assert final.status_code == 201, describe(final)
        assert_blob_served(client, repo, digest_of(winner), winner)
