"""Manifest push, pull, HEAD and delete (distribution-spec v1.1 end-3, end-7, end-9)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from protocol_helpers import (
    ALGORITHMS,
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    EMPTY_JSON,
    EMPTY_JSON_DIGEST,
    MANIFEST_SIZE_LIMIT,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Pushed,
    assert_error,
    describe,
    descriptor,
    digest_of,
    get_manifest,
    image_manifest,
    index_manifest,
    new_repo,
    push_artifact,
    push_blob,
    push_image,
    push_index,
    put_manifest,
    random_blob,
    to_bytes,
)
from servers import shared_server_fixture, traceback_guard_fixture

server = shared_server_fixture()
no_tracebacks = traceback_guard_fixture()


def _oci_image(http: httpx.Client, repo: str) -> Pushed:
    return push_image(http, repo, "v1")


def _docker_image(http: httpx.Client, repo: str) -> Pushed:
    return push_image(http, repo, "v1", media_type=DOCKER_MANIFEST)


def _oci_index(http: httpx.Client, repo: str) -> Pushed:
    return push_index(http, repo, "v1")[0]


def _docker_list(http: httpx.Client, repo: str) -> Pushed:
    return push_index(http, repo, "v1", media_type=DOCKER_LIST)[0]


KINDS: dict[str, Callable[[httpx.Client, str], Pushed]] = {
    "oci-manifest": _oci_image,
    "oci-index": _oci_index,
    "docker-manifest": _docker_image,
    "docker-list": _docker_list,
}


def assert_manifest_served(resp: httpx.Response, pushed: Pushed) -> None:
    assert resp.status_code == 200, describe(resp)
    assert resp.content == pushed.body
    assert resp.headers.get("docker-content-digest") == pushed.digest
    assert digest_of(resp.content, pushed.digest.split(":")[0]) == pushed.digest
    assert resp.headers.get("content-type", "").split(";")[0] == pushed.media_type


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_put_manifest_by_tag_returns_201_location_and_digest(http: httpx.Client, algorithm: str) -> None:
    repo = new_repo()
    config, layer = random_blob(300), random_blob(3000)
    push_blob(http, repo, config, algorithm)
    push_blob(http, repo, layer, algorithm)
    body = to_bytes(
        image_manifest(descriptor(OCI_CONFIG, config, algorithm), [descriptor(OCI_LAYER_GZIP, layer, algorithm)])
    )
    resp = put_manifest(http, repo, "latest", body, OCI_MANIFEST)
    assert resp.status_code == 201, describe(resp)
    assert resp.headers.get("location"), describe(resp)
    assert resp.headers.get("docker-content-digest") in (digest_of(body), digest_of(body, algorithm))


@pytest.mark.parametrize("kind", KINDS)
def test_manifest_is_served_byte_exact_by_tag_and_by_digest(http: httpx.Client, kind: str) -> None:
    repo = new_repo()
    pushed = KINDS[kind](http, repo)
    assert_manifest_served(get_manifest(http, repo, "v1"), pushed)
    assert_manifest_served(get_manifest(http, repo, pushed.digest), pushed)


@pytest.mark.parametrize("kind", KINDS)
def test_head_manifest_reports_length_digest_and_type_without_body(http: httpx.Client, kind: str) -> None:
    repo = new_repo()
    pushed = KINDS[kind](http, repo)
    for reference in ("v1", pushed.digest):
        resp = http.head(f"/v2/{repo}/manifests/{reference}", headers={"Accept": pushed.media_type})
        assert resp.status_code == 200, describe(resp)
        assert resp.content == b""
        assert resp.headers.get("content-length") == str(len(pushed.body))
        assert resp.headers.get("docker-content-digest") == pushed.digest
        assert resp.headers.get("content-type", "").split(";")[0] == pushed.media_type


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("accept", [None, "*/*", "matching"])
def test_manifest_is_served_for_a_matching_wildcard_or_missing_accept(
    http: httpx.Client, kind: str, accept: str | None
) -> None:
    repo = new_repo()
    pushed = KINDS[kind](http, repo)
    request = http.build_request("GET", f"/v2/{repo}/manifests/v1")
    if accept is None:
        del request.headers["Accept"]  # httpx sends "Accept: */*" by default
    else:
        request.headers["Accept"] = pushed.media_type if accept == "matching" else accept
    assert_manifest_served(http.send(request), pushed)


def test_index_requested_with_image_manifest_accept_is_served_as_is_or_unknown(http: httpx.Client) -> None:
    repo = new_repo()
    pushed = push_index(http, repo, "v1")[0]
    resp = get_manifest(http, repo, "v1", accept=OCI_MANIFEST)
    if resp.status_code == 200:
        assert_manifest_served(resp, pushed)
    else:
        assert_error(resp, (404, 406), {"MANIFEST_UNKNOWN", "UNSUPPORTED"})


def test_manifest_pushed_by_sha512_digest_is_served_by_that_digest(http: httpx.Client) -> None:
    repo = new_repo()
    pushed = push_image(http, repo, algorithm="sha512")  # pushed by its sha512 digest
    assert pushed.digest.startswith("sha512:")
    resp = get_manifest(http, repo, pushed.digest)
    assert resp.status_code == 200, describe(resp)
    assert resp.content == pushed.body
    assert resp.headers.get("docker-content-digest") in (pushed.digest, digest_of(pushed.body))
    head = http.head(f"/v2/{repo}/manifests/{pushed.digest}", headers={"Accept": OCI_MANIFEST})
    assert head.status_code == 200, describe(head)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_put_by_digest_that_does_not_match_the_body_is_digest_invalid(http: httpx.Client, algorithm: str) -> None:
    repo = new_repo()
    pushed = push_image(http, repo, "v1")
    other = to_bytes({**pushed.manifest, "annotations": {"x": "y"}})
    wrong = digest_of(pushed.body, algorithm)
    assert_error(put_manifest(http, repo, wrong, other, OCI_MANIFEST), 400, "DIGEST_INVALID")
    assert_error(get_manifest(http, repo, digest_of(other)), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("missing", ["config", "layer"])
def test_manifest_referencing_a_missing_blob_is_manifest_blob_unknown(http: httpx.Client, missing: str) -> None:
    repo = new_repo()
    config, layer = random_blob(200), random_blob(2000)
    if missing != "config":
        push_blob(http, repo, config)
    if missing != "layer":
        push_blob(http, repo, layer)
    body = to_bytes(image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER_GZIP, layer)]))
    assert_error(put_manifest(http, repo, "v1", body, OCI_MANIFEST), 400, "MANIFEST_BLOB_UNKNOWN")
    assert_error(get_manifest(http, repo, "v1"), 404, {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})


def test_index_referencing_a_missing_child_manifest_is_manifest_blob_unknown(http: httpx.Client) -> None:
    repo = new_repo()
    child = push_image(http, repo)
    ghost = to_bytes({**child.manifest, "annotations": {"ghost": "1"}})
    body = to_bytes(index_manifest([child.descriptor(), descriptor(OCI_MANIFEST, ghost)]))
    assert_error(put_manifest(http, repo, "v1", body, OCI_INDEX), 400, "MANIFEST_BLOB_UNKNOWN")


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[1, 2, 3]",
        json.dumps({"schemaVersion": 1, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}).encode(),
        json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode(),
        json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": "nope", "layers": []}).encode(),
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": "sha256:zz", "size": 2},
                "layers": [],
            }
        ).encode(),
    ],
    ids=[
        "truncated-json",
        "empty",
        "json-array",
        "schema-version-1",
        "no-config",
        "config-not-object",
        "bad-descriptor-digest",
    ],
)
def test_malformed_manifest_is_manifest_invalid(http: httpx.Client, body: bytes) -> None:
    resp = put_manifest(http, new_repo(), "v1", body, OCI_MANIFEST)
    assert_error(resp, 400, {"MANIFEST_INVALID", "DIGEST_INVALID"} if b"sha256:zz" in body else "MANIFEST_INVALID")


@pytest.mark.parametrize("media_type", [DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA1])
def test_docker_schema1_manifest_is_rejected(http: httpx.Client, media_type: str) -> None:
    repo = new_repo()
    layer = random_blob(100)
    push_blob(http, repo, layer)
    body = to_bytes(
        {
            "schemaVersion": 1,
            "name": repo,
            "tag": "v1",
            "architecture": "amd64",
            "fsLayers": [{"blobSum": digest_of(layer)}],
            "history": [{"v1Compatibility": json.dumps({"id": "a" * 64})}],
        }
    )
    resp = put_manifest(http, repo, "v1", body, media_type)
    assert_error(resp, (400, 415), {"MANIFEST_INVALID", "UNSUPPORTED"})


def test_media_type_field_contradicting_content_type_is_manifest_invalid(http: httpx.Client) -> None:
    repo = new_repo()
    pushed = push_image(http, repo)
    assert_error(put_manifest(http, repo, "v1", pushed.body, DOCKER_MANIFEST), 400, "MANIFEST_INVALID")
    assert_error(put_manifest(http, repo, "v2", pushed.body, OCI_INDEX), 400, "MANIFEST_INVALID")


def test_manifest_of_four_megabytes_is_accepted(http: httpx.Client) -> None:
    repo = new_repo()
    base = push_image(http, repo)
    manifest = {**base.manifest, "annotations": {"pad": ""}}
    padding = 4_000_000 - len(to_bytes(manifest))
    manifest["annotations"]["pad"] = "p" * padding
    body = to_bytes(manifest)
    assert len(body) == 4_000_000
    resp = put_manifest(http, repo, "big", body, OCI_MANIFEST)
    assert resp.status_code == 201, describe(resp)
    assert get_manifest(http, repo, "big").content == body


def test_manifest_over_four_mebibytes_is_refused(http: httpx.Client) -> None:
    repo = new_repo()
    base = push_image(http, repo)
    manifest = {**base.manifest, "annotations": {"pad": "p" * (MANIFEST_SIZE_LIMIT + 1000)}}
    resp = put_manifest(http, repo, "huge", to_bytes(manifest), OCI_MANIFEST)
    assert_error(resp, (400, 413), {"SIZE_INVALID", "MANIFEST_INVALID"})
    assert_error(get_manifest(http, repo, "huge"), 404, "MANIFEST_UNKNOWN")


def test_artifact_with_empty_config_pushes_and_pulls(http: httpx.Client) -> None:
    repo = new_repo()
    assert digest_of(EMPTY_JSON) == EMPTY_JSON_DIGEST
    artifact = push_artifact(http, repo, subject=None, reference="sbom")
    assert artifact.manifest["config"] == {"mediaType": OCI_EMPTY, "digest": EMPTY_JSON_DIGEST, "size": 2}
    assert_manifest_served(get_manifest(http, repo, "sbom"), artifact)
    blob = http.get(f"/v2/{repo}/blobs/{EMPTY_JSON_DIGEST}")
    assert blob.status_code == 200 and blob.content == EMPTY_JSON, describe(blob)


def test_artifact_without_layers_is_accepted(http: httpx.Client) -> None:
    repo = new_repo()
    push_blob(http, repo, EMPTY_JSON)
    body = to_bytes(
        image_manifest(descriptor(OCI_EMPTY, EMPTY_JSON), [], artifact_type="application/vnd.example.marker")
    )
    resp = put_manifest(http, repo, "marker", body, OCI_MANIFEST)
    assert resp.status_code == 201, describe(resp)
    assert get_manifest(http, repo, "marker").content == body


@pytest.mark.parametrize("where", ["artifactType", "config"])
def test_an_artifact_type_longer_than_a_media_type_can_be_is_manifest_invalid(http: httpx.Client, where: str) -> None:
    """RFC 6838 media types have at most 127 + 1 + 127 characters; a longer artifact type is refused as
    invalid on every database (PostgreSQL's varchar(255) column used to turn it into a 500)."""
    repo = new_repo()
    push_blob(http, repo, EMPTY_JSON)
    long_type = "application/vnd.example." + "x" * 240
    config = descriptor(long_type if where == "config" else OCI_EMPTY, EMPTY_JSON)
    manifest = image_manifest(config, [], artifact_type=long_type if where == "artifactType" else None)
    resp = put_manifest(http, repo, "long", to_bytes(manifest), OCI_MANIFEST)
    assert_error(resp, 400, "MANIFEST_INVALID")
    assert "media type has at most 255" in resp.json()["errors"][0]["message"]


@pytest.mark.parametrize("subject_exists", [True, False], ids=["subject-present", "subject-missing"])
def test_manifest_with_subject_gets_oci_subject_header(http: httpx.Client, subject_exists: bool) -> None:
    repo = new_repo()
    if subject_exists:
        subject = push_image(http, repo, "v1").descriptor()
    else:
        subject = descriptor(OCI_MANIFEST, random_blob(500))
    push_blob(http, repo, EMPTY_JSON)
    body = to_bytes(
        image_manifest(
            descriptor(OCI_EMPTY, EMPTY_JSON), [], subject=subject, artifact_type="application/vnd.example.sig"
        )
    )
    resp = put_manifest(http, repo, digest_of(body), body, OCI_MANIFEST)
    assert resp.status_code == 201, describe(resp)
    assert resp.headers.get("oci-subject") == subject["digest"], describe(resp)
    assert get_manifest(http, repo, digest_of(body)).content == body


def test_delete_manifest_by_digest_removes_it_and_its_tags(http: httpx.Client) -> None:
    repo = new_repo()
    pushed = push_image(http, repo, "v1")
    resp = http.delete(f"/v2/{repo}/manifests/{pushed.digest}")
    assert resp.status_code == 202, describe(resp)
    assert_error(get_manifest(http, repo, pushed.digest), 404, "MANIFEST_UNKNOWN")
    assert_error(get_manifest(http, repo, "v1"), 404, "MANIFEST_UNKNOWN")
    assert http.head(f"/v2/{repo}/manifests/v1").status_code == 404


def test_delete_by_tag_removes_only_that_tag(http: httpx.Client) -> None:
    repo = new_repo()
    pushed = push_image(http, repo, "v1")
    retag = put_manifest(http, repo, "v2", pushed.body, OCI_MANIFEST)
    assert retag.status_code == 201, describe(retag)
    resp = http.delete(f"/v2/{repo}/manifests/v1")
    assert resp.status_code == 202, describe(resp)
    assert_error(get_manifest(http, repo, "v1"), 404, "MANIFEST_UNKNOWN")
    assert_manifest_served(get_manifest(http, repo, "v2"), pushed)
    assert_manifest_served(get_manifest(http, repo, pushed.digest), pushed)


def test_deleted_manifest_can_be_pushed_again(http: httpx.Client) -> None:
    repo = new_repo()
    pushed = push_image(http, repo, "v1")
    assert http.delete(f"/v2/{repo}/manifests/{pushed.digest}").status_code == 202
    assert put_manifest(http, repo, "v1", pushed.body, OCI_MANIFEST).status_code == 201
    assert_manifest_served(get_manifest(http, repo, "v1"), pushed)


def test_delete_unknown_manifest_is_manifest_unknown(http: httpx.Client) -> None:
    repo = new_repo()
    push_image(http, repo, "v1")
    assert_error(http.delete(f"/v2/{repo}/manifests/{digest_of(random_blob(10))}"), 404, "MANIFEST_UNKNOWN")
    assert_error(http.delete(f"/v2/{repo}/manifests/nope"), 404, "MANIFEST_UNKNOWN")


def test_unknown_tag_and_digest_are_manifest_unknown(http: httpx.Client) -> None:
    repo = new_repo()
    push_image(http, repo, "v1")
    assert_error(get_manifest(http, repo, "v2"), 404, "MANIFEST_UNKNOWN")
    assert_error(get_manifest(http, repo, digest_of(random_blob(10))), 404, "MANIFEST_UNKNOWN")
    assert_error(get_manifest(http, repo, digest_of(random_blob(10), "sha512")), 404, "MANIFEST_UNKNOWN")
    assert http.head(f"/v2/{repo}/manifests/v2").status_code == 404


def test_manifest_in_unknown_repository_is_404(http: httpx.Client) -> None:
    assert_error(get_manifest(http, new_repo(), "latest"), 404, {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})


def test_retagging_moves_the_tag_to_the_new_manifest(http: httpx.Client) -> None:
    repo = new_repo()
    first = push_image(http, repo, "latest")
    second = push_image(http, repo, "latest")
    assert_manifest_served(get_manifest(http, repo, "latest"), second)
    assert_manifest_served(get_manifest(http, repo, first.digest), first)


def test_docker_manifest_with_docker_media_types_round_trips(http: httpx.Client) -> None:
    repo = new_repo()
    config, layer = random_blob(200), random_blob(1000)
    push_blob(http, repo, config)
    push_blob(http, repo, layer)
    manifest = image_manifest(
        descriptor(DOCKER_CONFIG, config), [descriptor(DOCKER_LAYER_GZIP, layer)], media_type=DOCKER_MANIFEST
    )
    body = to_bytes(manifest, pretty=False)
    resp = put_manifest(http, repo, "compact", body, DOCKER_MANIFEST)
    assert resp.status_code == 201, describe(resp)
    assert resp.headers.get("docker-content-digest") == digest_of(body)
    got = get_manifest(http, repo, "compact")
    assert got.content == body
    assert got.headers.get("content-type", "").split(";")[0] == DOCKER_MANIFEST


def test_index_whose_child_is_only_in_another_repository_is_manifest_blob_unknown(http: httpx.Client) -> None:
    repo, other = new_repo(), new_repo()
    child = push_image(http, other)
    body = to_bytes(index_manifest([child.descriptor()]))
    assert_error(put_manifest(http, repo, "v1", body, OCI_INDEX), 400, "MANIFEST_BLOB_UNKNOWN")


def test_oci_manifest_without_media_type_field_uses_the_content_type(http: httpx.Client) -> None:
    repo = new_repo()
    config, layer = random_blob(200), random_blob(1000)
    push_blob(http, repo, config)
    push_blob(http, repo, layer)
    manifest = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER_GZIP, layer)])
    del manifest["mediaType"]
    body = to_bytes(manifest)
    resp = put_manifest(http, repo, "v1", body, OCI_MANIFEST)
    assert resp.status_code == 201, describe(resp)
    got = get_manifest(http, repo, "v1")
    assert got.content == body
    assert got.headers.get("content-type", "").split(";")[0] == OCI_MANIFEST
