"""Repository isolation: content is only visible in repositories it was pushed or mounted into."""

from __future__ import annotations

import httpx
import pytest

from protocol_helpers import (
    ALGORITHMS,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    assert_error,
    blob_exists,
    describe,
    descriptor,
    digest_of,
    get_manifest,
    image_manifest,
    new_repo,
    push_blob,
    push_image,
    put_manifest,
    random_blob,
    to_bytes,
)
from servers import shared_server_fixture, traceback_guard_fixture

server = shared_server_fixture()
no_tracebacks = traceback_guard_fixture()


def mount(http: httpx.Client, target: str, source: str, digest: str) -> None:
    resp = http.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source})
    assert resp.status_code == 201, describe(resp)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_blob_is_not_readable_from_another_repository(http: httpx.Client, algorithm: str) -> None:
    owner, stranger = "a/" + new_repo(), "b/" + new_repo()
    digest = push_blob(http, owner, random_blob(1000), algorithm)
    push_blob(http, stranger, random_blob(10), algorithm)
    assert http.head(f"/v2/{stranger}/blobs/{digest}").status_code == 404
    assert_error(http.get(f"/v2/{stranger}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


def test_blob_is_not_deletable_from_another_repository(http: httpx.Client) -> None:
    owner, stranger = new_repo(), new_repo()
    digest = push_blob(http, owner, random_blob(1000))
    push_blob(http, stranger, random_blob(10))
    assert_error(http.delete(f"/v2/{stranger}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert blob_exists(http, owner, digest)


def test_manifest_using_a_blob_from_another_repository_is_manifest_blob_unknown(http: httpx.Client) -> None:
    owner, stranger = new_repo(), new_repo()
    config, layer = random_blob(200), random_blob(2000)
    push_blob(http, owner, layer)
    push_blob(http, stranger, config)
    body = to_bytes(image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER_GZIP, layer)]))
    assert_error(put_manifest(http, stranger, "v1", body, OCI_MANIFEST), 400, "MANIFEST_BLOB_UNKNOWN")


def test_mounted_blob_is_readable_and_usable_in_a_manifest(http: httpx.Client) -> None:
    owner, target = new_repo(), new_repo()
    config, layer = random_blob(200), random_blob(2000)
    layer_digest = push_blob(http, owner, layer)
    mount(http, target, owner, layer_digest)
    push_blob(http, target, config)
    assert http.get(f"/v2/{target}/blobs/{layer_digest}").content == layer
    body = to_bytes(image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER_GZIP, layer)]))
    resp = put_manifest(http, target, "v1", body, OCI_MANIFEST)
    assert resp.status_code == 201, describe(resp)


def test_blob_delete_in_source_does_not_affect_a_mounted_copy(http: httpx.Client) -> None:
    owner, target, data = new_repo(), new_repo(), random_blob(3000)
    digest = push_blob(http, owner, data)
    mount(http, target, owner, digest)
    assert http.delete(f"/v2/{owner}/blobs/{digest}").status_code == 202
    assert not blob_exists(http, owner, digest)
    resp = http.get(f"/v2/{target}/blobs/{digest}")
    assert resp.status_code == 200, describe(resp)
    assert resp.content == data


def test_blob_delete_in_one_repository_keeps_an_independent_upload_elsewhere(http: httpx.Client) -> None:
    first, second, data = new_repo(), new_repo(), random_blob(3000)
    digest = push_blob(http, first, data)
    push_blob(http, second, data)
    assert http.delete(f"/v2/{second}/blobs/{digest}").status_code == 202
    assert http.get(f"/v2/{first}/blobs/{digest}").content == data
    assert not blob_exists(http, second, digest)


def test_manifest_is_not_readable_from_another_repository(http: httpx.Client) -> None:
    owner, stranger = new_repo(), new_repo()
    pushed = push_image(http, owner, "v1")
    push_image(http, stranger, "v1")
    assert_error(get_manifest(http, stranger, pushed.digest), 404, "MANIFEST_UNKNOWN")
    assert_error(http.delete(f"/v2/{stranger}/manifests/{pushed.digest}"), 404, "MANIFEST_UNKNOWN")
    assert get_manifest(http, owner, pushed.digest).status_code == 200


def test_tags_are_per_repository(http: httpx.Client) -> None:
    first, second = new_repo(), new_repo()
    one = push_image(http, first, "shared")
    two = push_image(http, second, "shared")
    assert get_manifest(http, first, "shared").content == one.body
    assert get_manifest(http, second, "shared").content == two.body
    assert http.delete(f"/v2/{first}/manifests/shared").status_code == 202
    assert get_manifest(http, second, "shared").content == two.body


def test_nested_repository_names_are_distinct_repositories(http: httpx.Client) -> None:
    parent = new_repo()
    child = f"{parent}/child"
    digest = push_blob(http, parent, random_blob(500))
    push_blob(http, child, random_blob(10))
    assert not blob_exists(http, child, digest)
    assert digest_of(http.get(f"/v2/{parent}/blobs/{digest}").content) == digest
