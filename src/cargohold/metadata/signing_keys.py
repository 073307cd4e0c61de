"""The registry-token signing keys every replica shares (table ``signing_keys``).

The store keeps PEM text and knows nothing about cryptography: ``server/auth/signing.py`` turns rows into
keys. Order is by ``serial`` (assigned by the database), so "the newest key signs" is one fact all replicas
read the same way, without a separate pointer that could disagree with the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from cargohold.metadata.db import SIGNING_KEYS_LOCK, Database, hold_lock, rowcount
from cargohold.metadata.models import SigningKey


@dataclass(frozen=True, slots=True)
class StoredSigningKey:
    serial: int
    kid: str
    private_pem: str
    created_at: datetime


class SigningKeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def list_keys(self) -> list[StoredSigningKey]:
        """Every key, oldest first: the last one is the one that signs."""
        with self.db.read() as session:
            rows = session.scalars(select(SigningKey).order_by(SigningKey.serial)).all()
            return [StoredSigningKey(r.serial, r.kid, r.private_key, r.created_at) for r in rows]

    def add(self, kid: str, private_pem: str, *, only_if_empty: bool = False) -> bool:
        """Store a key (it becomes the signing key); False if ``only_if_empty`` and a key exists already, or
        the same key is stored already.

        ``only_if_empty`` is for first starts: the check and the insert share one write transaction (on
        PostgreSQL also an advisory lock), so replicas starting at once store one key and sign with it.
        """
        try:
            with self.db.write() as session:
                if only_if_empty:
                    hold_lock(session, SIGNING_KEYS_LOCK)
                if only_if_empty and session.scalar(select(func.count()).select_from(SigningKey)):
                    return False
                session.add(SigningKey(kid=kid, private_key=private_pem, created_at=datetime.now(UTC)))
        except IntegrityError:
            return False
        return True

    def delete(self, kid: str) -> bool:
        """Remove a key, so tokens it signed stop verifying; False if there was none."""
        with self.db.write() as session:
            return rowcount(session.execute(delete(SigningKey).where(SigningKey.kid == kid))) > 0
