"""Retention of tags pushed outside builds and of untagged manifests, on a real database with an injected clock.

Manifest PUTs go through ``MetadataStore.put_manifest`` with the same fake clock the sweeps read, so every
test stands exactly on the boundaries it names.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from cargohold.lifecycle import audit
from cargohold.lifecycle.gc import GarbageCollector
from cargohold.lifecycle.metering import Metering
from cargohold.lifecycle.retention import LifecycleError, Retention
from cargohold.lifecycle.tag_retention import TagNotFound, TagRetention
from cargohold.metadata.db import MIGRATIONS_DIR, Database
from cargohold.metadata.models import LifecycleEvent, Manifest, ManifestReference, Tag
from cargohold.metadata.store import build_tags
from cargohold.oci.digest import Digest
from test_lifecycle_support import OCI_CONFIG, OCI_MANIFEST, Env, FakeClock, make_env

US = timedelta(microseconds=1)
DAY = timedelta(days=1)
GRACE = timedelta(hours=1)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def env(tmp_path: Path, clock: FakeClock) -> Env:
    return make_env(tmp_path, clock)


def _image_body(env: Env, repository: str, layers: list[bytes], salt: str, subject: str | None = None) -> dict:
    config = env.put_blob(repository, json.dumps({"salt": salt}).encode())
    config["mediaType"] = OCI_CONFIG
    body: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [env.put_blob(repository, layer) for layer in layers],
    }
    if subject is not None:
        body["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject, "size": 2}
    return body


def _tag(env: Env, repository: str, tag: str) -> Tag | None:
    with env.db.read() as session:
        row = session.scalar(
            select(Tag).where(Tag.name == tag, Tag.repository_id == _repository_id(session, repository))
        )
        if row is not None:
            session.expunge(row)
        return row


def _repository_id(session: object, name: str) -> int:
    return session.execute(text("SELECT id FROM repositories WHERE name = :n"), {"n": name}).scalar_one()  # type: ignore[attr-defined]


def _digests(env: Env, repository: str) -> set[str]:
    with env.db.read() as session:
        return set(
            session.scalars(
                select(Manifest.digest).where(Manifest.repository_id == _repository_id(session, repository))
            )
        )


def _blob_file(env: Env, data: bytes) -> int | None:
    return env.blobs.size(Digest.parse("sha256:" + hashlib.sha256(data).hexdigest()))


def test_pushed_tag_expires_then_gc_frees_its_blobs_and_usage_drops(env: Env, clock: FakeClock) -> None:
    project = env.control.create_project("p", retention=timedelta(days=7))
    pid = project.id
    build = env.saved_build(pid, layers=[b"build layer"], now=clock.now)
    web = env.image(f"{pid}/web", [b"web layer" * 50], ["1.0"])  # docker push <host>/<pid>/web:1.0
    nightly = env.image(pid, [b"nightly layer" * 50], ["nightly"])  # skopeo copy ... <host>/<pid>:nightly
    pushed_at = clock.now
    assert _tag(env, f"{pid}/web", "1.0").expires_at == pushed_at + timedelta(days=7)  # type: ignore[union-attr]
    assert _tag(env, pid, build).expires_at is None  # type: ignore[union-attr]  # the build decides
    metering = Metering(env.db, clock=clock)
    before = metering.refresh([pid])[pid]
    tags = TagRetention(env.db, clock=clock)

    clock.now = pushed_at + timedelta(days=7) - US
    assert tags.expire()[0] == []
    clock.now = pushed_at + timedelta(days=7)
    evicted, collected = tags.expire(actor="test")
    assert sorted((e.repository, e.tag, e.rule) for e in evicted) == [
        (pid, "nightly", "expired"),
        (f"{pid}/web", "1.0", "expired"),
    ]
    assert env.metadata.get_manifest(f"{pid}/web", "1.0", by_digest=False) is None
    # The manifests only those tags kept went in the same transaction; the build is untouched.
    assert sorted((c.repository, c.digests) for c in collected) == [(pid, [nightly]), (f"{pid}/web", [web])]
    assert web not in _digests(env, f"{pid}/web") and nightly not in _digests(env, pid)
    assert env.metadata.get_manifest(pid, build, by_digest=False) is not None

    message = audit.explain_missing(env.db, f"{pid}/web", "1.0")
    assert message is not None
    assert message.startswith(f"tag {pid}/web:1.0 expired on ") and "retention 7 days since its last push" in message
    history = audit.history(env.db, pid)
    assert {(e.action, e.rule) for e in history} == {("evict", "expired"), ("collect", "untagged")}
    assert all(e.actor == "test" for e in history)

    after = metering.refresh([pid])[pid]
    assert after < before
    assert after == metering.refresh([pid])[pid]  # stable: only the build is counted
    gc = GarbageCollector(env.db, env.blobs, grace=GRACE, clock=clock)
    report = gc.run()
    assert report.completed and report.blobs_deleted == 4  # two layers, two configs
    assert _blob_file(env, b"web layer" * 50) is None and _blob_file(env, b"nightly layer" * 50) is None
    assert _blob_file(env, b"build layer") == len(b"build layer")
    assert metering.refresh([pid])[pid] == after


def test_repush_even_of_the_same_digest_refreshes_and_never_shortens(env: Env, clock: FakeClock) -> None:
    pid = env.control.create_project("p", retention=timedelta(days=7)).id
    body = _image_body(env, f"{pid}/app", [b"layer"], "same")
    first = clock.now
    digest = env.put_manifest(f"{pid}/app", body, ["stable"])
    tags = TagRetention(env.db, clock=clock)

    clock.now = first + timedelta(days=5)
    assert env.put_manifest(f"{pid}/app", body, ["stable"]) == digest  # same bytes, same digest
    assert _tag(env, f"{pid}/app", "stable").expires_at == clock.now + timedelta(days=7)  # type: ignore[union-attr]
    clock.now = first + timedelta(days=7)
    assert tags.expire()[0] == []
    assert tags.collect_untagged() == []

    until = first + timedelta(days=30)
    tags.extend(f"{pid}/app", "stable", "user:alice", until=until)
    env.put_manifest(f"{pid}/app", body, ["stable"])  # a push does not shorten an extension
    assert _tag(env, f"{pid}/app", "stable").expires_at == until  # type: ignore[union-attr]
    clock.now = until - US
    assert tags.expire()[0] == []
    clock.now = until
    assert [e.tag for e in tags.expire()[0]] == ["stable"]
    assert digest not in _digests(env, f"{pid}/app")


def test_repush_by_digest_refreshes_an_untagged_manifest(env: Env, clock: FakeClock) -> None:
    pid = env.control.create_project("p", retention=DAY).id
    body = _image_body(env, f"{pid}/app", [b"by digest"], "digest")
    first = clock.now
    digest = env.put_manifest(f"{pid}/app", body, [])
    tags = TagRetention(env.db, clock=clock)
    clock.now = first + timedelta(hours=20)
    assert env.put_manifest(f"{pid}/app", body, []) == digest  # pushed by digest again
    clock.now = first + DAY
    assert tags.collect_untagged() == []
    clock.now = first + timedelta(hours=20) + DAY
    assert [c.digests for c in tags.collect_untagged()] == [[digest]]


def test_pin_unpin_extend_and_their_refusals(env: Env, clock: FakeClock) -> None:
    pid = env.control.create_project("p", retention=DAY).id
    digest = env.image(f"{pid}/tool", [b"tool"], ["v1"])
    tags = TagRetention(env.db, clock=clock)
    pinned = tags.pin(f"{pid}/tool", "v1", "user:alice")
    assert pinned.pinned is True and pinned.digest == digest and pinned.size > len(b"tool")
    clock.advance(timedelta(days=400))
    assert tags.expire()[0] == [] and tags.collect_untagged() == []
    assert digest in _digests(env, f"{pid}/tool")
    tags.unpin(f"{pid}/tool", "v1", "user:alice")
    assert [e.tag for e in tags.expire()[0]] == ["v1"]
    actions = [(e.action, e.detail.get("tag")) for e in audit.history(env.db, pid) if e.action != "collect"]
    assert actions == [("evict", "v1"), ("unpin", "v1"), ("pin", "v1")]
    assert audit.history(env.db, pid)[-1].to_json()["message"].startswith(f"tag {pid}/tool:v1 was pinned on ")

    env.image(f"{pid}/tool", [b"tool"], ["v2"])
    expires = _tag(env, f"{pid}/tool", "v2").expires_at  # type: ignore[union-attr]
    assert tags.extend(f"{pid}/tool", "v2", "u", by=timedelta(hours=5)).expires_at == expires + timedelta(hours=5)  # type: ignore[operator]
    with pytest.raises(LifecycleError, match="in the past"):
        tags.extend(f"{pid}/tool", "v2", "u", until=clock.now - US)
    with pytest.raises(LifecycleError, match="exactly one"):
        tags.extend(f"{pid}/tool", "v2", "u")
    with pytest.raises(TagNotFound):
        tags.pin(f"{pid}/tool", "nope", "u")

    build = env.saved_build(pid, save_tags=["main"], now=clock.now)
    for tag in (build, "main"):
        with pytest.raises(LifecycleError, match=f"tag of build {build}.*cargohold builds pin {build}"):
            tags.pin(pid, tag, "u")
    forever = env.control.create_project("forever", retention=None).id
    env.image(forever, [b"kept"], ["latest"])
    assert _tag(env, forever, "latest").expires_at is None  # type: ignore[union-attr]
    with pytest.raises(LifecycleError, match="never expires"):
        tags.extend(forever, "latest", "u", by=DAY)


def test_untagged_manifests_go_unless_something_keeps_them(env: Env, clock: FakeClock) -> None:
    pid = env.control.create_project("p", retention=DAY).id
    repo = f"{pid}/app"
    orphan = env.image(repo, [b"orphan"], [])  # pushed by digest, never tagged
    orphan_sig = env.image(repo, [b"sig-of-orphan"], [], subject=orphan)
    dangling_sig = env.image(repo, [b"sig-of-nothing"], [], subject="sha256:" + "0" * 64)
    child_one, child_two = env.image(repo, [b"amd64"], []), env.image(repo, [b"arm64"], [])
    tagged_index = env.index(repo, [child_one, child_two], ["multi"])
    image = env.image(repo, [b"image"], ["1.0"])
    image_sig = env.image(repo, [b"sig"], [], subject=image)
    sbom_of_sig = env.image(repo, [b"sbom-of-sig"], [], subject=image_sig)  # a referrer of a kept referrer
    old_child = env.image(repo, [b"old child"], [])
    old_index = env.index(repo, [old_child], [])
    reused_child = env.image(repo, [b"reused child"], [])
    tags = TagRetention(env.db, clock=clock)
    tags.pin(repo, "multi", "u")
    tags.pin(repo, "1.0", "u")
    build = env.control.create_build(pid)
    build_image = env.image(pid, [b"build"], [build.id])
    env.control.mark_saved(build.id, platforms=["linux/amd64"], now=clock.now)
    env.metadata.delete_tag(pid, build.id)  # the build's tag deleted over /v2/: its image is still the build's
    forever = env.control.create_project("forever", retention=None).id
    unlimited_orphan = env.image(forever, [b"unlimited"], [])

    clock.advance(DAY - US)
    young_child = env.image(repo, [b"young child"], [])
    young_index = env.index(repo, [young_child, reused_child], [])  # pushed now: keeps the old child it lists
    young_orphan = env.image(repo, [b"young"], [])
    assert tags.collect_untagged() == []  # one microsecond short of a period: not yet

    clock.advance(US)  # exactly one period since their last push
    garbage = {orphan, orphan_sig, dangling_sig, old_child, old_index}
    planned = tags.collect_untagged(dry_run=True)
    assert [(c.repository, set(c.digests)) for c in planned] == [(repo, garbage)]
    assert garbage <= _digests(env, repo)
    with env.db.read() as session:
        assert (
            session.scalar(select(func.count()).select_from(LifecycleEvent).where(LifecycleEvent.action == "collect"))
            == 0
        )

    collected = tags.collect_untagged(actor="sweep")
    assert [set(c.digests) for c in collected] == [garbage]
    assert (
        "5 untagged manifests in" in collected[0].reason
        and "that nothing referenced were removed" in collected[0].reason
    )
    kept = {
        child_one,
        child_two,
        tagged_index,
        image,
        image_sig,
        sbom_of_sig,
        young_child,
        young_index,
        young_orphan,
        reused_child,
    }
    assert _digests(env, repo) == kept
    assert build_image in _digests(env, pid) and unlimited_orphan in _digests(env, forever)
    [event] = [e for e in audit.history(env.db, pid) if e.action == "collect"]
    assert event.actor == "sweep" and event.detail["count"] == 5 and set(event.detail["digests"]) == garbage
    with env.db.read() as session:  # no reference is left pointing at a deleted manifest
        dangling = session.scalar(
            select(func.count())
            .select_from(ManifestReference)
            .where(ManifestReference.kind == "manifest", ManifestReference.digest.not_in(select(Manifest.digest)))
        )
    assert dangling == 0

    tags.unpin(repo, "1.0", "u")  # the image goes, and with it the referrers it kept
    clock.advance(DAY)
    assert {e.tag for e in tags.expire()[0]} == {"1.0"}
    assert _digests(env, repo) & {image, image_sig, sbom_of_sig} == set()


def test_build_tags_are_left_to_builds_and_listing_shows_the_rest(env: Env, clock: FakeClock) -> None:
    pid = env.control.create_project("p", retention=DAY).id
    env.image(pid, [b"docker pushed main first"], ["main", "zzzzzzzzzz-x", "release"])
    assert _tag(env, pid, "main").expires_at is not None  # type: ignore[union-attr]
    build = env.control.create_build(pid)
    env.image(pid, [b"build"], [build.id, f"{build.id}-web"])
    env.control.mark_saved(build.id, platforms=["linux/amd64"], save_tags=["main"], now=clock.now)
    assert _tag(env, pid, "main").expires_at is None  # type: ignore[union-attr]  # claimed by the build
    env.image(f"{pid}/sub", [b"sub"], [build.id])  # a build ID spelled in a sub-repository is a plain tag
    tags = TagRetention(env.db, clock=clock)

    listed = [(t.repository, t.tag) for t in tags.list_tags(pid)]
    assert listed == [(pid, "release"), (pid, "zzzzzzzzzz-x"), (f"{pid}/sub", build.id)]
    with env.db.read() as session:  # the SQL rule of the listing and the Python rule of pushes agree
        names = list(session.scalars(select(Tag.name).where(Tag.repository_id == _repository_id(session, pid))))
        assert build_tags(session, pid, names) == {build.id, f"{build.id}-web", "main"}
    page = tags.list_tags(pid, limit=1)
    assert [(t.repository, t.tag) for t in tags.list_tags(pid, after=(page[0].repository, page[0].tag))] == listed[1:]
    assert [t.tag for t in tags.list_tags(pid, repository=f"{pid}/sub")] == [build.id]

    clock.advance(timedelta(days=2))
    assert sorted(e.tag for e in tags.expire()[0]) == sorted([build.id, "release", "zzzzzzzzzz-x"])
    remaining = {t for t in (build.id, f"{build.id}-web", "main") if _tag(env, pid, t) is not None}
    assert remaining == {build.id, f"{build.id}-web", "main"}  # build retention will take these with the build
    assert [e.build_id for e in Retention(env.db, clock=clock).expire()] == [build.id]


def test_referrer_tags_stay_while_their_subject_exists(env: Env, clock: FakeClock) -> None:
    pid = env.control.create_project("p", retention=DAY).id
    repo = f"{pid}/signed"
    image = env.image(repo, [b"image"], ["1.0"])
    hex_digest = image.split(":", 1)[1]
    env.image(repo, [b"cosign signature"], [f"sha256-{hex_digest}.sig"])
    env.image(repo, [b"unrelated"], [f"sha256-{'1' * 64}.att"])  # names nothing here: expires like any tag
    tags = TagRetention(env.db, clock=clock)
    tags.pin(repo, "1.0", "u")
    clock.advance(timedelta(days=3))
    assert [e.tag for e in tags.expire()[0]] == [f"sha256-{'1' * 64}.att"]
    assert tags.expire()[0] == []  # the signature tag is kept by its image, sweep after sweep
    tags.unpin(repo, "1.0", "u")
    assert [e.tag for e in tags.expire()[0]] == ["1.0"]
    assert [e.tag for e in tags.expire()[0]] == [f"sha256-{hex_digest}.sig"]  # its image is gone now


def test_dry_run_and_manual_eviction(env: Env, clock: FakeClock) -> None:
    pid = env.control.create_project("p", retention=DAY).id
    digest = env.image(f"{pid}/x", [b"x"], ["a"])
    tags = TagRetention(env.db, clock=clock)
    clock.advance(timedelta(days=2))
    planned = tags.expire(dry_run=True)[0]
    assert [(e.tag, e.rule) for e in planned] == [("a", "expired")] and "retention 1 day" in planned[0].reason
    assert _tag(env, f"{pid}/x", "a") is not None and audit.history(env.db, pid) == []

    env.image(f"{pid}/y", [b"y"], ["b"])
    tags.pin(f"{pid}/y", "b", "u")
    eviction, collected = tags.evict_tag(f"{pid}/y", "b", actor="admin:ops", unreferenced_before=clock.now)
    assert eviction.rule == "manual" and eviction.reason.startswith(f"tag {pid}/y:b was deleted on ")
    assert [c.repository for c in collected] == [f"{pid}/y"] and _digests(env, f"{pid}/y") == set()
    assert digest in _digests(env, f"{pid}/x")


def test_upgrade_gives_existing_images_a_full_period_and_loses_no_row(tmp_path: Path) -> None:
    """Migration 0005 on a populated 0003 database: nothing deleted (no table rebuild cascading into
    references and tags), non-build tags expire one period after the upgrade, build tags have no expiry."""
    from alembic import command
    from alembic.config import Config

    db = Database(f"sqlite:///{tmp_path / 'm.db'}")

    def upgrade(revision: str) -> None:
        with db.write_engine.connect() as connection:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            connection.commit()

    upgrade("0003")
    old = "2020-01-01 00:00:00"
    rows: dict[str, list[dict[str, object]]] = {
        "INSERT INTO projects VALUES (:id, 'p', :at, :seconds, 10)": [
            {"id": "pabcdefghi", "seconds": 604800},
            {"id": "qabcdefghi", "seconds": None},
        ],
        "INSERT INTO builds (id, project_id, status, created_at, pinned) VALUES (:id, :project, 'saved', :at, 0)": [
            {"id": "babcdefghi", "project": "pabcdefghi"}
        ],
        "INSERT INTO save_tags VALUES (:project, :tag, :build, :at)": [
            {"project": "pabcdefghi", "tag": "main", "build": "babcdefghi"}
        ],
        "INSERT INTO repositories VALUES (:id, :name, :at)": [
            {"id": 1, "name": "pabcdefghi"},
            {"id": 2, "name": "pabcdefghi/web"},
            {"id": 3, "name": "qabcdefghi"},
        ],
        "INSERT INTO manifests (id, repository_id, digest, media_type, size, payload, created_at)"
        " VALUES (:id, :id, :digest, 'x', 1, x'00', :at)": [{"id": n, "digest": f"sha256:{n}"} for n in (1, 2, 3)],
        "INSERT INTO manifest_references VALUES (:id, 'sha256:b', 'blob')": [{"id": n} for n in (1, 2, 3)],
        "INSERT INTO tags VALUES (:repository, :tag, :repository, :at)": [
            {"repository": repository, "tag": tag}
            for repository, tag in [
                (1, "babcdefghi"),
                (1, "babcdefghi-web"),
                (1, "main"),
                (1, "docker"),
                (2, "v1"),
                (3, "v1"),
            ]
        ],
    }
    with db.write() as session:
        for statement, parameters in rows.items():
            session.execute(text(statement), [{"at": old, **values} for values in parameters])
    before = datetime.now(UTC)
    upgrade("head")
    after = datetime.now(UTC)
    with db.read() as session:
        stored = {(t.repository_id, t.name): t for t in session.scalars(select(Tag))}
        pushed = list(session.scalars(select(Manifest.pushed_at)))
        references = session.scalar(select(func.count()).select_from(ManifestReference))
    assert len(stored) == 6 and references == 3 and len(pushed) == 3
    assert all(before - timedelta(seconds=1) <= moment <= after for moment in pushed)
    expiring = {key for key, tag in stored.items() if tag.expires_at is not None}
    assert expiring == {(1, "docker"), (2, "v1")}
    for key in expiring:
        expires_at = stored[key].expires_at
        assert expires_at is not None
        assert before + timedelta(days=7) - timedelta(seconds=1) <= expires_at <= after + timedelta(days=7)
    assert not any(tag.pinned for tag in stored.values())
    db.dispose()
