"""Tag listing with pagination (end-8a/8b) and the (optional, but served here) `_catalog` listing."""

from __future__ import annotations

import re

import httpx
import pytest

from protocol_helpers import (
    OCI_MANIFEST,
    assert_error,
    collect_pages,
    describe,
    new_repo,
    push_image,
    put_manifest,
    random_blob,
)
from servers import shared_server_fixture, traceback_guard_fixture

server = shared_server_fixture()
no_tracebacks = traceback_guard_fixture()

TAGS = ["alpha", "beta", "delta", "epsilon", "gamma"]


def tag_all(http: httpx.Client, repo: str, tags: list[str]) -> None:
    pushed = push_image(http, repo, layer_count=1)
    for tag in tags:
        resp = put_manifest(http, repo, tag, pushed.body, OCI_MANIFEST)
        assert resp.status_code == 201, describe(resp)


@pytest.fixture
def tagged_repo(http: httpx.Client) -> str:
    repo = new_repo()
    tag_all(http, repo, list(reversed(TAGS)))
    return repo


def test_tags_list_returns_name_and_sorted_tags(http: httpx.Client, tagged_repo: str) -> None:
    resp = http.get(f"/v2/{tagged_repo}/tags/list")
    assert resp.status_code == 200, describe(resp)
    assert resp.headers.get("content-type", "").split(";")[0] == "application/json"
    assert resp.json() == {"name": tagged_repo, "tags": TAGS}
    assert "link" not in resp.headers


def test_tags_list_with_n_returns_a_page_and_a_next_link(http: httpx.Client, tagged_repo: str) -> None:
    resp = http.get(f"/v2/{tagged_repo}/tags/list", params={"n": 2})
    assert resp.status_code == 200, describe(resp)
    assert resp.json()["tags"] == TAGS[:2]
    link = resp.headers.get("link", "")
    match = re.fullmatch(r'<([^>]+)>;\s*rel="next"', link)
    assert match, describe(resp)
    target = httpx.URL(match.group(1))
    assert target.path == f"/v2/{tagged_repo}/tags/list"
    assert target.params.get("n") == "2"
    assert target.params.get("last") == TAGS[1]


def test_following_tag_links_yields_every_tag_once_in_order(http: httpx.Client, tagged_repo: str) -> None:
    tags, links = collect_pages(http, f"/v2/{tagged_repo}/tags/list?n=2", "tags")
    assert tags == TAGS
    assert len(links) == 2  # pages of 2, 2, 1


def test_tags_pages_of_exactly_the_remaining_size_end_cleanly(http: httpx.Client, tagged_repo: str) -> None:
    tags, _ = collect_pages(http, f"/v2/{tagged_repo}/tags/list?n=5", "tags")
    assert tags == TAGS


def test_tags_list_with_n_zero_is_empty_without_link(http: httpx.Client, tagged_repo: str) -> None:
    resp = http.get(f"/v2/{tagged_repo}/tags/list", params={"n": 0})
    assert resp.status_code == 200, describe(resp)
    assert resp.json().get("tags") in ([], None)
    assert resp.json().get("name") == tagged_repo
    assert "link" not in resp.headers


def test_tags_list_with_last_starts_after_it(http: httpx.Client, tagged_repo: str) -> None:
    resp = http.get(f"/v2/{tagged_repo}/tags/list", params={"last": "beta"})
    assert resp.status_code == 200, describe(resp)
    assert resp.json()["tags"] == ["delta", "epsilon", "gamma"]


def test_tags_list_with_last_that_is_not_a_tag_uses_lexical_position(http: httpx.Client, tagged_repo: str) -> None:
    resp = http.get(f"/v2/{tagged_repo}/tags/list", params={"last": "c", "n": 2})
    assert resp.status_code == 200, describe(resp)
    assert resp.json()["tags"] == ["delta", "epsilon"]


def test_tags_list_with_n_larger_than_the_count_returns_all(http: httpx.Client, tagged_repo: str) -> None:
    resp = http.get(f"/v2/{tagged_repo}/tags/list", params={"n": 100})
    assert resp.status_code == 200, describe(resp)
    assert resp.json()["tags"] == TAGS
    assert "link" not in resp.headers


@pytest.mark.parametrize("n", ["-1", "abc"])
def test_tags_list_with_invalid_n_is_rejected(http: httpx.Client, tagged_repo: str, n: str) -> None:
    resp = http.get(f"/v2/{tagged_repo}/tags/list", params={"n": n})
    assert_error(resp, 400)


def test_tags_list_of_unknown_repository_is_name_unknown(http: httpx.Client) -> None:
    assert_error(http.get(f"/v2/{new_repo()}/tags/list"), 404, "NAME_UNKNOWN")


def test_deleted_tag_leaves_the_list(http: httpx.Client, tagged_repo: str) -> None:
    assert http.delete(f"/v2/{tagged_repo}/manifests/beta").status_code == 202
    resp = http.get(f"/v2/{tagged_repo}/tags/list")
    assert resp.json()["tags"] == [t for t in TAGS if t != "beta"]


def test_untagged_manifest_does_not_appear_in_tags(http: httpx.Client) -> None:
    repo = new_repo()
    push_image(http, repo)  # by digest only
    tag_all(http, repo, ["only"])
    resp = http.get(f"/v2/{repo}/tags/list")
    assert resp.status_code == 200, describe(resp)
    assert resp.json()["tags"] == ["only"]


def test_catalog_lists_repositories_sorted(http: httpx.Client) -> None:
    prefix = f"cat{random_blob(4).hex()}"
    repos = [f"{prefix}/{name}" for name in ("b", "a", "c/d")]
    for repo in repos:
        push_image(http, repo, "v1", layer_count=1)
    listed, _ = collect_pages(http, "/v2/_catalog", "repositories")
    assert listed == sorted(listed)
    assert [r for r in listed if r.startswith(prefix + "/")] == sorted(repos)


def test_catalog_pagination_yields_every_repository_once(http: httpx.Client) -> None:
    prefix = f"pag{random_blob(4).hex()}"
    for i in range(5):
        push_image(http, f"{prefix}/r{i}", "v1", layer_count=1)
    everything, links = collect_pages(http, "/v2/_catalog?n=2", "repositories")
    assert len(everything) == len(set(everything))
    assert everything == sorted(everything)
    assert [f"{prefix}/r{i}" for i in range(5)] == [r for r in everything if r.startswith(prefix)]
    assert links


def test_catalog_with_last_starts_after_it(http: httpx.Client) -> None:
    prefix = f"lst{random_blob(4).hex()}"
    for name in ("a", "b", "c"):
        push_image(http, f"{prefix}/{name}", "v1", layer_count=1)
    resp = http.get("/v2/_catalog", params={"last": f"{prefix}/a", "n": 2})
    assert resp.status_code == 200, describe(resp)
    assert resp.json()["repositories"] == [f"{prefix}/b", f"{prefix}/c"]
