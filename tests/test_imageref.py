"""Image reference parsing: docker's host heuristic, Docker Hub normalisation, tags and digests."""

from __future__ import annotations

import pytest

from cargohold.oci.digest import Digest
from cargohold.oci.imageref import ImageReference, ImageReferenceError, api_host

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("alpine", "docker.io", "library/alpine", None, None),
        ("alpine:3.20", "docker.io", "library/alpine", "3.20", None),
        ("user/app:v1", "docker.io", "user/app", "v1", None),
        ("docker.io/alpine", "docker.io", "library/alpine", None, None),
        ("index.docker.io/user/app", "docker.io", "user/app", None, None),
        ("registry-1.docker.io/library/busybox:1", "docker.io", "library/busybox", "1", None),
        ("localhost/app", "localhost", "app", None, None),
        ("localhost:5000/app:dev", "localhost:5000", "app", "dev", None),
        ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000", "a/b/c", "t", None),
        ("ghcr.io/org/img@" + D, "ghcr.io", "org/img", None, D),
        ("ghcr.io/org/img:t@" + D, "ghcr.io", "org/img", "t", D),
        ("Registry.Example.COM:443/x", "registry.example.com:443", "x", None, None),
        ("localhostx/app", "docker.io", "localhostx/app", None, None),
    ],
)
def test_parse(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    ref = ImageReference.parse(text)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)
    assert (str(ref.digest) if ref.digest else None) == digest


def test_reference_prefers_digest_and_round_trips() -> None:
    ref = ImageReference.parse(f"127.0.0.1:5000/x:t@{D}")
    assert ref.reference == D
    assert str(ref) == f"127.0.0.1:5000/x:t@{D}"
    assert ImageReference.parse("127.0.0.1:5000/x").with_digest(Digest.parse(D)).reference == D


def test_default_tag_and_missing_reference() -> None:
    assert ImageReference.parse("alpine", default_tag="latest").tag == "latest"
    with pytest.raises(ImageReferenceError, match="neither a tag nor a digest"):
        _ = ImageReference.parse("alpine").reference


def test_docker_hub_api_host() -> None:
    assert ImageReference.parse("alpine").api_host == "registry-1.docker.io"
    assert api_host("127.0.0.1:5000") == "127.0.0.1:5000"


@pytest.mark.parametrize(
    "text",
    ["", "UPPER/case", "x:bad tag", "x@sha256:short", "x@md5:" + "a" * 32, "a//b", "host.io/", ":tag", "x:-t"],
)
def test_invalid(text: str) -> None:
    with pytest.raises(ImageReferenceError):
        ImageReference.parse(text)
