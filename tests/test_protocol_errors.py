"""Name/tag/digest validation and the OCI error format, including paths httpx would normalise away."""

from __future__ import annotations

import httpx
import pytest

from protocol_helpers import (
    OCI_MANIFEST,
    OCTET_STREAM,
    assert_error,
    assert_raw_error,
    describe,
    digest_of,
    get_manifest,
    new_repo,
    push_blob,
    push_image,
    put_manifest,
    random_blob,
    raw_request,
    resolve,
    start_upload,
)
from servers import Server, shared_server_fixture, traceback_guard_fixture

server = shared_server_fixture()
no_tracebacks = traceback_guard_fixture()

NAME_ERRORS = {"NAME_INVALID", "NAME_UNKNOWN"}

INVALID_NAMES = {
    "uppercase": "UPPER/case",
    "dot-dot-component": "a/../b",
    "leading-dot-dot": "../x",
    "percent-encoded-dot-dot": "a/%2e%2e/b",
    "empty-segment": "a//b",
    "leading-separator": "-a/b",
    "trailing-separator": "a-/b",
    "double-dot-separator": "a..b/c",
    "triple-underscore": "a___b/c",
    "space": "a%20b/c",
    "too-long": "a" * 256,
    "too-long-multi": "/".join(["abcdefghij"] * 24),  # 263 characters
}


@pytest.mark.parametrize("name", INVALID_NAMES.values(), ids=INVALID_NAMES.keys())
@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", "/tags/list"), ("POST", "/blobs/uploads/"), ("GET", "/manifests/latest"), ("PUT", "/manifests/latest")],
    ids=["tags", "upload", "get-manifest", "put-manifest"],
)
def test_invalid_repository_name_is_rejected_with_an_oci_error(
    server: Server, name: str, method: str, suffix: str
) -> None:
    body = b'{"schemaVersion":2}' if method == "PUT" else b""
    headers = {"Content-Type": OCI_MANIFEST} if method == "PUT" else {}
    status, resp_headers, resp_body = raw_request(server, method, f"/v2/{name}{suffix}", body, headers)
    assert_raw_error(
        status,
        resp_headers,
        resp_body,
        {400, 404},
        NAME_ERRORS | {"MANIFEST_INVALID"} if method == "PUT" else NAME_ERRORS,
    )


@pytest.mark.parametrize("name", ["UPPER/case", "a" * 256, "a..b/c"], ids=["uppercase", "too-long", "dot-dot"])
def test_syntactically_invalid_routable_name_is_name_invalid(http: httpx.Client, name: str) -> None:
    assert_error(http.get(f"/v2/{name}/tags/list"), 400, "NAME_INVALID")
    assert_error(http.post(f"/v2/{name}/blobs/uploads/"), 400, "NAME_INVALID")


@pytest.mark.parametrize(
    "name",
    ["a" * 255, "a__b/c-d/e.f", "a--b/0", "x/" + "/".join(["y"] * 20), "ab.cd_ef/g"],
    ids=["255-chars", "all-separators", "dashes", "deep", "mixed"],
)
def test_valid_edge_case_names_are_accepted(http: httpx.Client, name: str) -> None:
    data = random_blob(100)
    digest = push_blob(http, name, data)
    push_image(http, name, "v1", layer_count=1)
    assert http.get(f"/v2/{name}/blobs/{digest}").content == data
    resp = http.get(f"/v2/{name}/tags/list")
    assert resp.status_code == 200, describe(resp)
    assert resp.json() == {"name": name, "tags": ["v1"]}


@pytest.mark.parametrize(
    "tag",
    ["-bad", ".bad", "a" * 129, "a%20b", "a%2Fb", "bad!", "t@g"],
    ids=["leading-dash", "leading-dot", "129-chars", "space", "slash", "bang", "at"],
)
@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE", "PUT"])
def test_an_invalid_tag_is_a_manifest_that_cannot_exist(
    server: Server, http: httpx.Client, tag: str, method: str
) -> None:
    """404 MANIFEST_UNKNOWN for every method, as distribution answers (tests/test_status_alignment.py)."""
    repo = new_repo()
    pushed = push_image(http, repo, "v1")
    body = pushed.body if method == "PUT" else b""
    status, headers, resp_body = raw_request(
        server, method, f"/v2/{repo}/manifests/{tag}", body, {"Content-Type": OCI_MANIFEST}
    )
    assert status == 404, (status, resp_body)
    if method != "HEAD":  # a decoded slash (a%2Fb) may leave the path unroutable: NAME_UNKNOWN then
        codes = {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"} if tag == "a%2Fb" else {"MANIFEST_UNKNOWN"}
        assert_raw_error(status, headers, resp_body, {404}, codes)
    tags = http.get(f"/v2/{repo}/tags/list").json()["tags"]
    assert tags == ["v1"]


@pytest.mark.parametrize(
    "tag", ["a" * 128, "_under", "A.b-C_d", "0"], ids=["128-chars", "underscore", "mixed-case", "digit"]
)
def test_valid_edge_case_tags_are_accepted(http: httpx.Client, tag: str) -> None:
    repo = new_repo()
    pushed = push_image(http, repo)
    resp = put_manifest(http, repo, tag, pushed.body, OCI_MANIFEST)
    assert resp.status_code == 201, describe(resp)
    assert get_manifest(http, repo, tag).content == pushed.body


@pytest.mark.parametrize("reference", ["sha256:xyz", "sha256:" + "a" * 63, "md5:" + "a" * 32])
def test_manifest_reference_with_malformed_digest_is_an_error_not_a_crash(http: httpx.Client, reference: str) -> None:
    repo = new_repo()
    push_image(http, repo, "v1")
    resp = get_manifest(http, repo, reference)
    if resp.status_code == 404:
        assert_error(resp, 404, "MANIFEST_UNKNOWN")
    else:
        assert_error(resp, 400, {"DIGEST_INVALID", "MANIFEST_INVALID", "NAME_INVALID"})


@pytest.mark.parametrize("bad", ["sha256:xyz", "sha256:" + "A" * 64, "latest", "md5:" + "a" * 32])
def test_blob_reference_with_malformed_digest_is_an_error_not_a_crash(http: httpx.Client, bad: str) -> None:
    repo = new_repo()
    push_blob(http, repo, random_blob(10))
    resp = http.get(f"/v2/{repo}/blobs/{bad}")
    if resp.status_code == 404:
        assert_error(resp, 404, "BLOB_UNKNOWN")
    else:
        assert_error(resp, 400, "DIGEST_INVALID")


@pytest.mark.parametrize(
    "content_range",
    ["abc", "0-", "50-10", "0-199", "-5-94"],
    ids=["garbage", "open-end", "end-before-start", "length-mismatch", "negative"],
)
def test_malformed_content_range_on_patch_is_400_or_416(http: httpx.Client, content_range: str) -> None:
    location = start_upload(http, new_repo())
    resp = http.patch(
        location, content=random_blob(100), headers={"Content-Type": OCTET_STREAM, "Content-Range": content_range}
    )
    assert resp.status_code in (400, 416), describe(resp)
    if resp.status_code == 400:
        assert_error(resp, 400, {"BLOB_UPLOAD_INVALID", "SIZE_INVALID", "DIGEST_INVALID"})


def test_patch_to_an_unknown_session_is_blob_upload_unknown(http: httpx.Client) -> None:
    repo = new_repo()
    location = start_upload(http, repo)
    bogus = location.copy_with(path=location.path.rstrip("/").rsplit("/", 1)[0] + "/not-a-session")
    resp = http.patch(bogus, content=b"abc", headers={"Content-Type": OCTET_STREAM, "Content-Range": "0-2"})
    assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/{repo}/blobs/sha256:" + "0" * 64),
        ("DELETE", "/v2/{repo}/blobs/sha256:" + "0" * 64),
        ("GET", "/v2/{repo}/manifests/missing"),
        ("DELETE", "/v2/{repo}/manifests/missing"),
        ("GET", "/v2/{other}/tags/list"),
        ("GET", "/v2/{repo}/blobs/uploads/00000000-0000-0000-0000-000000000000"),
        ("PUT", "/v2/{repo}/manifests/v2"),
    ],
)
def test_every_error_response_is_an_oci_json_error(http: httpx.Client, method: str, path: str) -> None:
    repo, other = new_repo(), new_repo()
    push_image(http, repo, "v1")
    resp = http.request(
        method,
        path.format(repo=repo, other=other),
        content=b"{" if method == "PUT" else None,
        headers={"Content-Type": OCI_MANIFEST} if method == "PUT" else {},
    )
    assert 400 <= resp.status_code < 500, describe(resp)
    assert_error(resp, resp.status_code)


def test_upload_location_is_resolvable_against_the_base_url(http: httpx.Client) -> None:
    resp = http.post(f"/v2/{new_repo()}/blobs/uploads/")
    assert resp.status_code == 202, describe(resp)
    location = resolve(http, resp.headers.get("location"))
    assert location.host == "127.0.0.1"
    assert http.get(location).status_code == 204


def test_unknown_endpoint_under_v2_is_a_404_not_a_crash(http: httpx.Client) -> None:
    resp = http.get(f"/v2/{new_repo()}/nonsense/{digest_of(b'x')}")
    assert resp.status_code in (400, 404, 405), describe(resp)
