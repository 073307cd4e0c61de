"""``cargohold backup DIR`` and ``cargohold restore DIR``: a consistent copy of a running server's data.

Copying the data directory with ``cp`` while the server runs is unsafe: the SQLite database lives in three
files (``metadata.db``, its WAL and shared memory) that change under the copy, and blobs come and go. The
backup is taken in an order that makes it consistent whatever the server does meanwhile:

1. **The database first**, with SQLite's online backup API: a snapshot of the last committed state, read in
   one read transaction (in WAL mode that blocks no writer).
2. **Then exactly the blobs that snapshot knows** (its ``blobs`` table), each copied while hashing and
   checked against its digest and size, so the copy is never a torn or corrupt file under a good name.
   Uploads that commit after the snapshot are not in it and their blobs are not copied: the backup is the
   registry as it was at the snapshot, complete.
3. **A blob garbage collection deleted after the snapshot** (its file is gone, the snapshot still lists it)
   was, by the collector's rules, referenced by no manifest; it is dropped from the snapshot too, which is
   what the collection was doing. A blob a manifest of the snapshot references must exist: if it does not,
   the data directory is damaged and the backup fails naming it.
4. Upload sessions in progress are not part of a backup (their staged bytes are not copied); the snapshot
   forgets them and clients start those uploads again.
5. The signing keys (``keys/``) go along, so registry tokens and the OIDC setup survive a restore, and a
   ``cargohold-backup.json`` written last marks the backup complete.

``restore`` copies a backup into an empty data directory (checking every blob's digest again), after which
``cargohold serve --data-dir`` serves every image the snapshot had. A database newer than the restoring
Cargohold is refused by the server's start-up check; an older one is migrated as on any start.

PostgreSQL metadata is backed up with ``pg_dump`` (docs/operations.md); these commands handle SQLite.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cargohold import __version__
from cargohold.isotime import format_iso
from cargohold.oci.digest import Digest, DigestError
from cargohold.storage.private import make_private_dir

MARKER = "cargohold-backup.json"
DATABASE = "metadata.db"
CHUNK = 1024 * 1024


class BackupError(Exception):
    """The backup or restore cannot be done; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class BackupSummary:
    directory: Path
    blobs: int
    blob_bytes: int
    dropped_blobs: int
    """Blobs garbage collection deleted between the snapshot and the copy (dropped from the snapshot)."""
    revisions: tuple[str, ...]


def _blob_relpath(digest: Digest) -> Path:
    return Path("blobs") / digest.algorithm / digest.hex[:2] / digest.hex


def copy_verified(source: Path, target: Path, digest: Digest, size: int | None) -> int:
    """Copy ``source`` to ``target`` while hashing; the target exists only if the bytes match ``digest``."""
    hasher = digest.hasher()
    make_private_dir(target.parent)
    partial = target.with_name(target.name + ".partial")
    written = 0
    try:
        with open(source, "rb") as reader, open(partial, "wb") as writer:
            os.fchmod(writer.fileno(), 0o600)
            while chunk := reader.read(CHUNK):
                hasher.update(chunk)
                writer.write(chunk)
                written += len(chunk)
            writer.flush()
            os.fsync(writer.fileno())
        if hasher.hexdigest() != digest.hex or (size is not None and written != size):
            raise BackupError(
                f"blob {digest} in {source} does not match its digest or size (read {written} bytes): the blob "
                "store is damaged there; restore that blob from an older backup or delete the image using it"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return written


def sqlite_path(database_url: str) -> Path:
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        raise BackupError(
            f"the metadata database is {url.get_backend_name()}, not SQLite: back it up with its own tools "
            "(PostgreSQL: pg_dump, see docs/operations.md) and copy the blob store next to it"
        )
    if not url.database or url.database == ":memory:":
        raise BackupError("an in-memory database cannot be backed up")
    return Path(url.database)


def _snapshot(live: Path, target: Path) -> None:
    if not live.is_file():
        raise BackupError(f"there is no database at {live}; check --data-dir (or --database-url)")
    source = sqlite3.connect(f"file:{live}?mode=ro", uri=True, timeout=30)
    try:
        destination = sqlite3.connect(target)
        try:
            source.backup(destination)  # all pages in one step: one read transaction, one consistent state
        finally:
            destination.close()
    finally:
        source.close()
    os.chmod(target, 0o600)


def _referenced(snapshot: sqlite3.Connection, digest: str) -> bool:
    row = snapshot.execute("SELECT 1 FROM manifest_references WHERE digest = ? LIMIT 1", (digest,)).fetchone()
    return row is not None


def _revisions(snapshot: sqlite3.Connection) -> tuple[str, ...]:
    try:
        return tuple(sorted(row[0] for row in snapshot.execute("SELECT version_num FROM alembic_version")))
    except sqlite3.Error:
        return ()


def take_backup(
    data_dir: Path, database_url: str, target: Path, *, progress: Callable[[str], None] = lambda _line: None
) -> BackupSummary:
    """Back up the server whose data is in ``data_dir`` (and whose database is ``database_url``) to ``target``,
    which must not exist or be empty."""
    live_db = sqlite_path(database_url)
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"{target} is not empty; back up into a new directory")
    make_private_dir(target)
    snapshot_path = target / DATABASE
    _snapshot(live_db, snapshot_path)
    progress(f"database snapshot written to {snapshot_path}")
    snapshot = sqlite3.connect(snapshot_path)
    copied = dropped = total = 0
    try:
        blobs = snapshot.execute("SELECT digest, size FROM blobs ORDER BY digest").fetchall()
        for text, size in blobs:
            try:
                digest = Digest.parse(text)
            except DigestError:
                raise BackupError(f"the database lists a malformed blob digest {text!r}") from None
            source = data_dir / _blob_relpath(digest)
            try:
                total += copy_verified(source, target / _blob_relpath(digest), digest, size)
            except FileNotFoundError:
                if _referenced(snapshot, text):
                    raise BackupError(
                        f"blob {text}, which a manifest references, is missing from {data_dir / 'blobs'}: the blob "
                        "store is damaged (restore it from an older backup)"
                    ) from None
                # Garbage collection deleted it after the snapshot: drop it as the collection did.
                snapshot.execute("DELETE FROM repository_blobs WHERE digest = ?", (text,))
                snapshot.execute("DELETE FROM blobs WHERE digest = ?", (text,))
                dropped += 1
                continue
            copied += 1
        snapshot.execute("DELETE FROM upload_sessions")
        snapshot.commit()
        revisions = _revisions(snapshot)
    finally:
        snapshot.close()
    progress(f"{copied} blob(s) copied and verified ({total} bytes)")
    keys = data_dir / "keys"
    if keys.is_dir():
        shutil.copytree(keys, target / "keys")
    marker = {
        "format": 1,
        "cargohold_version": __version__,
        "created_at": format_iso(datetime.now(UTC)),
        "schema_revisions": list(revisions),
        "blobs": copied,
        "blob_bytes": total,
        "source": str(data_dir),
    }
    (target / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    os.chmod(target / MARKER, 0o600)
    return BackupSummary(target, copied, total, dropped, revisions)


def restore_backup(
    source: Path, data_dir: Path, *, progress: Callable[[str], None] = lambda _line: None
) -> BackupSummary:
    """Copy the backup in ``source`` into the empty (or new) data directory ``data_dir``."""
    marker_path = source / MARKER
    try:
        marker = json.loads(marker_path.read_text())
    except FileNotFoundError:
        raise BackupError(
            f"{source} is not a complete Cargohold backup (no {MARKER}); the backup may have been interrupted"
        ) from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"cannot read {marker_path}: {exc}") from None
    if not isinstance(marker, dict) or marker.get("format") != 1:
        raise BackupError(f"{marker_path} is of a backup format this Cargohold ({__version__}) does not know")
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BackupError(
            f"{data_dir} is not empty; restore into a new data directory (and point --data-dir at it), so "
            "nothing of the current data is overwritten"
        )
    make_private_dir(data_dir)
    shutil.copyfile(source / DATABASE, data_dir / DATABASE)
    os.chmod(data_dir / DATABASE, 0o600)
    snapshot = sqlite3.connect(data_dir / DATABASE)
    try:
        blobs = snapshot.execute("SELECT digest, size FROM blobs").fetchall()
        revisions = _revisions(snapshot)
    finally:
        snapshot.close()
    total = 0
    for text, size in blobs:
        digest = Digest.parse(text)
        try:
            total += copy_verified(source / _blob_relpath(digest), data_dir / _blob_relpath(digest), digest, size)
        except FileNotFoundError:
            raise BackupError(f"the backup {source} lacks blob {text}; it is incomplete") from None
    if (source / "keys").is_dir():
        shutil.copytree(source / "keys", data_dir / "keys")
        os.chmod(data_dir / "keys", 0o700)
    progress(f"restored {len(blobs)} blob(s) ({total} bytes) and the database into {data_dir}")
    return BackupSummary(data_dir, len(blobs), total, 0, revisions)
