"""Free space and storage faults, piece by piece: parsing the minimum, recognising faults in real SQLite and
OS errors, which builds the server evicts for space (a real database, blob store and garbage collector), and
what the client, CLI and actions say about a full registry."""

from __future__ import annotations

import errno
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from cargohold.actions.common import images_errors
from cargohold.actions.runtime import ActionError
from cargohold.client.errors import RegistryError, is_storage_full, storage_full_reason
from cargohold.domain.space import SpaceMonitor
from cargohold.lifecycle import audit
from cargohold.lifecycle.gc import GarbageCollector
from cargohold.lifecycle.retention import Retention
from cargohold.lifecycle.space import SpaceReclaimer
from cargohold.storage.faults import classify
from cargohold.storage.space import FilesystemSpace, GiB, MiB, MinFreeSpace, SpaceGuard, SpaceReserve, SpaceStatus
from test_lifecycle_support import Env, FakeClock, make_env

# --- the minimum ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text_value", "size", "fraction"),
    [
        ("2GiB", 2 * GiB, None),
        ("500MB", 500 * 10**6, None),
        ("1.5 GiB", int(1.5 * GiB), None),
        ("1048576", MiB, None),
        ("0", 0, None),
        ("5%", None, 0.05),
        ("12.5 %", None, 0.125),
    ],
)
def test_min_free_space_parses_sizes_and_percentages(text_value: str, size: int | None, fraction: float | None) -> None:
    parsed = MinFreeSpace.parse(text_value)
    assert (parsed.size, parsed.fraction) == (size, fraction)


@pytest.mark.parametrize("bad", ["", "lots", "5 %%", "100%", "-1GiB", "2 parsecs"])
def test_min_free_space_refuses_nonsense_with_the_accepted_forms(bad: str) -> None:
    with pytest.raises(ValueError, match=r"size or a percentage|below 100%"):
        MinFreeSpace.parse(bad)


def test_the_default_is_five_percent_capped_at_two_gib() -> None:
    default = MinFreeSpace.default()
    assert default.bytes_for(20 * GiB) == GiB  # a 20 GB CI machine keeps 1 GiB
    assert default.bytes_for(40 * MiB) == 2 * MiB  # a tiny test filesystem stays usable
    assert default.bytes_for(2000 * GiB) == 2 * GiB  # a big disk does not idle 100 GiB
    assert MinFreeSpace.parse("0").disabled and not default.disabled


# --- recognising faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind", "name"),
    [
        (errno.ENOSPC, "full", "ENOSPC"),
        (errno.EDQUOT, "full", "EDQUOT"),
        (errno.EIO, "io", "EIO"),
        (errno.EROFS, "io", "EROFS"),
    ],
)
def test_os_errors_are_classified_per_errno(code: int, kind: str, name: str) -> None:
    fault = classify(OSError(code, "boom"))
    assert fault is not None and (fault.kind, fault.name) == (kind, name)


def test_other_errors_are_not_storage_faults() -> None:
    assert classify(OSError(errno.ENOENT, "gone")) is None
    assert classify(ValueError("bug")) is None
    assert classify(PermissionError(errno.EACCES, "no")) is None


def test_a_real_sqlite_full_error_is_found_through_sqlalchemy(tmp_path: Path) -> None:
    """SQLite's own SQLITE_FULL (here from max_page_count, the same code a full disk gives), wrapped by SQLAlchemy."""
    engine = create_engine(f"sqlite:///{tmp_path / 'tiny.db'}")
    with pytest.raises(OperationalError) as raised, engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (v TEXT)"))
        connection.execute(text("PRAGMA max_page_count = 3"))
        for _ in range(100):
            connection.execute(text("INSERT INTO t VALUES (:v)"), {"v": "x" * 2000})
    fault = classify(raised.value)
    assert fault is not None and fault.full and fault.name == "SQLITE_FULL"
    assert "database or disk is full" in fault.describe()
    engine.dispose()


def test_a_corrupt_database_is_an_io_fault(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError) as raised:
        sqlite3.connect(path).execute("SELECT * FROM sqlite_master").fetchall()
    fault = classify(raised.value)
    assert fault is not None and fault.kind == "io"


# --- which builds go for space ------------------------------------------------------------------------------

MIN_FREE = 1 * MiB
LAYER = 200 * 1024


class _Disk:
    """A filesystem of ``capacity`` bytes holding exactly the blob store's files (measured on disk, not guessed)."""

    def __init__(self, env: Env, capacity: int) -> None:
        self.env, self.capacity = env, capacity

    def used(self) -> int:
        return sum(path.stat().st_size for path in self.env.blobs.blobs_dir.rglob("*") if path.is_file())

    def measure(self) -> SpaceStatus:
        free = self.capacity - self.used()
        return SpaceStatus((FilesystemSpace("blob store", "/test", free, self.capacity, MIN_FREE, holds_blobs=True),))


def _layer(tag: str, size: int = LAYER) -> bytes:
    return (tag.encode() * size)[:size]


def _reclaimer(env: Env, disk: _Disk, clock: FakeClock, grace: timedelta) -> SpaceReclaimer:
    gc = GarbageCollector(env.db, env.blobs, grace=grace, clock=clock, delete_workers=1)
    return SpaceReclaimer(Retention(env.db, clock=clock), gc.run, disk.measure)


def test_projects_take_turns_oldest_first_and_pinned_and_newest_builds_stay(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    clock = FakeClock(datetime.now(UTC))
    busy = env.control.create_project("busy")
    quiet = env.control.create_project("quiet")
    saved: dict[str, str] = {}
    for name, project in [("b1", busy), ("q1", quiet), ("b2", busy), ("b3", busy), ("q2", quiet), ("b4", busy)]:
        clock.advance(timedelta(minutes=1))
        saved[name] = env.saved_build(project.id, layers=[_layer(name)], now=clock.now)
    Retention(env.db, clock=clock).pin(saved["b1"], "test")
    # Just under the minimum: reaching 1.5 x the minimum takes half a MiB, the unique bytes of three builds.
    disk = _Disk(env, capacity=_Disk(env, 0).used() + MIN_FREE - 1000)
    clock.advance(timedelta(hours=1))  # past any grace window

    report = _reclaimer(env, disk, clock, grace=timedelta(0)).reclaim()

    # Round 1: quiet's oldest (q1) and busy's oldest evictable (b2: b1 is pinned), oldest first; round 2:
    # busy's next (b3). quiet's newest (q2) and busy's newest (b4) are never candidates.
    assert [eviction.build_id for eviction in report.evicted] == [saved["q1"], saved["b2"], saved["b3"]]
    assert {eviction.rule for eviction in report.evicted} == {"space"}
    assert disk.measure().blobs.free >= 1.5 * MIN_FREE  # type: ignore[union-attr]
    remaining = {build.id for project in (busy, quiet) for build in env.control.list_builds(project.id, limit=50)}
    assert remaining == {saved["b1"], saved["b4"], saved["q2"]}
    assert env.control.get_build(saved["b2"]) is None
    history = [event for event in audit.history(env.db, busy.id) if event.build_id == saved["b2"]]
    assert history and "to free storage space" in audit.describe(history[0])

    # Nothing more may go: the next pass says so instead of evicting pinned or newest builds.
    disk.capacity = 0
    again = _reclaimer(env, disk, clock, grace=timedelta(0)).reclaim()
    assert again.evicted == [] and again.stopped == "every remaining build is pinned or its project's newest"


def test_blobs_waiting_for_the_gc_grace_count_as_freed(tmp_path: Path) -> None:
    """Within --gc-grace, evicting more builds cannot free bytes any sooner: one round, then wait."""
    env = make_env(tmp_path)
    clock = FakeClock(datetime.now(UTC))
    project = env.control.create_project("p")
    builds = []
    for index in range(5):
        clock.advance(timedelta(seconds=1))
        builds.append(env.saved_build(project.id, layers=[_layer(f"layer{index}", 300 * 1024)], now=clock.now))
    # Just under the minimum: half a MiB short of the target, the unique bytes of two builds.
    disk = _Disk(env, capacity=_Disk(env, 0).used() + MIN_FREE - 1000)
    reclaimer = _reclaimer(env, disk, clock, grace=timedelta(hours=1))

    first = reclaimer.reclaim()
    assert [eviction.build_id for eviction in first.evicted] == builds[:2]
    assert first.bytes_freed == 0 and "--gc-grace" in str(first.stopped)
    second = reclaimer.reclaim()
    assert second.evicted == [], "the evicted builds' blobs are on their way out; nothing more may go for them"
    assert "wait for --gc-grace" in str(second.stopped)

    clock.advance(timedelta(hours=2))
    third = reclaimer.reclaim()
    assert third.evicted == [] and third.bytes_freed >= 2 * 300 * 1024 and third.stopped is None


# --- what people read ------------------------------------------------------------------------------------------


def _response(status: int, message: str) -> httpx.Response:
    request = httpx.Request("PATCH", "http://127.0.0.1:5000/v2/p/blobs/uploads/x")
    return httpx.Response(status, json={"errors": [{"code": "DENIED", "message": message}]}, request=request)


SERVER_FULL = (
    "Cargohold's storage is full: 3.0 MiB free on the blob store filesystem and this upload needs 20.0 MiB more, "
    "but the server keeps at least 8.0 MiB free (--min-free-space); uploads are refused until builds expire or an "
    "admin frees space"
)


def test_a_cargohold_507_names_the_problem_and_what_an_admin_can_do() -> None:
    error = RegistryError.from_response("pushing blob sha256:abc… to 127.0.0.1:5000/p", _response(507, SERVER_FULL))
    assert error.storage_full and not error.retryable and is_storage_full(error)
    message = str(error)
    assert message.startswith("pushing blob sha256:abc… to 127.0.0.1:5000/p failed: Cargohold's storage is full: ")
    assert "cargohold builds rm" in message and "cargohold gc" in message and "cargohold usage" in message
    assert message.count("Cargohold's storage is full") == 1
    reason = storage_full_reason(error)
    assert reason is not None and reason.startswith("3.0 MiB free") and "cargohold gc" in reason


def test_another_registrys_507_is_not_blamed_on_cargohold() -> None:
    error = RegistryError.from_response("pushing to ghcr.io/org/app", _response(507, "quota exceeded"))
    assert not error.storage_full and not is_storage_full(error)
    assert "Cargohold" not in str(error) and "507" in str(error)


def test_the_actions_title_a_full_registry_as_such() -> None:
    with pytest.raises(ActionError) as raised, images_errors("Save failed"):
        raise RegistryError.from_response("pushing blob", _response(507, SERVER_FULL))
    assert raised.value.title == "Cargohold's storage is full"
    assert "cargohold gc" in raised.value.message
    with pytest.raises(ActionError) as other, images_errors("Save failed"):
        raise RegistryError.from_response("pushing blob", _response(500, "boom"))
    assert other.value.title == "Save failed"


def test_a_full_database_reads_as_one_sentence_with_the_hint_once() -> None:
    server = (
        "Cargohold's storage is full: GET /api/v1/pull-info failed with database or disk is full (SQLITE_FULL); "
        "ask a Cargohold admin to free space"
    )
    message = str(RegistryError.from_response("resolving build b1", _response(507, server)))
    assert message.count("admin") == 1 and message.endswith("(cargohold usage shows its free space)")


@pytest.mark.parametrize("evict", [True, False])
def test_the_monitor_evicts_for_space_only_when_allowed(tmp_path: Path, evict: bool) -> None:
    """``--no-evict-for-space``: storage stays low (uploads refused, healthz degraded) and no build goes."""
    env = make_env(tmp_path)
    clock = FakeClock(datetime.now(UTC))
    project = env.control.create_project("p")
    builds = [env.saved_build(project.id, layers=[_layer(f"m{index}")], now=clock.now) for index in range(3)]
    # A minimum no filesystem here can meet: the real statvfs of tmp_path always reads as low.
    guard = SpaceGuard(MinFreeSpace(size=1 << 60), blobs=env.blobs.root, database=tmp_path)
    monitor = SpaceMonitor(guard, SpaceReserve(tmp_path / "metadata.db"), evict_for_space=evict, interval=timedelta(1))
    gc = GarbageCollector(env.db, env.blobs, grace=timedelta(0), clock=clock, delete_workers=1)
    monitor.reclaimer = SpaceReclaimer(Retention(env.db, clock=clock), gc.run, guard.measure)

    assert monitor.degraded_reason() is not None
    monitor.check()
    remaining = {build.id for build in env.control.list_builds(project.id, limit=50)}
    assert remaining == ({builds[-1]} if evict else set(builds))
    assert (monitor.last_reclaim is not None) == evict
