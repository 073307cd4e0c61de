"""The metadata stores' contract (:class:`~cargohold.metadata.store.MetadataStore`,
:class:`~cargohold.metadata.control.ControlStore`, and the lease the lifecycle takes in the same database).

Runs against every database in ``contract_backends.metadata_db``. What the server relies on: links and
manifest references checked inside write transactions, idempotent upserts, uniqueness (a digest, a tag, a
``jti``, an ``Idempotency-Key``), the per-credential upload cap, credential lineage (expiry capped at the
parent's, revocation cascading, children of revoked parents refused), and records (never ORM rows) returned.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from contract_backends import metadata_db

from cargohold.lifecycle.lease import Lease, LeaseLost
from cargohold.metadata.control import (
    BuildRecord,
    Conflict,
    ControlStore,
    CredentialRecord,
    NotFound,
    ParentInactive,
    ProjectRecord,
    TrustRecord,
    new_id,
)
from cargohold.metadata.db import Database
from cargohold.metadata.sessions import SessionRecord, SessionStore
from cargohold.metadata.store import (
    BlobInUse,
    ManifestInUse,
    MetadataStore,
    MissingReferences,
    SizeMismatch,
    StoredManifest,
    TooManyUploads,
    UploadRecord,
)
from cargohold.oci import mediatypes as mt
from cargohold.oci.manifest import parse_manifest

__all__ = ["metadata_db"]


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(store: MetadataStore, repository: str, data: bytes) -> dict[str, object]:
    digest = _digest(data)
    store.link_blob(repository, digest, len(data))
    return {"mediaType": mt.OCI_LAYER_GZIP, "digest": digest, "size": len(data)}


def _manifest(layers: list[dict[str, object]], config: dict[str, object], **extra: object) -> bytes:
    body = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": config, "layers": layers, **extra}
    return json.dumps(body, sort_keys=True).encode()


def _put(store: MetadataStore, repository: str, payload: bytes, tags: list[str] = ()) -> str:  # type: ignore[assignment]
    digest = _digest(payload)
    store.put_manifest(repository, digest, payload, parse_manifest(payload, None), list(tags))
    return digest


def _image(store: MetadataStore, repository: str, salt: str, tags: list[str] = ()) -> str:  # type: ignore[assignment]
    config = _blob(store, repository, f'{{"salt": "{salt}"}}'.encode())
    config["mediaType"] = mt.OCI_CONFIG
    layer = _blob(store, repository, f"layer {salt}".encode())
    return _put(store, repository, _manifest([layer], config), tags)


# --- repositories and blob links -------------------------------------------------------------------------


def test_repositories_appear_when_used_and_list_in_pages(metadata_db: Database) -> None:
    store = MetadataStore(metadata_db)
    assert not store.repository_exists("p/a") and store.list_repositories(last=None, limit=None) == []
    for name in ("p/c", "p/a", "p/b"):
        _blob(store, name, b"x")
    assert store.repository_exists("p/a")
    assert store.list_repositories(last=None, limit=None) == ["p/a", "p/b", "p/c"]
    assert store.list_repositories(last="p/a", limit=1) == ["p/b"]


def test_links_are_idempotent_and_per_repository(metadata_db: Database) -> None:
    store = MetadataStore(metadata_db)
    digest = _digest(b"content")
    store.link_blob("p/a", digest, 7)
    store.link_blob("p/a", digest, 7)  # an upsert, not a duplicate
    assert store.linked_blob_size("p/a", digest) == 7
    assert store.linked_blob_size("p/b", digest) is None
    linked = store.linked_blob("p/a", digest)
    assert linked is not None and linked[0] == 7 and linked[1].tzinfo is not None


def test_touching_a_link_refreshes_only_stale_links(metadata_db: Database) -> None:
    store = MetadataStore(metadata_db)
    digest = _digest(b"touch")
    store.link_blob("p/a", digest, 5)
    linked = store.linked_blob("p/a", digest)
    assert linked is not None
    assert store.touch_link("p/a", digest, linked[1] - timedelta(seconds=1)) is True  # fresh: left alone
    assert store.linked_blob("p/a", digest) == linked
    assert store.touch_link("p/a", digest, datetime.now(UTC) + timedelta(hours=1)) is True
    refreshed = store.linked_blob("p/a", digest)
    assert refreshed is not None and refreshed[1] > linked[1]
    assert store.touch_link("p/a", _digest(b"never"), datetime.now(UTC)) is False
    assert store.touch_link("nowhere", digest, datetime.now(UTC)) is False


def test_mount_links_only_what_the_source_holds(metadata_db: Database) -> None:
    store = MetadataStore(metadata_db)
    digest = _digest(b"shared")
    store.link_blob("p/src", digest, 6)
    assert store.mount_blob("p/dst", "p/src", digest) == 6
    assert store.linked_blob_size("p/dst", digest) == 6
    assert store.mount_blob("p/dst", "p/elsewhere", _digest(b"nope")) is None


def test_unlink_refuses_referenced_blobs_and_reports_missing_ones(metadata_db: Database) -> None:
    store = MetadataStore(metadata_db)
    _image(store, "p/a", "1")
    loose = _digest(b"loose")
    store.link_blob("p/a", loose, 5)
    referenced = _digest(b"layer 1")
    with pytest.raises(BlobInUse):
        store.unlink_blob("p/a", referenced)
    assert store.unlink_blob("p/a", loose) is True
    assert store.unlink_blob("p/a", loose) is False
    assert store.unlink_blob("nowhere", loose) is False


def test_a_transaction_commits_together_or_not_at_all(metadata_db: Database) -> None:
    store = MetadataStore(metadata_db)
    store.create_upload("p/a", "a" * 32)
    with pytest.raises(RuntimeError), store.transaction() as transaction:
        transaction.link_blob("p/a", _digest(b"rolled back"), 11)
        assert transaction.delete_upload("a" * 32) is True
        raise RuntimeError("the blob store failed to commit")
    assert store.linked_blob_size("p/a", _digest(b"rolled back")) is None
    assert store.get_upload("a" * 32) is not None
    with store.transaction() as transaction:
        transaction.link_blob("p/a", _digest(b"committed"), 9)
        assert transaction.delete_upload("a" * 32) is True
        assert transaction.delete_upload("a" * 32) is False
    assert store.linked_blob_size("p/a", _digest(b"committed")) == 9
    assert store.get_upload("a" * 32) is None


# --- upload sessions -------------------------------------------------------------------------------------


def test_upload_sessions_are_records_and_age(metadata_db: Database) -> None:
    store = MetadataStore(metadata_db)
    start = datetime.now(UTC) - timedelta(hours=2)
    store.create_upload("p/a", "a" * 32, credential_id="c1", now=start)
    store.create_upload("p/b", "b" * 32, now=start)
    record = store.get_upload("a" * 32)
    assert isinstance(record, UploadRecord) and (record.repository, record.credential_id) == ("p/a", "c1")
    assert store.get_upload("c" * 32) is None
    assert store.upload_ids() == {"a" * 32, "b" * 32}
    store.touch_upload("b" * 32)
    assert store.stale_uploads(datetime.now(UTC) - timedelta(hours=1)) == ["a" * 32]
    assert store.delete_upload("a" * 32) is True and store.delete_upload("a" * 32) is False
    with pytest.raises(Exception):  # noqa: B017 - the ID is unique: the backend's integrity error
        store.create_upload("p/a", "b" * 32)


def test_the_upload_cap_counts_only_live_sessions_of_the_credential(metadata_db: Database) -> None:
    store = MetadataStore(metadata_db)
    now = datetime.now(UTC)
    store.create_upload("p", "0" * 32, credential_id="c1", max_open=2, active_since=now, now=now - timedelta(days=1))
    for upload_id in ("1" * 32, "2" * 32):
        store.create_upload("p", upload_id, credential_id="c1", max_open=2, active_since=now, now=now)
    with pytest.raises(TooManyUploads) as refused:
        store.create_upload("p", "3" * 32, credential_id="c1", max_open=2, active_since=now, now=now)
    assert refused.value.open_sessions == 2 and store.get_upload("3" * 32) is None
    store.create_upload("p", "4" * 32, credential_id="c2", max_open=2, active_since=now, now=now)


def test_the_upload_cap_holds_under_concurrent_opens(metadata_db: Database) -> None:
    store = MetadataStore(metadata_db)
    now = datetime.now(UTC)
    opened: list[str] = []
    barrier = threading.Barrier(8)

    def open_one() -> None:
        upload_id = uuid.uuid4().hex
        barrier.wait()
        try:
            store.create_upload("p", upload_id, credential_id="c", max_open=3, active_since=now, now=now)
            opened.append(upload_id)
        except TooManyUploads:
            pass

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(opened) == 3


# --- manifests and tags ----------------------------------------------------------------------------------


def test_manifests_are_stored_exactly_and_found_by_digest_and_tag(metadata_db: Database) -> None:
    store = MetadataStore(metadata_db)
    digest = _image(store, "p/a", "1", ["v1", "latest"])
    by_digest = store.get_manifest("p/a", digest, by_digest=True)
    by_tag = store.get_manifest("p/a", "latest", by_digest=False)
    assert isinstance(by_digest, StoredManifest) and by_digest == by_tag
    assert _digest(by_digest.payload) == digest and by_digest.media_type == mt.OCI_MANIFEST
    assert store.get_manifest("p/b", digest, by_digest=True) is None
    assert store.list_tags("p/a", last=None, limit=None) == ["latest", "v1"]
    assert store.list_tags("p/a", last="latest", limit=5) == ["v1"]
    assert store.list_tags("nowhere", last=None, limit=None) is None
    assert store.count_manifests("p/a") == 1


def test_putting_the_same_manifest_again_only_retags_it(metadata_db: Database) -> None:
    store = MetadataStore(metadata_db)
    digest = _image(store, "p/a", "1", ["v1"])
    payload = store.get_manifest("p/a", digest, by_digest=True)
    assert payload is not None
    again = store.put_manifest("p/a", digest, payload.payload, parse_manifest(payload.payload, None), ["v2"])
    assert again.created is False
    other = _image(store, "p/a", "2", ["v1"])  # a tag moves to the newer manifest
    assert store.get_manifest("p/a", "v1", by_digest=False).digest == other  # type: ignore[union-attr]
    assert store.count_manifests("p/a") == 2


def test_a_manifest_needs_every_reference_in_its_repository_with_the_right_size(metadata_db: Database) -> None:
    store = MetadataStore(metadata_db)
    config = _blob(store, "p/a", b"{}") | {"mediaType": mt.OCI_CONFIG}
    missing = {"mediaType": mt.OCI_LAYER_GZIP, "digest": _digest(b"not pushed"), "size": 10}
    with pytest.raises(MissingReferences) as refused:
        _put(store, "p/a", _manifest([missing], config))
    assert refused.value.missing == [missing["digest"]]
    elsewhere = _blob(store, "p/b", b"in another repository")
    with pytest.raises(MissingReferences):
        _put(store, "p/a", _manifest([elsewhere], config))
    wrong_size = _blob(store, "p/a", b"twelve bytes") | {"size": 99}
    with pytest.raises(SizeMismatch):
        _put(store, "p/a", _manifest([wrong_size], config))
    assert store.count_manifests("p/a") == 0


def test_indexes_protect_their_children_and_referrers_are_listed(metadata_db: Database) -> None:
    store = MetadataStore(metadata_db)
    child = _image(store, "p/a", "child")
    size = len(store.get_manifest("p/a", child, by_digest=True).payload)  # type: ignore[union-attr]
    descriptor = {"mediaType": mt.OCI_MANIFEST, "digest": child, "size": size}
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [descriptor]}).encode()
    index_digest = _put(store, "p/a", index, ["multi"])
    with pytest.raises(ManifestInUse) as refused:
        store.delete_manifest("p/a", child)
    assert refused.value.parent == index_digest
    config = _blob(store, "p/a", b"{}") | {"mediaType": "application/vnd.example.sbom"}
    referrer = _put(store, "p/a", _manifest([], config, subject=descriptor, artifactType="application/x-sbom"))
    found = store.referrers("p/a", child, None)
    assert [str(d.digest) for d in found] == [referrer] and found[0].artifact_type == "application/x-sbom"
    assert store.referrers("p/a", child, "application/other") == []
    manifests, blobs = store.build_reachable("p/a", "multi")
    assert {index_digest, child, "multi", referrer} <= manifests
    assert _digest(b"layer child") in blobs
    assert store.delete_manifest("p/a", index_digest) is True
    assert store.get_manifest("p/a", "multi", by_digest=False) is None  # its tags went with it
    assert store.delete_manifest("p/a", child) is True
    assert store.delete_manifest("p/a", child) is False
    assert store.delete_tag("p/a", "nope") is False


# --- projects and builds ---------------------------------------------------------------------------------


def test_projects_are_records(metadata_db: Database) -> None:
    control = ControlStore(metadata_db)
    project = control.create_project("app", retention=None, max_builds=3)
    assert isinstance(project, ProjectRecord) and project.retention is None
    assert control.get_project(project.id) == project
    changed = control.update_project(project.id, name="renamed", retention=timedelta(days=2))
    assert (changed.name, changed.retention, changed.max_builds) == ("renamed", timedelta(days=2), 3)
    other = control.create_project("other")
    assert [p.id for p in control.list_projects()] == [project.id, other.id]
    assert [p.id for p in control.list_projects([other.id])] == [other.id]
    with pytest.raises(NotFound):
        control.update_project("missing", name="x")


def test_build_creation_is_idempotent_per_key_and_caller(metadata_db: Database) -> None:
    control = ControlStore(metadata_db)
    project = control.create_project("app")
    first = control.create_build(project.id, created_by="alice", request_key="k" * 20)
    again = control.create_build(project.id, created_by="alice", request_key="k" * 20)
    assert isinstance(first, BuildRecord) and again.id == first.id and again.replayed and not first.replayed
    with pytest.raises(Conflict):
        control.create_build(project.id, created_by="mallory", request_key="k" * 20)
    with pytest.raises(NotFound):
        control.create_build("missing")


def test_saving_reads_the_image_from_the_registry_and_claims_save_tags(metadata_db: Database) -> None:
    control = ControlStore(metadata_db)
    store = MetadataStore(metadata_db)
    project = control.create_project("app", retention=timedelta(days=1))
    build = control.create_build(project.id)
    with pytest.raises(Conflict):
        control.mark_saved(build.id, platforms=[])  # nothing pushed yet
    digest = _image(store, project.id, "1", [build.id])
    saved = control.mark_saved(build.id, platforms=["linux/amd64"], save_tags=["latest"])
    assert (saved.status, saved.manifest_digest, saved.save_tags) == ("saved", digest, ["latest"])
    assert saved.total_size and saved.expires_at is not None
    assert control.find_build_by_tag(project.id, "latest") == saved
    assert store.get_manifest(project.id, "latest", by_digest=False).digest == digest  # type: ignore[union-attr]
    with pytest.raises(Conflict):
        control.mark_failed(build.id, "too late")
    assert control.remove_save_tag(build.id, "latest").save_tags == []
    with pytest.raises(NotFound):
        control.remove_save_tag(build.id, "latest")
    failed = control.mark_failed(control.create_build(project.id).id, "x" * 5000)
    assert failed.status == "failed" and len(failed.failure or "") == 2000
    listed = control.list_builds(project.id, limit=1)
    assert [b.id for b in listed] == [failed.id]
    assert [b.id for b in control.list_builds(project.id, limit=5, before=failed.id)] == [build.id]
    with pytest.raises(NotFound):
        control.list_builds(project.id, before="missing")


# --- credentials, trust, jti -----------------------------------------------------------------------------


def _credential(parent: CredentialRecord | None = None, *, ttl: timedelta | None = None) -> CredentialRecord:
    now = datetime.now(UTC)
    return CredentialRecord(
        id=new_id(),
        kind="pull",
        name="t",
        token_hash=uuid.uuid4().hex * 2,
        created_at=now,
        permissions=({"project": "p", "actions": ["pull"], "build_id": None},),
        expires_at=None if ttl is None else now + ttl,
        metadata={"created_by": "test"},
        project_id="p",
        parent_id=None if parent is None else parent.id,
    )


def test_credentials_are_records_found_by_hash_and_id(metadata_db: Database) -> None:
    control = ControlStore(metadata_db)
    stored = control.add_credential(_credential(ttl=timedelta(hours=1)))
    assert control.credential_by_hash(stored.token_hash) == stored == control.get_credential(stored.id)
    assert stored.permissions == ({"actions": ["pull"], "build_id": None, "project": "p"},)
    assert stored.metadata == {"created_by": "test"}
    assert control.credential_by_hash("0" * 64) is None and control.get_credential("missing") is None
    with pytest.raises(Exception):  # noqa: B017 - token hashes are unique
        control.add_credential(replace(_credential(), token_hash=stored.token_hash))


def test_lineage_caps_expiry_refuses_orphans_and_cascades_revocation(metadata_db: Database) -> None:
    control = ControlStore(metadata_db)
    root = control.add_credential(_credential(ttl=timedelta(hours=1)))
    child = control.add_credential(_credential(root, ttl=timedelta(days=30)))
    assert child.expires_at == root.expires_at
    grandchild = control.add_credential(_credential(child))
    assert grandchild.expires_at == root.expires_at
    assert control.revoke_credential(root.id) == 3
    assert control.revoke_credential(root.id) == 0
    assert control.credential_revoked(grandchild.id)
    with pytest.raises(ParentInactive):
        control.add_credential(_credential(child))
    assert [c.id for c in control.list_credentials("p")] == []
    assert len(control.list_credentials("p", include_inactive=True)) == 3


def test_trust_relationships_are_records_and_removal_revokes_their_credentials(metadata_db: Database) -> None:
    control = ControlStore(metadata_db)
    project = control.create_project("app")
    trust = TrustRecord(
        id=new_id(),
        project_id=project.id,
        provider="github",
        issuer="https://issuer",
        owner="octo",
        repository="app",
        created_at=datetime.now(UTC),
        permissions=frozenset({"pull", "push"}),
        allowed_events=frozenset({"workflow_run"}),
    )
    assert control.add_trust(trust) == trust
    assert control.trust_for_repository("https://issuer", "OCTO", "App") == [trust]
    assert control.trust_for_repository("https://other", "octo", "app") == []
    control.learn_trust_ids(trust.id, "1", "2")
    control.learn_trust_ids(trust.id, "9", "9")  # pinned on first use, never overwritten
    learned = control.list_trust(project.id)[0]
    assert (learned.owner_id, learned.repository_id) == ("1", "2")
    exchanged = control.add_credential(replace(_credential(), kind="oidc"), [trust.id])
    with pytest.raises(ParentInactive):
        control.add_credential(replace(_credential(), kind="oidc"), ["missing-trust"])
    assert control.remove_trust(project.id, trust.id) == 1
    assert control.credential_revoked(exchanged.id)
    assert control.remove_trust(project.id, trust.id) is None
    with pytest.raises(NotFound):
        control.add_trust(replace(trust, id=new_id(), project_id="missing"))


def test_a_jti_is_claimed_once(metadata_db: Database) -> None:
    control = ControlStore(metadata_db)
    expires = datetime.now(UTC) + timedelta(minutes=10)
    assert control.claim_jti("https://issuer", "jti-1", expires) is True
    assert control.claim_jti("https://issuer", "jti-1", expires) is False
    assert control.claim_jti("https://other", "jti-1", expires) is True
    results: list[bool] = []
    barrier = threading.Barrier(6)

    def claim() -> None:
        barrier.wait()
        results.append(control.claim_jti("https://issuer", "raced", expires))

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 5 + [True]


def test_a_jti_of_any_length_is_claimed_once(metadata_db: Database) -> None:
    control = ControlStore(metadata_db)
    expires = datetime.now(UTC) + timedelta(minutes=5)
    long_jti = "j" * 1000
    assert control.claim_jti("https://issuer", long_jti, expires)
    assert not control.claim_jti("https://issuer", long_jti, expires)
    assert control.claim_jti("https://issuer", long_jti[:-1] + "k", expires)


# --- leases ----------------------------------------------------------------------------------------------


def test_a_lease_has_one_holder_until_it_expires_or_is_released(metadata_db: Database) -> None:
    now = [datetime.now(UTC)]

    def clock() -> datetime:
        return now[0]

    ours = Lease(metadata_db, "gc", ttl=timedelta(minutes=2), clock=clock, holder="host-a:1")
    theirs = Lease(metadata_db, "gc", ttl=timedelta(minutes=2), clock=clock, holder="host-b:2")
    assert ours.acquire() and ours.acquire()  # re-entrant for its holder
    assert not theirs.acquire()
    now[0] += timedelta(minutes=3)
    assert theirs.acquire()  # ours expired
    with pytest.raises(LeaseLost):
        ours.renew(force=True)
    theirs.release()
    assert ours.acquire()
    assert Lease(metadata_db, "other", clock=clock, holder="host-b:2").acquire()  # leases are per name


def test_dashboard_sessions_live_idle_expire_and_end(metadata_db: Database) -> None:
    sessions = SessionStore(metadata_db)
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    idle = timedelta(hours=1)

    def record(id_hash: str, credential: str, expires_in: timedelta) -> SessionRecord:
        return SessionRecord(id_hash, credential, "csrf-" + id_hash[:40], now, now, now + expires_in)

    first = sessions.create(record("a" * 64, "cred1", timedelta(hours=12)))
    sessions.create(record("b" * 64, "cred1", timedelta(hours=12)))
    sessions.create(record("c" * 64, "cred2", timedelta(minutes=30)))
    assert sessions.live(first.id_hash, now + timedelta(minutes=5), idle) == first
    assert sessions.live("d" * 64, now, idle) is None
    assert sessions.live(first.id_hash, now + idle, idle) is None  # idle for an hour
    sessions.touch(first.id_hash, now + timedelta(minutes=50))
    live = sessions.live(first.id_hash, now + timedelta(minutes=100), idle)
    assert live is not None and live.last_seen_at == now + timedelta(minutes=50)
    assert sessions.live("c" * 64, now + timedelta(minutes=31), idle) is None  # past its absolute end
    assert sessions.prune(now + timedelta(minutes=31), idle) == 1
    assert sessions.end_for_credential("cred1") == 2
    assert sessions.end(first.id_hash) is False and sessions.count() == 0


def test_build_counts_and_the_largest_saved_builds(metadata_db: Database) -> None:
    control = ControlStore(metadata_db)
    project, other = control.create_project("app"), control.create_project("other")
    builds = [control.create_build(project.id, provenance=None, created_by="t") for _ in range(3)]
    control.create_build(other.id, provenance=None, created_by="t")
    assert control.count_builds([project.id, other.id, "missing"]) == {project.id: 3, other.id: 1, "missing": 0}
    assert control.largest_builds(project.id) == []  # none saved yet
    assert [b.id for b in control.list_builds(project.id, status="pending", id_contains=builds[1].id[2:7].upper())] == [
        builds[1].id
    ]
    assert control.list_builds(project.id, pinned=True) == []
    assert control.list_builds(project.id, id_contains="%") == []  # a LIKE wildcard is a plain character
