"""Web dashboard sessions: one row per signed-in browser, keyed by the SHA-256 of its session ID.

The dashboard (``cargohold.server.ui``) exchanges a token for a session once; afterwards the browser holds
only a random session ID in an HttpOnly cookie. Keeping sessions in the metadata database (not in process
memory) lets every replica behind a load balancer accept them, and keeping only the ID's hash means a copy
of the database signs nobody in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from cargohold.metadata.db import Database, rowcount
from cargohold.metadata.models import UiSession


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id_hash: str
    credential_id: str
    csrf_token: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


def _record(row: UiSession) -> SessionRecord:
    return SessionRecord(
        row.id_hash, row.credential_id, row.csrf_token, row.created_at, row.last_seen_at, row.expires_at
    )


class SessionStore:
    """Create, find, touch and end dashboard sessions (blocking: call through the server's thread pool)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, record: SessionRecord) -> SessionRecord:
        with self.db.write() as session:
            session.add(
                UiSession(
                    id_hash=record.id_hash,
                    credential_id=record.credential_id,
                    csrf_token=record.csrf_token,
                    created_at=record.created_at,
                    last_seen_at=record.last_seen_at,
                    expires_at=record.expires_at,
                )
            )
        return record

    def live(self, id_hash: str, now: datetime, idle: timedelta) -> SessionRecord | None:
        """The session, unless it is unknown, past its absolute expiry or idle for longer than ``idle``."""
        with self.db.read() as session:
            row = session.get(UiSession, id_hash)
            if row is None or row.expires_at <= now or row.last_seen_at + idle <= now:
                return None
            return _record(row)

    def touch(self, id_hash: str, now: datetime) -> None:
        """Record activity (the idle clock restarts)."""
        with self.db.write() as session:
            session.execute(update(UiSession).where(UiSession.id_hash == id_hash).values(last_seen_at=now))

    def end(self, id_hash: str) -> bool:
        with self.db.write() as session:
            return rowcount(session.execute(delete(UiSession).where(UiSession.id_hash == id_hash))) > 0

    def end_for_credential(self, credential_id: str) -> int:
        """Sign out every browser acting as this credential (it was revoked or expired)."""
        with self.db.write() as session:
            return rowcount(session.execute(delete(UiSession).where(UiSession.credential_id == credential_id)))

    def prune(self, now: datetime, idle: timedelta) -> int:
        """Delete sessions past their absolute expiry or idle for longer than ``idle``."""
        with self.db.write() as session:
            statement = delete(UiSession).where((UiSession.expires_at <= now) | (UiSession.last_seen_at <= now - idle))
            return rowcount(session.execute(statement))

    def count(self) -> int:
        with self.db.read() as session:
            return len(session.scalars(select(UiSession.id_hash)).all())
