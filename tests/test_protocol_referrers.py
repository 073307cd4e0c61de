"""The referrers API (distribution-spec v1.1 end-12a/12b)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from protocol_helpers import (
    OCI_CONFIG,
    OCI_INDEX,
    assert_error,
    describe,
    digest_of,
    new_repo,
    push_artifact,
    push_image,
    push_index,
    random_blob,
)
from servers import shared_server_fixture, traceback_guard_fixture

server = shared_server_fixture()
no_tracebacks = traceback_guard_fixture()

SBOM = "application/vnd.example.sbom.v1+json"
SIG = "application/vnd.example.signature.v1"


def referrers(http: httpx.Client, repo: str, digest: str, **params: str) -> httpx.Response:
    return http.get(f"/v2/{repo}/referrers/{digest}", params=params)


def listed(resp: httpx.Response) -> list[dict[str, Any]]:
    """Validate the response is an OCI image index and return its manifests."""
    assert resp.status_code == 200, describe(resp)
    assert resp.headers.get("content-type", "").split(";")[0] == OCI_INDEX, describe(resp)
    body = resp.json()
    assert body.get("schemaVersion") == 2, describe(resp)
    assert body.get("mediaType") == OCI_INDEX, describe(resp)
    manifests = body.get("manifests")
    assert isinstance(manifests, list), describe(resp)
    return manifests


def by_digest(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["digest"]: entry for entry in entries}


def test_referrers_lists_descriptors_of_manifests_with_that_subject(http: httpx.Client) -> None:
    repo = new_repo()
    image = push_image(http, repo, "v1")
    sbom = push_artifact(http, repo, image.descriptor(), SBOM, annotations={"org.example.kind": "sbom"})
    sig = push_artifact(http, repo, image.descriptor(), SIG)
    push_image(http, repo, "unrelated")
    entries = by_digest(listed(referrers(http, repo, image.digest)))
    assert set(entries) == {sbom.digest, sig.digest}
    assert entries[sbom.digest] == {
        "mediaType": sbom.media_type,
        "digest": sbom.digest,
        "size": len(sbom.body),
        "artifactType": SBOM,
        "annotations": {"org.example.kind": "sbom"},
    }
    assert entries[sig.digest]["artifactType"] == SIG
    assert entries[sig.digest]["size"] == len(sig.body)
    assert entries[sig.digest]["mediaType"] == sig.media_type
    assert not entries[sig.digest].get("annotations")


def test_referrers_artifact_type_falls_back_to_config_media_type(http: httpx.Client) -> None:
    repo = new_repo()
    image = push_image(http, repo, "v1")
    config = b'{"kind": "custom config"}'
    ref = push_artifact(
        http,
        repo,
        image.descriptor(),
        artifact_type=None,
        config_media_type="application/vnd.example.config.v1+json",
        config_data=config,
    )
    entries = by_digest(listed(referrers(http, repo, image.digest)))
    assert entries[ref.digest]["artifactType"] == "application/vnd.example.config.v1+json"


def test_referrers_filter_by_artifact_type(http: httpx.Client) -> None:
    repo = new_repo()
    image = push_image(http, repo, "v1")
    sbom = push_artifact(http, repo, image.descriptor(), SBOM)
    push_artifact(http, repo, image.descriptor(), SIG)
    resp = referrers(http, repo, image.digest, artifactType=SBOM)
    assert [entry["digest"] for entry in listed(resp)] == [sbom.digest]
    assert resp.headers.get("oci-filters-applied") == "artifactType"


def test_referrers_filter_matching_nothing_is_an_empty_filtered_index(http: httpx.Client) -> None:
    repo = new_repo()
    image = push_image(http, repo, "v1")
    push_artifact(http, repo, image.descriptor(), SBOM)
    resp = referrers(http, repo, image.digest, artifactType="application/vnd.example.none")
    assert listed(resp) == []
    assert resp.headers.get("oci-filters-applied") == "artifactType"


def test_referrers_without_filter_does_not_claim_a_filter(http: httpx.Client) -> None:
    repo = new_repo()
    image = push_image(http, repo, "v1")
    push_artifact(http, repo, image.descriptor(), SBOM)
    resp = referrers(http, repo, image.digest)
    assert len(listed(resp)) == 1
    assert "oci-filters-applied" not in resp.headers


def test_referrers_of_a_manifest_with_none_is_an_empty_index(http: httpx.Client) -> None:
    repo = new_repo()
    image = push_image(http, repo, "v1")
    assert listed(referrers(http, repo, image.digest)) == []


def test_referrers_of_an_unknown_digest_is_an_empty_index(http: httpx.Client) -> None:
    repo = new_repo()
    push_image(http, repo, "v1")
    assert listed(referrers(http, repo, digest_of(random_blob(10)))) == []


def test_referrers_in_an_unknown_repository_is_an_empty_index(http: httpx.Client) -> None:
    assert listed(referrers(http, new_repo(), digest_of(random_blob(10)))) == []


def test_referrers_are_listed_even_when_the_subject_is_missing(http: httpx.Client) -> None:
    repo = new_repo()
    subject = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest_of(random_blob(100)),
        "size": 100,
    }
    ref = push_artifact(http, repo, subject, SBOM)
    entries = listed(referrers(http, repo, subject["digest"]))
    assert [entry["digest"] for entry in entries] == [ref.digest]


def test_index_with_a_subject_is_listed_as_a_referrer(http: httpx.Client) -> None:
    repo = new_repo()
    image = push_image(http, repo, "v1")
    index, _ = push_index(http, repo, subject=image.descriptor(), artifact_type=SBOM, children=1)
    entries = by_digest(listed(referrers(http, repo, image.digest)))
    assert entries[index.digest]["mediaType"] == OCI_INDEX
    assert entries[index.digest]["artifactType"] == SBOM
    assert entries[index.digest]["size"] == len(index.body)


def test_deleted_referrer_leaves_the_list(http: httpx.Client) -> None:
    repo = new_repo()
    image = push_image(http, repo, "v1")
    ref = push_artifact(http, repo, image.descriptor(), SBOM)
    assert http.delete(f"/v2/{repo}/manifests/{ref.digest}").status_code == 202
    assert listed(referrers(http, repo, image.digest)) == []


def test_referrers_are_scoped_to_the_repository(http: httpx.Client) -> None:
    repo, other = new_repo(), new_repo()
    image = push_image(http, repo, "v1")
    push_artifact(http, repo, image.descriptor(), SBOM)
    assert listed(referrers(http, other, image.digest)) == []


def test_referrers_of_a_sha512_subject(http: httpx.Client) -> None:
    repo = new_repo()
    image = push_image(http, repo, algorithm="sha512")
    ref = push_artifact(http, repo, image.descriptor(), SBOM)
    assert [entry["digest"] for entry in listed(referrers(http, repo, image.digest))] == [ref.digest]


def test_referrer_config_media_type_is_not_used_when_artifact_type_is_set(http: httpx.Client) -> None:
    repo = new_repo()
    image = push_image(http, repo, "v1")
    ref = push_artifact(
        http,
        repo,
        image.descriptor(),
        SBOM,
        config_media_type=OCI_CONFIG,
        config_data=b'{"architecture":"amd64","os":"linux"}',
    )
    entries = by_digest(listed(referrers(http, repo, image.digest)))
    assert entries[ref.digest]["artifactType"] == SBOM


@pytest.mark.parametrize("bad", ["sha256:xyz", "latest", "sha256:" + "a" * 63, "md5:" + "a" * 32])
def test_referrers_with_an_invalid_digest_is_400(http: httpx.Client, bad: str) -> None:
    repo = new_repo()
    push_image(http, repo, "v1")
    assert_error(referrers(http, repo, bad), 400)
