"""Making room by itself: evicting builds for space when free space is under the minimum.

An ephemeral registry can recover from a full disk on its own: its builds were always going to expire. When
the blob store's filesystem has less free space than ``--min-free-space`` (see
:mod:`cargohold.storage.space`), the server (``--evict-for-space``, on by default) first collects garbage
(earlier evictions may have left blobs behind), then evicts builds round by round, collecting garbage after
each round, until free space is back at :data:`TARGET_FACTOR` times the minimum (the margin keeps it from
evicting again at the next upload), or until nothing more may go.

**Which builds, and why that is fair.** Only saved, unpinned builds, and never a project's newest saved
build: a build is pinned because someone wants it kept, and the newest build is the one a running CI
pipeline is most likely pulling right now. Among the rest, projects take turns: round 1 holds the oldest
candidate of every project, round 2 the second oldest of every project, and so on; within a round the
oldest goes first. So a project that saves a lot cannot push every other project's builds out before
losing its own, and each project gives up its oldest builds first, as retention would have. A round is
cut short once the builds' recorded unique sizes add up to the bytes still missing (the estimate is
checked against what garbage collection actually frees before the next round).

**Same rules and audit log as retention.** Eviction goes through
:class:`~cargohold.lifecycle.retention.Retention`'s batch eviction, with the rule re-checked inside the
write transaction (a build pinned meanwhile stays), and each build gets an ``evict`` event with rule
``space`` in the audit log, so ``cargohold builds history`` and a later pull say what happened.

**Progress, not hope.** Garbage collection keeps blobs linked or pulled within ``--gc-grace``, so builds
evicted for space free their bytes only once that window has passed. Blobs that no manifest references any
more therefore count as freed already when deciding how much to evict, and a round after which garbage
collection frees nothing ends the pass: evicting more builds would not free bytes any sooner. The
server tries again later (see :class:`cargohold.server.http.space.SpaceMonitor`).

**Several server processes** share the work through the ``space`` database lease: one reclaims, the
others skip. The lease and the evictions are small writes; on a disk that is really full the server
first releases its reserve file (:class:`~cargohold.storage.space.SpaceReserve`) so they have room.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select

from cargohold.isotime import iso
from cargohold.lifecycle.gc import GcReport
from cargohold.lifecycle.lease import Lease, LeaseLost
from cargohold.lifecycle.retention import (
    BATCH_SIZE,
    Eviction,
    Retention,
    _Batch,
    _BuildRow,
    _Candidate,
)
from cargohold.metadata.models import Blob, Build, ManifestReference
from cargohold.storage.space import SpaceStatus, format_bytes

log = logging.getLogger(__name__)

RULE = "space"
TARGET_FACTOR = 1.5
"""Evict until free space is this many times the minimum: back above it, plus a margin of half of it."""
MAX_ROUNDS = 100
"""Eviction rounds per pass at most (each followed by a garbage collection), so one pass always ends."""
LEASE_TTL = timedelta(minutes=10)
"""Renewed every round; a garbage collection between two renewals may take minutes on a big registry."""


@dataclass
class ReclaimReport:
    started_free: int = 0
    finished_free: int = 0
    target: int = 0
    evicted: list[Eviction] = field(default_factory=list)
    bytes_freed: int = 0
    gc_runs: int = 0
    stopped: str | None = None
    """Why the pass ended before reaching the target (nothing left to evict, grace window, lease)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "started_free_bytes": self.started_free,
            "finished_free_bytes": self.finished_free,
            "target_free_bytes": self.target,
            "evicted": [eviction.to_json() for eviction in self.evicted],
            "bytes_freed": self.bytes_freed,
            "gc_runs": self.gc_runs,
            "stopped": self.stopped,
        }


class SpaceReclaimer:
    """One reclaim pass at a time per process; across processes, the ``space`` lease decides."""

    def __init__(
        self,
        retention: Retention,
        collect_garbage: Callable[[], GcReport],
        measure: Callable[[], SpaceStatus],
        *,
        after_evict: Callable[[list[Eviction]], object] | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.retention = retention
        self.db = retention.db
        self.collect_garbage = collect_garbage
        self.measure = measure
        self.after_evict = after_evict
        self.batch_size = batch_size

    def reclaim(self) -> ReclaimReport:
        """Collect garbage and evict builds for space until the blob store is back above the target."""
        status = self.measure()
        report = ReclaimReport()
        blobs = status.blobs
        if blobs is None or not blobs.low:
            return report
        report.started_free = report.finished_free = blobs.free
        report.target = int(blobs.minimum * TARGET_FACTOR)
        lease = Lease(self.db, "space", ttl=LEASE_TTL, clock=self.retention.clock)
        if not lease.acquire():
            report.stopped = "another server process is reclaiming space"
            return report
        try:
            self._run(report, blobs.minimum, lease)
        except LeaseLost as exc:
            report.stopped = str(exc)
        finally:
            lease.release()
        log.log(
            logging.WARNING if report.stopped else logging.INFO,
            "space reclaim: %s free -> %s (target %s); evicted %d builds, GC freed %s%s",
            format_bytes(report.started_free),
            format_bytes(report.finished_free),
            format_bytes(report.target),
            len(report.evicted),
            format_bytes(report.bytes_freed),
            f"; stopped: {report.stopped}" if report.stopped else "",
        )
        return report

    def _run(self, report: ReclaimReport, minimum: int, lease: Lease) -> None:
        if not self._collect(report):
            return
        for _ in range(MAX_ROUNDS):
            lease.renew()
            status = self.measure()
            blobs = status.blobs
            assert blobs is not None
            report.finished_free = blobs.free
            missing = report.target - blobs.free
            if missing <= 0:
                return
            pending = self._pending_bytes()
            if pending >= missing:
                report.stopped = (
                    f"{format_bytes(pending)} of blobs no manifest references any more wait for --gc-grace to pass; "
                    "the next check collects them"
                )
                return
            ids = self._pick(missing - pending)
            if not ids:
                report.stopped = "every remaining build is pinned or its project's newest"
                return
            evicted = self.retention._evict_ids(ids, "system", dry_run=False, rule_of=_space_rule(blobs.free, minimum))
            report.evicted.extend(evicted)
            if evicted and self.after_evict is not None:
                self.after_evict(evicted)
            freed_before = report.bytes_freed
            if not self._collect(report):
                return
            if report.bytes_freed == freed_before:
                report.stopped = (
                    "garbage collection freed nothing yet (the evicted builds' blobs were pushed or pulled within "
                    "--gc-grace); the next check collects them"
                )
                return
        report.stopped = f"stopped after {MAX_ROUNDS} rounds"

    def _collect(self, report: ReclaimReport) -> bool:
        gc = self.collect_garbage()
        report.gc_runs += 1
        report.bytes_freed += gc.bytes_freed
        blobs = self.measure().blobs
        if blobs is not None:
            report.finished_free = blobs.free
        if gc.skipped:
            report.stopped = f"garbage collection did not run: {gc.skipped}"
            return False
        return True

    def _pending_bytes(self) -> int:
        """Bytes of blobs that no manifest references: garbage collection frees them once their grace passes.

        Evicting more builds for space would not make that happen sooner, so they count as freed already.
        """
        referenced = exists().where(ManifestReference.digest == Blob.digest, ManifestReference.kind == "blob")
        with self.db.read() as session:
            return int(session.scalar(select(func.coalesce(func.sum(Blob.size), 0)).where(~referenced)) or 0)

    def _pick(self, missing: int) -> list[str]:
        """Build IDs for the next round: projects take turns, oldest first, until their sizes cover ``missing``."""
        saved = Build.status == "saved"
        newest_first = func.row_number().over(
            partition_by=Build.project_id, order_by=(Build.saved_at.desc(), Build.created_at.desc(), Build.id.desc())
        )
        ranked = (
            select(Build.id, Build.project_id, Build.saved_at, Build.created_at, Build.unique_size, Build.pinned)
            .add_columns(newest_first.label("newest_rank"))
            .where(saved)
            .subquery()
        )
        turn = func.row_number().over(
            partition_by=ranked.c.project_id, order_by=(ranked.c.saved_at, ranked.c.created_at, ranked.c.id)
        )
        evictable = (
            select(ranked.c.id, ranked.c.saved_at, ranked.c.unique_size, turn.label("turn"))
            .where(ranked.c.pinned.is_(False), ranked.c.newest_rank > 1)
            .subquery()
        )
        query = (
            select(evictable.c.id, evictable.c.unique_size)
            .order_by(evictable.c.turn, evictable.c.saved_at, evictable.c.id)
            .limit(self.batch_size)
        )
        ids: list[str] = []
        covered = 0
        with self.db.read() as session:
            for build_id, unique_size in session.execute(query):
                ids.append(build_id)
                covered += unique_size or 0
                if covered >= missing:
                    break
        return ids


def _space_rule(free: int, minimum: int) -> Any:
    """Re-checked inside the eviction transaction: still saved, unpinned, and not its project's newest."""
    newest: dict[str, str | None] = {}

    def rule(build: _BuildRow, batch: _Batch, now: datetime, chosen: int) -> _Candidate | None:
        if build.status != "saved" or build.pinned:
            return None
        if build.project_id not in newest:
            newest[build.project_id] = batch.session.scalar(
                select(Build.id)
                .where(Build.project_id == build.project_id, Build.status == "saved")
                .order_by(Build.saved_at.desc(), Build.created_at.desc(), Build.id.desc())
                .limit(1)
            )
        if newest[build.project_id] == build.id:
            return None
        return _Candidate(build, RULE, {"free_bytes": free, "min_free_bytes": minimum, "saved_at": iso(build.saved_at)})

    return rule


__all__ = ["RULE", "TARGET_FACTOR", "ReclaimReport", "SpaceReclaimer"]
