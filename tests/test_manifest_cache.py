"""The per-process manifest cache: it saves reading manifest bytes, and never serves a manifest that is gone.

Two applications on one data directory stand for two workers of ``cargohold serve --workers 2`` (each has its
own cache, the database is shared); tests/test_workers.py does the same with real worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.domain.manifests import ManifestCache
from cargohold.metadata.store import StoredManifest
from protocol_helpers import get_manifest, new_repo, push_image
from servers import InProcessServer, two_apps_on_one_data_dir


@pytest.fixture(name="workers")
def workers_fixture(tmp_path: Path) -> Iterator[tuple[InProcessServer, InProcessServer]]:
    with two_apps_on_one_data_dir(tmp_path / "data") as pair:
        yield pair


def test_a_cached_manifest_is_served_without_reading_its_bytes_again(
    workers: tuple[InProcessServer, InProcessServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = workers
    repo = new_repo("cache")
    with a.client() as http:
        pushed = push_image(http, repo, "v1")
        first = get_manifest(http, repo, "v1")
        assert first.status_code == 200
        reads: list[str] = []
        store = a.state.metadata
        real = store.get_manifest
        monkeypatch.setattr(store, "get_manifest", lambda *args, **kw: reads.append("x") or real(*args, **kw))
        for reference in ("v1", pushed.digest):
            again = get_manifest(http, repo, reference)
            assert again.status_code == 200 and again.content == first.content
            assert again.headers["Docker-Content-Digest"] == pushed.digest
        assert reads == []


def test_a_manifest_deleted_by_another_worker_is_never_served_from_the_cache(
    workers: tuple[InProcessServer, InProcessServer],
) -> None:
    a, b = workers
    repo = new_repo("cache")
    with a.client() as on_a, b.client() as on_b:
        pushed = push_image(on_a, repo, "v1")
        for reference in ("v1", pushed.digest):
            assert get_manifest(on_a, repo, reference).status_code == 200
        assert len(a.state.manifests.cache) == 1

        deleted = on_b.delete(f"/v2/{repo}/manifests/{pushed.digest}")
        assert deleted.status_code == 202
        for reference in ("v1", pushed.digest):
            gone = get_manifest(on_a, repo, reference)
            assert gone.status_code == 404, reference
            assert gone.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_a_tag_moved_by_another_worker_is_seen_at_once(workers: tuple[InProcessServer, InProcessServer]) -> None:
    a, b = workers
    repo = new_repo("cache")
    with a.client() as on_a, b.client() as on_b:
        old = push_image(on_a, repo, "latest")
        assert get_manifest(on_a, repo, "latest").headers["Docker-Content-Digest"] == old.digest
        new = push_image(on_b, repo, "latest")
        assert new.digest != old.digest
        assert get_manifest(on_a, repo, "latest").headers["Docker-Content-Digest"] == new.digest
        # Untagged but still stored: the old digest is still served, from the cache, as it should be.
        assert get_manifest(on_a, repo, old.digest).status_code == 200


def _manifest(n: int, size: int) -> StoredManifest:
    return StoredManifest(f"sha256:{n:064x}", "application/vnd.oci.image.manifest.v1+json", b"x" * size, None)


def test_the_cache_is_bounded_by_bytes_and_skips_large_manifests() -> None:
    cache = ManifestCache(max_bytes=3000, largest=1500)
    for n in range(4):
        cache.put("r", _manifest(n, 1000))
    assert len(cache) == 3 and cache.size == 3000
    assert cache.get("r", _manifest(0, 1).digest, _manifest(0, 1).media_type) is None  # least recently used: out
    assert cache.get("r", _manifest(3, 1).digest, _manifest(3, 1).media_type) is not None
    cache.put("r", _manifest(9, 2000))
    assert cache.get("r", _manifest(9, 1).digest, _manifest(9, 1).media_type) is None
    assert cache.get("other", _manifest(3, 1).digest, _manifest(3, 1).media_type) is None  # per repository
    assert cache.get("r", _manifest(3, 1).digest, "application/vnd.docker.distribution.manifest.v2+json") is None
    cache.discard("r", _manifest(3, 1).digest)
    assert cache.size == 2000
