"""Retention of images pushed outside builds, end to end: skopeo pushes to a real `cargohold serve`, the
`cargohold tags` CLI lists and pins them, and a second process sweeps the server's database with an injected
clock (as another server process would), so expiry after seven days needs no waiting.

The server itself then tells pulls why the tag is gone, its garbage collection frees the blobs and its
metering stops counting them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cargohold.cli import main as cli_main
from cargohold.isotime import parse_iso
from cargohold.lifecycle.gc import GarbageCollector
from cargohold.lifecycle.tag_retention import TagRetention
from cargohold.metadata.db import Database
from cargohold.sample import write_sample_image, write_sample_index
from cargohold.storage.filesystem import FilesystemBlobStore
from fixtures_images import require_tools, skopeo_copy
from servers import InProcessServer, running
from test_lifecycle_support import FakeClock

pytestmark = pytest.mark.tools


@pytest.fixture
def server(tmp_path: Path) -> Iterator[InProcessServer]:
    """A server that re-measures storage every 0.2 s, so usage can be watched change."""
    proc = InProcessServer(data_dir=tmp_path / "data", settings={"retention_interval": timedelta(seconds=0.2)})
    with running(proc, check_tracebacks=True):
        yield proc


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI's configuration in a temporary file, with no CARGOHOLD_* variables from the environment."""
    path = tmp_path / "cfg" / "config.json"
    monkeypatch.setenv("CARGOHOLD_CONFIG", str(path))
    for name in ("CARGOHOLD_REGISTRY", "CARGOHOLD_TOKEN", "CARGOHOLD_PROJECT_ID", "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)
    return path


def ok(server: InProcessServer, *args: str) -> str:
    """Run the CLI in-process as an admin against ``server``; its standard output (exit status 0 checked)."""
    cli_main._register_command_modules()  # every command, in the CLI's own order
    result = CliRunner().invoke(cli_main.app, [*args, "--registry", server.url, "--token", server.admin_token])
    assert result.exit_code == 0, f"{args}: {result.stderr or result.stdout}"
    return result.stdout


def ok_json(server: InProcessServer, *args: str) -> dict[str, object]:
    data = json.loads(ok(server, *args, "--json"))
    assert isinstance(data, dict)
    return data


def _stored_bytes(http: httpx.Client, project: str) -> int:
    usage = http.get(f"/api/v1/projects/{project}/usage")
    assert usage.status_code == 200, usage.text
    return int(usage.json()["stored_bytes"])


def _wait_for_usage(http: httpx.Client, project: str, condition: object, what: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stored = _stored_bytes(http, project)
        if condition(stored):  # type: ignore[operator]
            return stored
        time.sleep(0.1)
    raise AssertionError(f"usage of {project} never {what} (last: {stored} bytes)")


def test_skopeo_pushed_tags_expire_pinned_stay_gc_frees_usage_drops(
    server: InProcessServer, tmp_path: Path, config: Path
) -> None:
    require_tools("skopeo")
    with server.client() as http:
        project = http.post("/api/v1/projects", json={"name": "pushed outside builds"}).json()["id"]
    token = server.admin_token
    web = write_sample_image(tmp_path / "web", layers=2, layer_size=4096, seed=1)
    kept = write_sample_image(tmp_path / "kept", layers=1, layer_size=4096, seed=2)
    multi = write_sample_index(tmp_path / "multi", layers=1, layer_size=4096, seed=3, attestations=True)
    skopeo_copy(f"oci:{tmp_path / 'web'}:latest", f"docker://{server.host}/{project}/web:1.0", token)
    skopeo_copy(f"oci:{tmp_path / 'kept'}:latest", f"docker://{server.host}/{project}/web:keep", token)
    skopeo_copy(f"oci:{tmp_path / 'multi'}:latest", f"docker://{server.host}/{project}:nightly", token, "--all")
    pushed = datetime.now(UTC)

    listed = ok_json(server, "tags", "list", "--project", project)
    rows = {(t["repository"], t["tag"]): t for t in listed["tags"]}  # type: ignore[union-attr]
    assert set(rows) == {(f"{project}/web", "1.0"), (f"{project}/web", "keep"), (project, "nightly")}
    one = rows[(f"{project}/web", "1.0")]
    assert one["digest"] == str(web.manifest.digest) and one["pinned"] is False
    assert one["size"] == web.manifest.size + sum(blob.size for blob in web.blobs)
    assert one["reference"] == f"{server.host}/{project}/web:1.0"
    expires = parse_iso(str(one["expires_at"]))
    assert timedelta(days=7) - timedelta(minutes=1) < expires - pushed < timedelta(days=7, minutes=1)
    table = ok(server, "tags", "list", "--project", project, "--repository", "web")
    assert f"Tags of {project}/web pushed outside builds" in table and "nightly" not in table
    assert table.count(f"{project}/web") == 3  # the title and two rows (however narrow the terminal)
    out = ok(server, "tags", "pin", f"{server.host}/{project}/web:keep")
    assert (
        out.strip() == f"Pinned {project}/web:keep; it stays until you run `cargohold tags unpin {project}/web:keep`."
    )

    with server.client() as http:
        before = _wait_for_usage(http, project, lambda stored: stored > 0, "became positive")

        # Another process sweeps eight days later (every server process may; the database is the truth).
        db = Database(f"sqlite:///{server.data_dir / 'metadata.db'}")
        store = FilesystemBlobStore(server.data_dir, fsync=False)
        assert store.size(web.layers[0].digest) == web.layers[0].size
        try:
            later = FakeClock(datetime.now(UTC) + timedelta(days=8))
            retention = TagRetention(db, clock=later)
            assert len(retention.expire(dry_run=True)[0]) == 2 and len(retention.list_tags(project)) == 3
            evicted = retention.expire(actor="sweep")[0]
            assert sorted((e.repository, e.tag) for e in evicted) == [(project, "nightly"), (f"{project}/web", "1.0")]
            retention.collect_untagged(actor="sweep")
            report = GarbageCollector(db, store, clock=later).run()
        finally:
            db.dispose()
        own_blobs = [*web.blobs, *(blob for image in multi.images for blob in image.blobs), *multi.attestation_blobs]
        assert report.completed and report.blobs_deleted == len({blob.digest for blob in own_blobs})

        gone = http.get(
            f"/v2/{project}/web/manifests/1.0", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
        )
        assert gone.status_code == 404
        error = gone.json()["errors"][0]
        assert error["code"] == "MANIFEST_UNKNOWN"
        assert (
            error["message"].startswith(f"tag {project}/web:1.0 expired on ") and "retention 7 days" in error["message"]
        )
        assert http.get(f"/v2/{project}/blobs/{multi.images[0].layers[0].digest}").status_code == 404
        assert http.get(f"/v2/{project}/web/blobs/{web.layers[0].digest}").status_code == 404
        assert http.get(f"/v2/{project}/web/manifests/keep").status_code == 200
        assert http.get(f"/v2/{project}/web/blobs/{kept.layers[0].digest}").status_code == 200
        assert store.size(web.layers[0].digest) is None and store.size(kept.layers[0].digest) is not None

        history = http.get(f"/api/v1/projects/{project}/history").json()["events"]
        assert {(e["action"], e["rule"], e["detail"].get("tag")) for e in history if e["action"] == "evict"} == {
            ("evict", "expired", "1.0"),
            ("evict", "expired", "nightly"),
        }
        assert any(e["action"] == "collect" for e in history) and any(e["action"] == "pin" for e in history)

        kept_bytes = kept.manifest.size + sum(blob.size for blob in kept.blobs)
        after = _wait_for_usage(http, project, lambda stored: stored == kept_bytes, "dropped to the pinned image")
        assert after < before
    remaining = ok_json(server, "tags", "list", "--project", project)["tags"]
    assert [(t["repository"], t["tag"], t["pinned"]) for t in remaining] == [(f"{project}/web", "keep", True)]  # type: ignore[index]
