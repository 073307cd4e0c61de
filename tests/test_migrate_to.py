"""``cargohold db migrate-to``: a SQLite + filesystem install moved to PostgreSQL (and another blob directory),
then served from there: the same images by digest, the same tokens, builds, trust and usage."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cargohold.metadata.db import Database, sqlite_url
from cargohold.metadata.models import Blob, Tag
from cargohold.oci.digest import Digest
from cargohold.ops.migrate import MigrationError, migrate_to
from cargohold.storage.filesystem import FilesystemBlobStore
from control_helpers import api, http, push_image
from s3server import S3Bucket
from servers import InProcessServer, assert_no_traceback


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cargohold", *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def old_install(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A stopped SQLite + filesystem server that saw builds, tags, tokens, trust and usage."""
    base = tmp_path_factory.mktemp("old")
    data_dir = base / "data"
    server = InProcessServer(data_dir=data_dir, settings={"database_url": sqlite_url(data_dir / "metadata.db")})
    server.start()
    try:
        with api(server) as admin:
            project = admin.create_project("moving", retention_seconds=None)
            build = admin.create_build(project.id)
            image = push_image(server, project.id, build.build_id, build.token, base / "layout")
            admin.save_build(build.build_id, save_tags=["stable"])
            token = admin.create_token("project", "ci", project_id=project.id).token
            admin.add_trust(project.id, repository="octo/moving")
            usage = admin.project_usage(project.id)
    finally:
        server.stop()
    return {
        "data_dir": data_dir,
        "project": project.id,
        "build": build.build_id,
        "repository": project.id,
        "image": image,
        "token": token,
        "stored_bytes": usage.stored_bytes,
    }


def test_an_install_moves_to_postgresql_and_serves_the_same_images_and_tokens(
    old_install: dict[str, object], pg_url: str, tmp_path: Path
) -> None:
    source_dir = old_install["data_dir"]
    assert isinstance(source_dir, Path)
    target_dir = tmp_path / "new-data"
    moved = cli(
        "db", "migrate-to", pg_url, "--target-storage-url", f"file://{target_dir}", "--data-dir", str(source_dir)
    )
    assert moved.returncode == 0, moved.stderr
    assert "migrated" in moved.stdout and "blobs: " in moved.stdout
    assert pg_url.split("@")[0].split(":")[-1] not in moved.stdout + moved.stderr  # the password is not echoed

    again = cli("db", "migrate-to", pg_url, "--data-dir", str(source_dir))
    assert again.returncode != 0
    assert "already holds data" in again.stderr and "Traceback" not in again.stderr

    assert not (target_dir / "keys").exists()  # the signing keys are rows of the database: they moved with it
    server = InProcessServer(data_dir=target_dir, settings={"database_url": pg_url})
    server.start()
    try:
        assert server.state.metadata.db.url == pg_url
        image = old_install["image"]
        repository = old_install["repository"]
        with http(server, str(old_install["token"])) as client:  # the project token still works
            manifest = client.get(f"/v2/{repository}/manifests/{image.manifest.digest}")  # type: ignore[attr-defined]
            assert manifest.status_code == 200, manifest.text
            assert "sha256:" + hashlib.sha256(manifest.content).hexdigest() == str(image.manifest.digest)  # type: ignore[attr-defined]
            for blob in image.blobs:  # type: ignore[attr-defined]
                response = client.get(f"/v2/{repository}/blobs/{blob.digest}")
                assert response.status_code == 200
                assert "sha256:" + hashlib.sha256(response.content).hexdigest() == str(blob.digest)
            tag = client.get(f"/v2/{repository}/manifests/stable")
            assert tag.status_code == 200 and tag.content == manifest.content
        with api(server) as admin:  # so does the admin token
            build = admin.get_build(str(old_install["build"]))
            assert build.status == "saved"
            assert [(t.owner, t.repository) for t in admin.list_trust(str(old_install["project"]))] == [
                ("octo", "moving")
            ]
            assert admin.project_usage(str(old_install["project"])).stored_bytes == old_install["stored_bytes"]
            # New rows get new ids after the copied ones (PostgreSQL's sequences were moved on).
            second = admin.create_build(str(old_install["project"]))
            push_image(server, second.project_id, second.build_id, second.token, tmp_path / "layout", seed=7)
            assert admin.save_build(second.build_id).status == "saved"
        assert_no_traceback(server.log())  # no insert hit a copied id (a client retry would hide the 500)
    finally:
        server.stop()


def test_a_failed_blob_copy_leaves_the_target_empty_and_a_rerun_finishes(
    old_install: dict[str, object], pg_url: str, tmp_path: Path
) -> None:
    source_dir = old_install["data_dir"]
    assert isinstance(source_dir, Path)
    source = Database(sqlite_url(source_dir / "metadata.db"))
    target = Database(pg_url)
    source_blobs = FilesystemBlobStore(source_dir, fsync=False)
    target_blobs = FilesystemBlobStore(tmp_path / "target", fsync=False)
    try:
        with source.read() as session:
            digests = sorted(session.scalars(select(Blob.digest)))
        victim = source_blobs.blob_path(Digest.parse(digests[-1]))
        original = victim.read_bytes()
        victim.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # damaged: same size, another digest
        try:
            with pytest.raises(MigrationError, match="damaged"):
                migrate_to(source, target, source_blobs=source_blobs, target_blobs=target_blobs)
        finally:
            victim.write_bytes(original)
        with target.read() as session:
            assert session.scalar(select(func.count()).select_from(Tag)) == 0
        assert target_blobs.size(Digest.parse(digests[-1])) is None  # never committed under its digest
        summary = migrate_to(source, target, source_blobs=source_blobs, target_blobs=target_blobs)
        assert summary.blobs_present == len(digests) - 1 and summary.blobs_copied == 1  # resumed
        assert summary.rows["tags"] >= 1
    finally:
        source.dispose()
        target.dispose()


def test_refuses_a_target_that_is_not_a_database_url(old_install: dict[str, object]) -> None:
    result = cli("db", "migrate-to", "not a url", "--data-dir", str(old_install["data_dir"]))
    assert result.returncode != 0
    assert "is not a database URL" in result.stderr and "Traceback" not in result.stderr


def test_an_install_moves_to_postgresql_and_a_bucket_and_serves_the_same_images(
    old_install: dict[str, object], pg_url: str, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """The scale-out move: metadata to PostgreSQL, blobs into an S3 bucket (through the BlobStore interface),
    then a server on both serves every blob by digest (through the bucket's presigned redirect)."""
    source_dir = old_install["data_dir"]
    assert isinstance(source_dir, Path)
    storage_url = f"{s3_bucket.url}/registry"
    moved = cli("db", "migrate-to", pg_url, "--target-storage-url", storage_url, "--data-dir", str(source_dir))
    assert moved.returncode == 0, moved.stderr
    assert "blobs: " in moved.stdout
    server = InProcessServer(
        data_dir=tmp_path / "replica", settings={"database_url": pg_url, "storage_url": storage_url}
    )
    server.start()
    try:
        image = old_install["image"]
        repository = old_install["repository"]
        with http(server, str(old_install["token"])) as client:
            for blob in image.blobs:  # type: ignore[attr-defined]
                response = client.get(f"/v2/{repository}/blobs/{blob.digest}", follow_redirects=True)
                assert response.status_code == 200 and response.history, "served from the bucket by redirect"
                assert "sha256:" + hashlib.sha256(response.content).hexdigest() == str(blob.digest)
            manifest = client.get(f"/v2/{repository}/manifests/stable")
            assert manifest.status_code == 200
            assert "sha256:" + hashlib.sha256(manifest.content).hexdigest() == str(image.manifest.digest)  # type: ignore[attr-defined]
    finally:
        server.stop()
    assert_no_traceback(server.log())
