"""Helpers shared by the lifecycle tests (no tests here): a temp database, a clock, images made in-process."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cargohold.metadata.control import ControlStore
from cargohold.metadata.db import Database
from cargohold.metadata.store import MetadataStore
from cargohold.oci.digest import Digest
from cargohold.oci.manifest import parse_manifest
from cargohold.storage.base import BlobStore
from s3server import blob_store_for

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


class FakeClock:
    """A settable clock: lifecycle code reads it, tests move it."""

    def __init__(self, start: datetime = datetime(2026, 6, 1, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Env:
    db: Database
    metadata: MetadataStore
    control: ControlStore
    blobs: BlobStore

    def put_blob(self, repository: str, data: bytes) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        upload = secrets.token_hex(16)
        self.blobs.create_upload(upload)
        writer = self.blobs.open_upload(upload)
        writer.write(data)
        writer.close()
        with self.metadata.transaction() as transaction:
            transaction.link_blob(repository, digest, len(data))
            self.blobs.commit_upload(upload, Digest.parse(digest))
        return {"mediaType": OCI_LAYER, "digest": digest, "size": len(data)}

    def put_manifest(self, repository: str, body: dict[str, object], tags: list[str]) -> str:
        payload = json.dumps(body, sort_keys=True).encode()
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        self.metadata.put_manifest(repository, digest, payload, parse_manifest(payload, str(body["mediaType"])), tags)
        return digest

    def image(self, repository: str, layers: list[bytes], tags: list[str], *, subject: str | None = None) -> str:
        config = self.put_blob(repository, json.dumps({"layers": len(layers), "salt": secrets.token_hex(4)}).encode())
        config["mediaType"] = OCI_CONFIG
        body: dict[str, object] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": [self.put_blob(repository, layer) for layer in layers],
        }
        if subject is not None:
            body["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject, "size": 2}
        return self.put_manifest(repository, body, tags)

    def index(self, repository: str, children: list[str], tags: list[str]) -> str:
        manifests = []
        for child in children:
            stored = self.metadata.get_manifest(repository, child, by_digest=True)
            assert stored is not None
            manifests.append({"mediaType": stored.media_type, "digest": child, "size": len(stored.payload)})
        return self.put_manifest(repository, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, tags)

    def saved_build(
        self,
        project_id: str,
        *,
        layers: list[bytes] | None = None,
        save_tags: list[str] = (),
        now: datetime | None = None,
    ) -> str:  # type: ignore[assignment]
        build = self.control.create_build(project_id)
        self.image(project_id, layers if layers is not None else [b"base-layer"], [build.id])
        self.control.mark_saved(build.id, platforms=["linux/amd64"], save_tags=list(save_tags), now=now)
        return build.id


def make_env(tmp_path: Path, clock: FakeClock | None = None) -> Env:
    """A migrated database and blob store; with ``clock``, manifest PUTs happen at the clock's time."""
    db = Database(f"sqlite:///{tmp_path / 'metadata.db'}")
    db.migrate()
    metadata = MetadataStore(db, clock=clock) if clock is not None else MetadataStore(db)
    return Env(db, metadata, ControlStore(db), blob_store_for(tmp_path / "data"))


# --- over HTTP, against a real server -----------------------------------------------------------------------


def push_blob(http: object, repository: str, data: bytes) -> dict[str, object]:
    """Monolithic upload (POST then PUT ?digest=), skipping it when a HEAD says the blob is there."""
    import httpx

    assert isinstance(http, httpx.Client)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if http.head(f"/v2/{repository}/blobs/{digest}").status_code != 200:
        started = http.post(f"/v2/{repository}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        finished = http.put(
            location, params={"digest": digest}, content=data, headers={"Content-Type": "application/octet-stream"}
        )
        assert finished.status_code == 201, finished.text
    return {"mediaType": OCI_LAYER, "digest": digest, "size": len(data)}


def push_image(http: object, repository: str, tag: str, layers: list[bytes], salt: str) -> object:
    """Push config + layers + manifest; returns the manifest PUT response (the caller checks it)."""
    import httpx

    assert isinstance(http, httpx.Client)
    config = push_blob(http, repository, json.dumps({"salt": salt}).encode())
    config["mediaType"] = OCI_CONFIG
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [push_blob(http, repository, layer) for layer in layers],
    }
    return http.put(
        f"/v2/{repository}/manifests/{tag}", content=json.dumps(body).encode(), headers={"Content-Type": OCI_MANIFEST}
    )
