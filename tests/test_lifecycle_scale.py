"""Scale: a project filled to the 20,000-build cap, then one more save evicts exactly the oldest build.

Saving 20,000 builds through HTTP one by one takes far longer than CI allows, so the test owns the data
directory and fills the server's own database *before* starting the server:

* the two oldest builds go through the real store code (``ControlStore.create_build`` →
  ``MetadataStore.put_manifest`` → ``ControlStore.mark_saved``), so the builds the assertions are about
  are exactly what a save produces;
* the other 19,998 are bulk-inserted rows copied from the second one (same shape: a small image whose
  manifest shares one config and one layer blob, made unique by an annotation; its build-ID tag, its
  references, a saved build row with sizes), with later save times;
* the 20,001st build is made through the real server: create the build over HTTP, push a tiny image,
  save it — which runs the cap through the app's after-save hook.

Then: exactly 20,000 saved builds remain, the oldest is gone and pull-info explains that it was evicted by
the cap, the second oldest is still pullable, and the audit log and history API show the eviction with
its rule.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from cargohold.metadata.control import ControlStore, new_id
from cargohold.metadata.db import Database
from cargohold.metadata.models import Build, LifecycleEvent, Manifest, ManifestReference, Repository, Tag
from cargohold.metadata.store import MetadataStore
from cargohold.oci.digest import Digest
from cargohold.oci.manifest import parse_manifest
from cargohold.storage.filesystem import FilesystemBlobStore
from servers import InProcessServer
from test_lifecycle_support import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, push_image

pytestmark = pytest.mark.slow

CAP = 20_000
ROWS_PER_STATEMENT = 2_000


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(store: FilesystemBlobStore, metadata: MetadataStore, repository: str, data: bytes) -> dict[str, Any]:
    digest = _sha(data)
    upload = hashlib.sha256(b"upload:" + data).hexdigest()[:32]
    store.create_upload(upload)
    writer = store.open_upload(upload)
    writer.write(data)
    writer.close()
    with metadata.transaction() as transaction:
        transaction.link_blob(repository, digest, len(data))
        store.commit_upload(upload, Digest.parse(digest))
    return {"digest": digest, "size": len(data)}


def _manifest(config: dict[str, Any], layer: dict[str, Any], build_id: str) -> bytes:
    """A small image; the annotation makes each build's manifest (and so its digest) unique."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, **config},
            "layers": [{"mediaType": OCI_LAYER, **layer}],
            "annotations": {"org.opencontainers.image.ref.name": build_id},
        },
        sort_keys=True,
    ).encode()


def _real_save(
    control: ControlStore,
    metadata: MetadataStore,
    project_id: str,
    config: dict[str, Any],
    layer: dict[str, Any],
    saved_at: datetime,
) -> str:
    build = control.create_build(project_id)
    payload = _manifest(config, layer, build.id)
    metadata.put_manifest(project_id, _sha(payload), payload, parse_manifest(payload, OCI_MANIFEST), [build.id])
    control.mark_saved(build.id, platforms=["linux/amd64"], now=saved_at)
    return build.id


def fill_to_cap(data_dir: Path) -> tuple[str, str, str]:
    """Create a project holding exactly ``CAP`` saved builds; returns (project, oldest, second oldest)."""
    db = Database(f"sqlite:///{data_dir / 'metadata.db'}")
    db.migrate()
    control, metadata = ControlStore(db), MetadataStore(db)
    store = FilesystemBlobStore(data_dir, fsync=False)
    project = control.create_project("scale", retention=None, max_builds=CAP)
    config = _blob(store, metadata, project.id, b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}')
    layer = _blob(store, metadata, project.id, b"one tiny layer shared by every build")
    base = datetime.now(UTC) - timedelta(days=1)
    oldest = _real_save(control, metadata, project.id, config, layer, base)
    second = _real_save(control, metadata, project.id, config, layer, base + timedelta(seconds=1))

    with db.write() as session:
        template = session.get(Build, second)
        assert template is not None and template.status == "saved"
        repository_id = session.scalar(select(Repository.id).where(Repository.name == project.id))
        next_manifest = (session.scalar(select(func.max(Manifest.id))) or 0) + 1
        builds, manifests, references, tags = [], [], [], []
        for index in range(CAP - 2):
            build_id = new_id()
            payload = _manifest(config, layer, build_id)
            manifest_id = next_manifest + index
            saved_at = base + timedelta(seconds=2, milliseconds=index)
            manifests.append(
                {
                    "id": manifest_id,
                    "repository_id": repository_id,
                    "digest": _sha(payload),
                    "media_type": OCI_MANIFEST,
                    "size": len(payload),
                    "payload": payload,
                    "created_at": saved_at,
                }
            )
            references += [
                {"manifest_id": manifest_id, "digest": config["digest"], "kind": "blob"},
                {"manifest_id": manifest_id, "digest": layer["digest"], "kind": "blob"},
            ]
            tags.append(
                {"repository_id": repository_id, "name": build_id, "manifest_id": manifest_id, "updated_at": saved_at}
            )
            builds.append(
                {
                    "id": build_id,
                    "project_id": project.id,
                    "status": "saved",
                    "created_at": saved_at,
                    "saved_at": saved_at,
                    "expires_at": None,
                    "pinned": False,
                    "manifest_digest": _sha(payload),
                    "media_type": OCI_MANIFEST,
                    "platforms": template.platforms,
                    "total_size": template.total_size,
                    "unique_size": len(payload),
                    "created_by": "scale test",
                }
            )
        for table, rows in ((Manifest, manifests), (ManifestReference, references), (Tag, tags), (Build, builds)):
            for start in range(0, len(rows), ROWS_PER_STATEMENT):
                session.execute(insert(table), rows[start : start + ROWS_PER_STATEMENT])
    with db.read() as session:
        saved = session.scalar(
            select(func.count()).select_from(Build).where(Build.project_id == project.id, Build.status == "saved")
        )
    assert saved == CAP
    db.dispose()
    return project.id, oldest, second


def test_one_save_over_a_full_project_evicts_exactly_the_oldest(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    started = time.monotonic()
    project, oldest, second = fill_to_cap(data_dir)
    filled_in = time.monotonic() - started

    server = InProcessServer(data_dir=data_dir).start()
    try:
        with server.client() as http:
            assert http.get("/api/v1/pull-info", params={"ref": oldest}).status_code == 200

            created = http.post(f"/api/v1/projects/{project}/builds")
            assert created.status_code == 201, created.text
            newest = created.json()["build_id"]
            pushed = push_image(http, project, newest, [b"the newest build's own layer"], "newest")
            assert pushed.status_code == 201, pushed.text  # type: ignore[attr-defined]
            save_started = time.monotonic()
            saved = http.post(f"/api/v1/builds/{newest}/save", json={"save_tags": ["latest"]})
            save_seconds = time.monotonic() - save_started
            assert saved.status_code == 200, saved.text

            gone = http.get("/api/v1/pull-info", params={"ref": oldest})
            assert gone.status_code == 404, gone.text
            message = gone.json()["errors"][0]["message"]
            assert message.startswith(f"build {oldest} was evicted on "), message
            assert f"keeps at most {CAP} saved builds" in message
            manifest = http.get(f"/v2/{project}/manifests/{oldest}")
            assert manifest.status_code == 404 and "was evicted" in manifest.json()["errors"][0]["message"]

            assert http.get("/api/v1/pull-info", params={"ref": second}).status_code == 200
            assert http.get("/api/v1/pull-info", params={"ref": newest}).status_code == 200
            assert http.get(f"/v2/{project}/manifests/{second}").status_code == 200

            events = http.get(f"/api/v1/projects/{project}/history", params={"limit": 5}).json()["events"]
            evictions = [(e["action"], e["rule"], e["build_id"]) for e in events if e["action"] == "evict"]
            assert evictions == [("evict", "cap", oldest)]
            assert "at most 20000" in events[0]["message"]

        db = Database(f"sqlite:///{data_dir / 'metadata.db'}")
        try:
            with db.read() as session:
                saved_count = session.scalar(
                    select(func.count()).select_from(Build).where(Build.project_id == project, Build.status == "saved")
                )
                remaining = set(session.scalars(select(Build.id).where(Build.id.in_([oldest, second, newest]))))
                logged = session.execute(
                    select(LifecycleEvent.build_id, LifecycleEvent.rule).where(
                        LifecycleEvent.project_id == project, LifecycleEvent.action == "evict"
                    )
                ).all()
                oldest_tag = session.scalar(select(func.count()).select_from(Tag).where(Tag.name == oldest))
        finally:
            db.dispose()
        assert saved_count == CAP
        assert remaining == {second, newest}
        assert [tuple(row) for row in logged] == [(oldest, "cap")]
        assert oldest_tag == 0
    finally:
        server.stop()
    assert "Traceback" not in server.log()
    # Not a benchmark, but a save over a full project must stay interactive.
    assert save_seconds < 10, f"the save that evicted took {save_seconds:.1f} s (filling took {filled_in:.1f} s)"
