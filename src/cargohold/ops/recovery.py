"""Admin credentials that cannot be lost: the first one is kept in a private file, the last one cannot be
revoked by accident, and an operator with access to the data directory can always mint a new one.

* **First admin token.** An empty data directory gets one admin token, printed once. Under systemd or in a
  container standard output goes to a journal, where a secret should not live and may be rotated away
  before anyone reads it, so the token is also written to ``<data dir>/first-admin-token`` (mode 0600,
  owned by the server's user). The operator moves it to a secret manager and deletes the file.
* **Break-glass.** ``cargohold admin reset-token --data-dir DIR`` writes a new full admin credential straight
  into the database (the server may be running: SQLite's WAL lets it see the row at once). Whoever can
  read the data directory already holds everything an admin token protects, so this grants nothing new.
  Setting ``CARGOHOLD_ADMIN_TOKEN`` and restarting is the other way in.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

FIRST_ADMIN_TOKEN_FILE = "first-admin-token"  # noqa: S105 (a file name)


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` to a new file only this user can read (0600 whatever the umask); replaces an old one."""
    from cargohold.storage.private import create_private_file

    path.unlink(missing_ok=True)
    create_private_file(path)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_first_admin_token(data_dir: Path, token: str) -> Path:
    path = data_dir / FIRST_ADMIN_TOKEN_FILE
    write_private_text(path, token + "\n")
    return path


def mint_admin_token(database_url: str, *, name: str | None = None) -> tuple[str, str]:
    """A new full admin credential in the database at ``database_url``: ``(token, credential id)``.

    The schema must be current (the caller runs the migrations first, as the server would).
    """
    from cargohold.metadata.control import ControlStore, new_id
    from cargohold.metadata.db import Database
    from cargohold.server.auth.credentials import CredentialKind, new_credential
    from cargohold.server.auth.policy import credential_record

    now = datetime.now(UTC)
    database = Database(database_url)
    try:
        token, stored = new_credential(
            CredentialKind.ADMIN,
            credential_id=new_id(),
            name=name or f"break-glass admin {now:%Y-%m-%d %H:%M}Z",
            now=now,
        )
        ControlStore(database).add_credential(credential_record(stored))
    finally:
        database.dispose()
    return token, stored.id
