"""Database leases: "only one garbage collector at a time", across every server process sharing the database.

A lease is a row ``(name, holder, expires_at)``. Acquiring is one atomic statement pair inside a write
transaction (``BEGIN IMMEDIATE`` serialises them): take the row over if it is ours or has expired, else
insert it if absent. The holder renews it while working; if the process dies (``kill -9``) the lease simply
expires and the next process to ask gets it. A holder that fails to renew (someone else took an expired
lease) must stop, which :meth:`Lease.renew` reports.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from cargohold.clock import WallClock, utc_now
from cargohold.metadata.db import Database, rowcount, upsert
from cargohold.metadata.models import Lease as LeaseRow


def default_holder() -> str:
    """Unique per process and per lease object, readable in the table: ``host:pid:random``."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _holder_is_dead(holder: str) -> bool:
    """True only when the holder ran on this host and its process no longer exists."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname()[:60] or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LeaseLost(RuntimeError):
    """Another holder took the lease over (ours expired): the work in progress must stop."""


class Lease:
    def __init__(
        self,
        db: Database,
        name: str,
        *,
        ttl: timedelta = timedelta(minutes=2),
        clock: WallClock = utc_now,
        holder: str | None = None,
    ) -> None:
        self.db = db
        self.name = name
        self.ttl = ttl
        self.clock = clock
        self.holder = holder or default_holder()
        self._expires_at: datetime | None = None

    def acquire(self) -> bool:
        """Take the lease if it is free, expired, or already ours; False if someone else holds it."""
        now = self.clock()
        expires = now + self.ttl
        with self.db.write() as session:
            taken = rowcount(
                session.execute(
                    update(LeaseRow)
                    .where(LeaseRow.name == self.name)
                    .where((LeaseRow.holder == self.holder) | (LeaseRow.expires_at <= now))
                    .values(holder=self.holder, expires_at=expires)
                )
            )
            if not taken:
                # RETURNING, not the row count: psycopg reports -1 for an INSERT ... ON CONFLICT DO NOTHING.
                inserted = session.scalar(
                    upsert(session, LeaseRow)
                    .values(name=self.name, holder=self.holder, expires_at=expires)
                    .on_conflict_do_nothing(index_elements=["name"])
                    .returning(LeaseRow.name)
                )
                taken = int(inserted is not None)
            if not taken:
                holder = session.scalar(select(LeaseRow.holder).where(LeaseRow.name == self.name))
                if holder is not None and _holder_is_dead(holder):
                    # Same machine, process gone (killed mid-pass): no need to wait out its lease.
                    taken = rowcount(
                        session.execute(
                            update(LeaseRow)
                            .where(LeaseRow.name == self.name, LeaseRow.holder == holder)
                            .values(holder=self.holder, expires_at=expires)
                        )
                    )
        if taken:
            self._expires_at = expires
        return bool(taken)

    def renew(self, *, force: bool = False) -> None:
        """Extend the lease when half its time is used (cheap to call often); raises :class:`LeaseLost`."""
        now = self.clock()
        if not force and self._expires_at is not None and self._expires_at - now > self.ttl / 2:
            return
        expires = now + self.ttl
        with self.db.write() as session:
            kept = rowcount(
                session.execute(
                    update(LeaseRow)
                    .where(LeaseRow.name == self.name, LeaseRow.holder == self.holder, LeaseRow.expires_at > now)
                    .values(expires_at=expires)
                )
            )
        if not kept:
            raise LeaseLost(f"lease {self.name!r} expired and was taken over; stopping")
        self._expires_at = expires

    def release(self) -> None:
        with self.db.write() as session:
            session.execute(delete(LeaseRow).where(LeaseRow.name == self.name, LeaseRow.holder == self.holder))
        self._expires_at = None
