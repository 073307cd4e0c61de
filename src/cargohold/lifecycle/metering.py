"""Storage metering: what each project stores now, what it stored over each month, and what that costs.

**Stored bytes** of a project are the bytes its repositories (``<project>`` and ``<project>/…``) need to
serve every manifest they hold: each blob a manifest there references counts *once per project* (twenty
builds sharing a base layer pay for it once; two projects sharing a blob each pay for it, since either
may keep it alive alone), plus the manifests' own bytes. Blobs that no manifest references any more (after
an eviction, waiting for the garbage collector) are not billed.

**Usage** is the integral of stored bytes over time, accumulated as byte-hours per calendar month (UTC).
Stored bytes are piecewise constant: they change on save, eviction and garbage collection, and each
change first *accrues* the old value over the time since the last accrual (splitting the interval at
month boundaries) and then records the new value. Reading a month's usage adds the live, not yet accrued
interval, so the answer is exact at any moment. Byte-hours are kept as doubles: relative error ~1e-16 per
accrual, far below a cent.

**Billing**: GB-month = byte-hours / (hours in that month) / 10^9, so 1 GB kept for a whole month is 1
GB-month whatever the month's length. Each project gets a free allowance per calendar month (default 50
GB-months, i.e. "the first 50 GB stored all month are free") and pays ``price`` (default $0.20) per
GB-month above it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from cargohold.clock import WallClock, utc_now
from cargohold.isotime import iso
from cargohold.metadata.db import Database, upsert
from cargohold.metadata.models import (
    Blob,
    Manifest,
    ManifestReference,
    Project,
    ProjectStorage,
    Repository,
    UsageMonth,
)

GB = 10**9
DEFAULT_PRICE_PER_GB_MONTH = 0.20
DEFAULT_FREE_GB_MONTHS = 50.0


def month_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def month_start(month: str) -> datetime:
    """``"2026-02"`` -> 2026-02-01T00:00Z; raises ValueError with a usable message."""
    try:
        year, number = (int(part) for part in month.split("-"))
        return datetime(year, number, 1, tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{month!r} is not a month; use YYYY-MM (e.g. 2026-02)") from None


def next_month(start: datetime) -> datetime:
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)


def hours_in_month(month: str) -> float:
    start = month_start(month)
    return (next_month(start) - start).total_seconds() / 3600


def split_by_month(start: datetime, end: datetime) -> list[tuple[str, timedelta]]:
    """The part of ``[start, end)`` that falls in each calendar month (UTC), in order."""
    parts: list[tuple[str, timedelta]] = []
    cursor = start.astimezone(UTC)
    end = end.astimezone(UTC)
    while cursor < end:
        boundary = next_month(datetime(cursor.year, cursor.month, 1, tzinfo=UTC))
        stop = min(boundary, end)
        parts.append((month_of(cursor), stop - cursor))
        cursor = stop
    return parts


def _byte_hours(stored_bytes: int, span: timedelta) -> float:
    # Integer microseconds times bytes is exact in Python; one division at the end.
    micros = span // timedelta(microseconds=1)
    return stored_bytes * micros / 3_600_000_000


@dataclass(frozen=True, slots=True)
class Usage:
    project_id: str
    month: str
    stored_bytes: int
    byte_hours: float
    hours_in_month: float
    price_per_gb_month: float
    free_gb_months: float
    as_of: datetime

    @property
    def gb_months(self) -> float:
        return self.byte_hours / self.hours_in_month / GB

    @property
    def billable_gb_months(self) -> float:
        return max(0.0, self.gb_months - self.free_gb_months)

    @property
    def cost(self) -> float:
        return self.billable_gb_months * self.price_per_gb_month

    def to_json(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "month": self.month,
            "stored_bytes": self.stored_bytes,
            "byte_hours": self.byte_hours,
            "gb_months": self.gb_months,
            "free_gb_months": self.free_gb_months,
            "billable_gb_months": self.billable_gb_months,
            "price_per_gb_month": self.price_per_gb_month,
            "estimated_cost": round(self.cost, 4),
            "currency": "USD",
            "as_of": iso(self.as_of),
        }


def project_stored_bytes(session: Session, project_id: str) -> int:
    """Bytes the project's repositories need: distinct referenced blobs once, plus manifest bytes."""
    repositories = select(Repository.id).where(
        or_(Repository.name == project_id, Repository.name.startswith(f"{project_id}/", autoescape=True))
    )
    referenced = (
        select(ManifestReference.digest)
        .join(Manifest, Manifest.id == ManifestReference.manifest_id)
        .where(Manifest.repository_id.in_(repositories), ManifestReference.kind == "blob")
    )
    blob_bytes = session.scalar(select(func.coalesce(func.sum(Blob.size), 0)).where(Blob.digest.in_(referenced)))
    manifest_bytes = session.scalar(
        select(func.coalesce(func.sum(Manifest.size), 0)).where(Manifest.repository_id.in_(repositories))
    )
    return int(blob_bytes or 0) + int(manifest_bytes or 0)


class Metering:
    def __init__(
        self,
        db: Database,
        *,
        clock: WallClock = utc_now,
        price_per_gb_month: float = DEFAULT_PRICE_PER_GB_MONTH,
        free_gb_months: float = DEFAULT_FREE_GB_MONTHS,
    ) -> None:
        self.db = db
        self.clock = clock
        self.price_per_gb_month = price_per_gb_month
        self.free_gb_months = free_gb_months

    def refresh(self, project_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Accrue usage up to now and re-measure stored bytes (all projects when ``project_ids`` is None)."""
        with self.db.read() as session:
            ids = list(project_ids) if project_ids is not None else list(session.scalars(select(Project.id)))
        measured: dict[str, int] = {}
        for project_id in ids:
            with self.db.write() as session:
                if session.get(Project, project_id) is None:
                    continue
                stored = project_stored_bytes(session, project_id)
                self._record(session, project_id, stored, self.clock())
                measured[project_id] = stored
        return measured

    def record(self, project_id: str, stored_bytes: int) -> None:
        """Set a project's stored bytes as of now, accruing the previous value first."""
        with self.db.write() as session:
            self._record(session, project_id, stored_bytes, self.clock())

    @staticmethod
    def _record(session: Session, project_id: str, stored_bytes: int, now: datetime) -> None:
        # Locked: two processes accruing at once would both add the interval since the same metered_at.
        row = session.get(ProjectStorage, project_id, with_for_update=True)
        if row is None:
            first = upsert(session, ProjectStorage).values(
                project_id=project_id, stored_bytes=stored_bytes, metered_at=now
            )
            if session.scalar(
                first.on_conflict_do_nothing(index_elements=["project_id"]).returning(ProjectStorage.project_id)
            ):
                return
            row = session.get(ProjectStorage, project_id, with_for_update=True, populate_existing=True)
            assert row is not None
        if now > row.metered_at:
            for month, span in split_by_month(row.metered_at, now):
                amount = _byte_hours(row.stored_bytes, span)
                if amount:
                    statement = upsert(session, UsageMonth).values(
                        project_id=project_id, month=month, byte_hours=amount
                    )
                    session.execute(
                        statement.on_conflict_do_update(
                            index_elements=["project_id", "month"],
                            set_={"byte_hours": UsageMonth.byte_hours + statement.excluded.byte_hours},
                        )
                    )
            row.metered_at = now
        row.stored_bytes = stored_bytes

    def stored_bytes(self) -> dict[str, int]:
        """Last measured stored bytes per project (what the metrics gauge shows)."""
        with self.db.read() as session:
            rows = session.execute(select(ProjectStorage.project_id, ProjectStorage.stored_bytes)).all()
            return {project_id: stored for project_id, stored in rows}

    def usage(self, project_id: str, month: str | None = None) -> Usage:
        """A month's usage (default: the current one), including the interval not yet accrued."""
        now = self.clock()
        month = month or month_of(now)
        start = month_start(month)
        end = next_month(start)
        with self.db.read() as session:
            if session.get(Project, project_id) is None:
                raise LookupError(f"project {project_id} does not exist")
            accrued = session.scalar(
                select(UsageMonth.byte_hours).where(UsageMonth.project_id == project_id, UsageMonth.month == month)
            )
            row = session.get(ProjectStorage, project_id)
            stored = row.stored_bytes if row is not None else 0
            live = 0.0
            if row is not None:
                window_start, window_end = max(row.metered_at, start), min(now, end)
                if window_end > window_start:
                    live = _byte_hours(row.stored_bytes, window_end - window_start)
        return Usage(
            project_id=project_id,
            month=month,
            stored_bytes=stored,
            byte_hours=(accrued or 0.0) + live,
            hours_in_month=hours_in_month(month),
            price_per_gb_month=self.price_per_gb_month,
            free_gb_months=self.free_gb_months,
            as_of=now,
        )
