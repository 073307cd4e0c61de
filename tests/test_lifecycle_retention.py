"""Retention and eviction against a real (temporary) database, with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cargohold.lifecycle import audit
from cargohold.lifecycle.retention import LifecycleError, Retention
from cargohold.metadata.models import Build, LifecycleEvent, Manifest, SaveTag, Tag
from test_lifecycle_support import Env, FakeClock, make_env

US = timedelta(microseconds=1)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


def _build_ids(env: Env, project_id: str) -> set[str]:
    with env.db.read() as session:
        return set(session.scalars(select(Build.id).where(Build.project_id == project_id)))


def test_expiry_boundary_is_inclusive(env: Env, clock: FakeClock) -> None:
    project = env.control.create_project("p", retention=timedelta(days=7))
    saved_at = clock.now
    build = env.saved_build(project.id, now=saved_at)
    expires_at = saved_at + timedelta(days=7)
    assert env.control.get_build(build).expires_at == expires_at  # type: ignore[union-attr]
    retention = Retention(env.db, clock=clock)

    clock.now = expires_at - US
    assert retention.expire() == []
    assert build in _build_ids(env, project.id)

    clock.now = expires_at
    evicted = retention.expire(actor="test")
    assert [e.build_id for e in evicted] == [build]
    assert evicted[0].rule == "expired"
    assert _build_ids(env, project.id) == set()
    assert env.metadata.get_manifest(project.id, build, by_digest=False) is None
    message = audit.explain_missing(env.db, project.id, build)
    assert message is not None
    assert message.startswith(f"build {build} expired on ")
    assert "(retention 7 days)" in message


def test_dry_run_changes_nothing_and_says_why(env: Env, clock: FakeClock) -> None:
    project = env.control.create_project("p", retention=timedelta(hours=1))
    build = env.saved_build(project.id, now=clock.now)
    clock.advance(timedelta(hours=2))
    planned = Retention(env.db, clock=clock).expire(dry_run=True)
    assert [(e.build_id, e.rule) for e in planned] == [(build, "expired")]
    assert "retention 1 hour" in planned[0].reason
    assert build in _build_ids(env, project.id)
    with env.db.read() as session:
        assert session.scalar(select(func.count()).select_from(LifecycleEvent)) == 0


def test_pin_keeps_a_build_until_unpinned(env: Env, clock: FakeClock) -> None:
    project = env.control.create_project("p", retention=timedelta(days=1))
    build = env.saved_build(project.id, now=clock.now)
    retention = Retention(env.db, clock=clock)
    retention.pin(build, "user:alice")
    clock.advance(timedelta(days=30))
    assert retention.expire() == []
    retention.unpin(build, "user:alice")
    assert [e.build_id for e in retention.expire()] == [build]
    actions = [e.action for e in audit.history(env.db, project.id)]
    assert actions == ["evict", "unpin", "pin"]


def test_extend_by_and_until(env: Env, clock: FakeClock) -> None:
    project = env.control.create_project("p", retention=timedelta(days=1))
    build = env.saved_build(project.id, now=clock.now)
    retention = Retention(env.db, clock=clock)
    first_expiry = clock.now + timedelta(days=1)
    assert retention.extend(build, "u", by=timedelta(hours=5)).expires_at == first_expiry + timedelta(hours=5)
    until = clock.now + timedelta(days=10)
    assert retention.extend(build, "u", until=until).expires_at == until
    clock.now = until - US
    assert retention.expire() == []
    clock.now = until
    assert [e.build_id for e in retention.expire()] == [build]
    with pytest.raises(LifecycleError, match="exactly one"):
        retention.extend(build, "u")


def test_extend_refuses_past_times_and_unlimited_builds(env: Env, clock: FakeClock) -> None:
    limited = env.control.create_project("limited", retention=timedelta(days=1))
    build = env.saved_build(limited.id, now=clock.now)
    retention = Retention(env.db, clock=clock)
    with pytest.raises(LifecycleError, match="in the past"):
        retention.extend(build, "u", until=clock.now - timedelta(seconds=1))
    unlimited = env.control.create_project("forever", retention=None)
    forever = env.saved_build(unlimited.id, now=clock.now)
    with pytest.raises(LifecycleError, match="never expires"):
        retention.extend(forever, "u", by=timedelta(days=1))


def test_cap_evicts_oldest_unpinned_first_never_pinned(env: Env, clock: FakeClock) -> None:
    project = env.control.create_project("p", retention=None, max_builds=3)
    builds = []
    for _ in range(5):
        clock.advance(timedelta(minutes=1))
        builds.append(env.saved_build(project.id, now=clock.now))
    retention = Retention(env.db, clock=clock)
    retention.pin(builds[0], "u")  # the oldest, but pinned
    evicted = retention.enforce_cap(project.id)
    assert [e.build_id for e in evicted] == [builds[1], builds[2]]
    assert all(e.rule == "cap" for e in evicted)
    assert _build_ids(env, project.id) == {builds[0], builds[3], builds[4]}
    assert retention.enforce_cap(project.id) == []
    message = audit.explain_missing(env.db, project.id, builds[1])
    assert message is not None and "keeps at most 3 saved builds" in message


def test_cap_dry_run_lists_exactly_the_excess(env: Env, clock: FakeClock) -> None:
    project = env.control.create_project("p", retention=None, max_builds=2)
    builds = []
    for _ in range(5):
        clock.advance(timedelta(minutes=1))
        builds.append(env.saved_build(project.id, now=clock.now))
    planned = Retention(env.db, clock=clock, batch_size=2).enforce_cap(project.id, dry_run=True)
    assert [e.build_id for e in planned] == builds[:3]
    assert len(_build_ids(env, project.id)) == 5


def test_stale_pending_and_failed_builds_are_cleaned_after_24h(env: Env, clock: FakeClock) -> None:
    project = env.control.create_project("p")
    pending = env.control.create_build(project.id)
    env.image(project.id, [b"half-pushed"], [pending.id])
    failed = env.control.create_build(project.id)
    env.control.mark_failed(failed.id, "compiler said no")
    retention = Retention(env.db, clock=clock)
    clock.now = datetime.now(UTC)  # the builds carry the real creation time, however long the set-up took
    clock.advance(timedelta(hours=23))
    assert retention.expire() == []
    clock.advance(timedelta(hours=1, seconds=1))
    evicted = retention.expire()
    assert {(e.build_id, e.rule) for e in evicted} == {(pending.id, "stale"), (failed.id, "stale")}
    assert env.metadata.get_manifest(project.id, pending.id, by_digest=False) is None
    assert env.metadata.count_manifests(project.id) == 0


def test_eviction_removes_tags_children_and_referrers_but_keeps_what_others_need(env: Env, clock: FakeClock) -> None:
    project = env.control.create_project("p", retention=None)
    repo = project.id
    build = env.control.create_build(project.id)
    other = env.control.create_build(project.id)
    shared_child = env.image(repo, [b"shared"], [])
    own_child = env.image(repo, [b"own"], [])
    index = env.index(repo, [shared_child, own_child], [build.id])
    target = env.image(repo, [b"target"], [f"{build.id}-web"])
    signature = env.image(repo, [b"sig"], [], subject=index)
    env.control.mark_saved(build.id, platforms=["linux/amd64"], save_tags=["latest"], now=clock.now)
    # The other build's index shares one child; its own save-tag looks like one of ours.
    env.index(repo, [shared_child], [other.id, f"{build.id}-lookalike"])
    env.control.mark_saved(other.id, platforms=["linux/amd64"], save_tags=[f"{build.id}-lookalike"], now=clock.now)

    eviction = Retention(env.db, clock=clock).evict_build(build.id, "manual", "admin:ops")
    assert set(eviction.tags) == {build.id, f"{build.id}-web", "latest"}
    with env.db.read() as session:
        digests = set(session.scalars(select(Manifest.digest)))
        tags = set(session.scalars(select(Tag.name)))
        save_tags = set(session.scalars(select(SaveTag.tag)))
    assert index not in digests and own_child not in digests and target not in digests and signature not in digests
    assert shared_child in digests
    assert tags == {other.id, f"{build.id}-lookalike"}
    assert save_tags == {f"{build.id}-lookalike"}
    latest = audit.explain_missing(env.db, repo, "latest")
    assert latest is not None and latest.startswith("tag latest followed build") and "admin:ops" in latest
    assert audit.explain_missing(env.db, repo, f"{build.id}-web") is not None
    assert audit.explain_missing(env.db, repo, "never-existed") is None


def test_manifest_still_tagged_elsewhere_survives(env: Env, clock: FakeClock) -> None:
    project = env.control.create_project("p", retention=None)
    first = env.control.create_build(project.id)
    second = env.control.create_build(project.id)
    digest = env.image(project.id, [b"same"], [first.id, second.id])
    for build in (first, second):
        env.control.mark_saved(build.id, platforms=["linux/amd64"], now=clock.now)
    Retention(env.db, clock=clock).evict_build(first.id)
    assert env.metadata.get_manifest(project.id, second.id, by_digest=False) is not None
    assert env.metadata.get_manifest(project.id, digest, by_digest=True) is not None
