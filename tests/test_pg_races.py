"""Races between processes on one PostgreSQL database, which SQLite's single writer used to rule out.

Each "process" is a thread with a :class:`Database` of its own (its own engine and connection pool, so its own
server-side sessions, exactly what two ``cargohold serve`` replicas have); a barrier starts them together.
Under PostgreSQL's READ COMMITTED nothing but the locks in the stores (``metadata.db.hold_lock``, row locks)
orders these transactions: with those locks removed, each test here fails within its rounds.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cargohold.lifecycle.gc import GarbageCollector
from cargohold.lifecycle.metering import Metering
from cargohold.lifecycle.retention import Retention
from cargohold.metadata.control import ControlStore, CredentialRecord, ParentInactive, new_id
from cargohold.metadata.db import Database
from cargohold.metadata.models import (
    Blob,
    Build,
    Credential,
    LifecycleEvent,
    Manifest,
    ManifestReference,
    RepositoryBlob,
)
from cargohold.metadata.store import MetadataStore, MissingReferences
from cargohold.storage.filesystem import FilesystemBlobStore
from test_lifecycle_support import Env

ROUNDS = 6


@pytest.fixture
def replicas(pg_migrated_url: str, tmp_path: Path) -> Iterator[tuple[Env, Env]]:
    """Two replicas on one database and one blob store, each with its own engine."""
    envs = []
    for _ in range(2):
        db = Database(pg_migrated_url)
        envs.append(Env(db, MetadataStore(db), ControlStore(db), FilesystemBlobStore(tmp_path / "data", fsync=False)))
    try:
        yield envs[0], envs[1]
    finally:
        for env in envs:
            env.db.dispose()


def _together(*work: Callable[[], object]) -> list[object]:
    """Run each callable on its own thread, released at once; their results (re-raising the first error)."""
    barrier = threading.Barrier(len(work))
    results: list[object] = [None] * len(work)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work[index]()
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    return results


def test_manifest_put_and_garbage_collection_never_leave_a_manifest_without_its_blobs(
    replicas: tuple[Env, Env],
) -> None:
    """Replica A pushes images (links, then the manifest's reference check); replica B collects garbage with no
    grace period, so every link not yet referenced is fair game. Whatever interleaving happens, every blob a
    stored manifest references is still linked in its repository, recorded, and on disk."""
    pusher, collector = replicas
    gc = GarbageCollector(collector.db, collector.blobs, grace=timedelta(0), clock=lambda: datetime.now(UTC))
    stop = threading.Event()
    pushed: list[str] = []

    def push() -> None:
        try:
            for number in range(40):
                # MissingReferences: GC won, the blob went before the manifest came (the client re-uploads).
                with contextlib.suppress(MissingReferences):
                    pushed.append(pusher.image("race/gc", [f"layer {number}".encode(), b"shared"], [f"t{number}"]))
        finally:
            stop.set()

    def collect() -> None:
        while not stop.is_set():
            gc.run()

    _together(push, collect)
    gc.run()
    assert pushed, "no push ever won against the collector: the test shows nothing"
    with pusher.db.read() as session:
        dangling = session.execute(
            select(Manifest.digest, ManifestReference.digest)
            .join(ManifestReference, ManifestReference.manifest_id == Manifest.id)
            .where(ManifestReference.kind == "blob")
            .where(
                ~select(RepositoryBlob.digest)
                .where(RepositoryBlob.repository_id == Manifest.repository_id)
                .where(RepositoryBlob.digest == ManifestReference.digest)
                .exists()
                | ~select(Blob.digest).where(Blob.digest == ManifestReference.digest).exists()
            )
        ).all()
        referenced = set(
            session.scalars(select(ManifestReference.digest).where(ManifestReference.kind == "blob").distinct())
        )
    assert dangling == []
    on_disk = {str(digest) for digest in pusher.blobs.iter_digests()}
    assert referenced <= on_disk


def test_two_saves_over_the_cap_at_once_evict_each_build_once(replicas: tuple[Env, Env]) -> None:
    """Two replicas enforce a project's cap at the same moment (two builds saved at once): the project ends at
    its cap, not below it, and every evicted build has exactly one eviction in the audit log."""
    first, second = replicas
    for round_ in range(ROUNDS):
        project = first.control.create_project(f"cap-{round_}", retention=None, max_builds=2)
        builds = [first.saved_build(project.id, layers=[f"{round_}-{n}".encode()]) for n in range(6)]
        evicted = _together(
            lambda pid=project.id: Retention(first.db).enforce_cap(pid),
            lambda pid=project.id: Retention(second.db).enforce_cap(pid),
        )
        evicted_ids = [e.build_id for batch in evicted for e in batch]  # type: ignore[attr-defined]
        assert sorted(evicted_ids) == sorted(builds[:4]), f"round {round_}: evicted {evicted_ids}"
        with first.db.read() as session:
            saved = session.scalar(
                select(func.count()).select_from(Build).where(Build.project_id == project.id, Build.status == "saved")
            )
            events = session.execute(
                select(LifecycleEvent.build_id, func.count())
                .where(LifecycleEvent.project_id == project.id, LifecycleEvent.action == "evict")
                .group_by(LifecycleEvent.build_id)
            ).all()
        assert saved == 2
        assert dict(events) == {build_id: 1 for build_id in builds[:4]}


def test_a_jti_is_used_once_across_replicas(replicas: tuple[Env, Env]) -> None:
    expires = datetime.now(UTC) + timedelta(minutes=5)
    for round_ in range(ROUNDS):
        claims = [env.control for env in replicas for _ in range(3)]
        results = _together(
            *(lambda c=control, jti=f"jti-{round_}": c.claim_jti("https://issuer", jti, expires) for control in claims)
        )
        assert sorted(results) == [False] * 5 + [True]  # type: ignore[type-var]


def test_usage_is_accrued_once_when_two_replicas_meter_at_once(replicas: tuple[Env, Env]) -> None:
    """Every replica's sweep meters; two at once must not both add the same interval (billing)."""
    first, second = replicas
    start = datetime(2026, 6, 10, tzinfo=UTC)
    project = first.control.create_project("metered", retention=None)
    for round_ in range(ROUNDS):
        began = start + timedelta(hours=2 * round_)
        # 1 GB stored from `began` (nothing is pushed, so each refresh re-measures 0 bytes after accruing it)
        Metering(first.db, clock=lambda b=began: b).record(project.id, 10**9)
        moment = began + timedelta(hours=1)
        _together(
            lambda m=moment: Metering(first.db, clock=lambda: m).refresh([project.id]),
            lambda m=moment: Metering(second.db, clock=lambda: m).refresh([project.id]),
        )
    usage = Metering(first.db, clock=lambda: start + timedelta(hours=2 * ROUNDS)).usage(project.id, "2026-06")
    assert usage.byte_hours == pytest.approx(ROUNDS * 10**9 * 1.0)


def _credential(parent_id: str | None = None) -> CredentialRecord:
    return CredentialRecord(
        id=new_id(),
        kind="project",
        name="race",
        token_hash=secrets.token_hex(32),
        created_at=datetime.now(UTC),
        parent_id=parent_id,
    )


def test_no_child_minted_during_a_revocation_outlives_its_parent(replicas: tuple[Env, Env]) -> None:
    """Replica A mints children of a credential as fast as it can while replica B revokes the credential:
    every child either was revoked with it or was refused; none stays live under a revoked parent."""
    minter, revoker = replicas
    for _ in range(4):
        parent = minter.control.add_credential(_credential())
        started = threading.Event()

        def mint(parent_id: str = parent.id, started: threading.Event = started) -> int:
            minted = 0
            while True:
                try:
                    minter.control.add_credential(_credential(parent_id))
                except ParentInactive:
                    return minted
                minted += 1
                started.set()

        def revoke(parent_id: str = parent.id, started: threading.Event = started) -> int:
            started.wait(10)
            return revoker.control.revoke_credential(parent_id)

        _together(mint, mint, mint, revoke)
        with minter.db.read() as session:
            live_children = session.scalar(
                select(func.count())
                .select_from(Credential)
                .where(Credential.parent_id == parent.id, Credential.revoked_at.is_(None))
            )
        assert live_children == 0
