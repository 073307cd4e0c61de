"""``cargohold db migrate-to``: move an install's metadata to another database, and its blobs to another store.

The way from the embedded default (SQLite + the filesystem) to a scale-out set-up (PostgreSQL, and an object
store once one exists): every row of every table is copied from the current database into an empty target
database migrated to the same schema, and every blob the metadata knows is copied through the
:class:`~cargohold.storage.base.BlobStore` interface, so any store that implements it can be a target.

Order and safety:

1. The target database is migrated to the newest schema and must hold no data (a re-run after a completed
   migration is refused, naming the target; nothing is ever overwritten).
2. The source is read in one read transaction: a consistent snapshot even if a server is still running (stop
   it anyway: what it writes after the snapshot is not copied).
3. Blobs first, when a target store is given: each is streamed, hashed while copied and checked against its
   digest before it is committed under that digest; a blob the target already holds with the right size is
   skipped, so a run interrupted during the blob copy simply continues where it stopped when run again.
4. Then all rows in **one** target transaction: either the whole metadata arrives or none does (a failed run
   leaves the target empty, ready for the next attempt). PostgreSQL's id sequences are moved past the copied ids.
5. Verification: the row count of every table, and the set of blob digests and sizes, on both sides; and each
   blob's presence and size in the target store.

Not copied: upload sessions in progress (their staged bytes stay behind; clients restart those uploads) and
leases (they belong to running processes). The signing keys in ``<data dir>/keys`` are files, not metadata:
keep serving from the same data directory or copy that directory along.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import Connection, Table, func, insert, select

from cargohold.metadata.db import Database, continue_ids_after_copy
from cargohold.metadata.models import Base, Blob
from cargohold.oci.digest import Digest, new_hasher
from cargohold.storage.base import BlobStore

NOT_COPIED = frozenset({"upload_sessions", "leases", "schema_info"})
"""Tables whose rows belong to the source's running processes or to the target's own migration."""
ROW_BATCH = 1000


class MigrationError(Exception):
    """The migration cannot be done or did not verify; the message says why and what to do."""


@dataclass
class MigrationSummary:
    rows: dict[str, int] = field(default_factory=dict)
    blobs_copied: int = 0
    blobs_present: int = 0
    blob_bytes: int = 0


def _tables() -> list[Table]:
    """Every table to copy, parents before children (foreign keys)."""
    return [table for table in Base.metadata.sorted_tables if table.name not in NOT_COPIED]


def _count(connection: Connection, table: Table) -> int:
    return int(connection.scalar(select(func.count()).select_from(table)) or 0)


def _rows(connection: Connection, table: Table) -> Iterator[list[dict[str, object]]]:
    """The table's rows in batches, in primary-key order, without holding the whole table in memory."""
    result = connection.execution_options(yield_per=ROW_BATCH).execute(
        select(table).order_by(*table.primary_key.columns)
    )
    for partition in result.mappings().partitions(ROW_BATCH):
        yield [dict(row) for row in partition]


def copy_blob(source: BlobStore, target: BlobStore, digest: Digest, size: int) -> bool:
    """Copy one blob through the ``BlobStore`` interface, verified; False if the target already had it."""
    if target.size(digest) == size:
        return False
    upload_id = secrets.token_hex(16)  # the form of the server's own upload ids, which every store accepts
    target.create_upload(upload_id)
    try:
        hasher = new_hasher(digest.algorithm)
        copied = 0
        writer = target.open_upload(upload_id)
        try:
            for chunk in source.open_blob(digest):
                hasher.update(chunk)
                writer.write(chunk)
                copied += len(chunk)
        finally:
            writer.close()
        if copied != size or hasher.hexdigest() != digest.hex:
            raise MigrationError(
                f"blob {digest} in the source store is damaged ({copied} bytes, expected {size}, or another "
                "digest); run the migration from a healthy data directory or restore it from a backup first"
            )
        target.persist_upload(upload_id)
        target.commit_upload(upload_id, digest)
    except BaseException:
        target.remove_upload(upload_id)
        raise
    return True


def migrate_to(
    source_db: Database,
    target_db: Database,
    *,
    source_blobs: BlobStore | None = None,
    target_blobs: BlobStore | None = None,
    progress: Callable[[str], None] = lambda _line: None,
) -> MigrationSummary:
    """Copy all metadata from ``source_db`` into the empty ``target_db`` (and blobs into ``target_blobs``)."""
    if not source_db.at_head():
        raise MigrationError(
            "the source database is not at this Cargohold's schema revision; run `cargohold db upgrade` "
            "(or start the server once) before migrating"
        )
    target_db.migrate()
    tables = _tables()
    with target_db.write_engine.connect() as target:
        occupied = [table.name for table in tables if _count(target, table)]
    if occupied:
        raise MigrationError(
            f"the target database already holds data (tables {', '.join(occupied)}); migrate into an empty "
            "database (a completed migration is not repeated)"
        )
    summary = MigrationSummary()
    with source_db.read_engine.connect() as source, source.begin():
        if target_blobs is not None:
            assert source_blobs is not None, "a target store needs the source store"
            for digest_text, size in source.execute(select(Blob.digest, Blob.size).order_by(Blob.digest)):
                digest = Digest.parse(digest_text)
                if source_blobs.size(digest) is None:
                    raise MigrationError(
                        f"blob {digest} is in the database but missing from the source store; run "
                        "`cargohold serve` with --gc-interval once (garbage collection drops such rows) or "
                        "restore the data directory from a backup, then migrate"
                    )
                if copy_blob(source_blobs, target_blobs, digest, size):
                    summary.blobs_copied += 1
                else:
                    summary.blobs_present += 1
                summary.blob_bytes += size
            progress(f"blobs: {summary.blobs_copied} copied, {summary.blobs_present} already in the target store")
        with target_db.write_engine.connect() as target, target.begin():
            for table in tables:
                copied = 0
                for batch in _rows(source, table):
                    target.execute(insert(table), batch)
                    copied += len(batch)
                continue_ids_after_copy(target, table)
                summary.rows[table.name] = copied
                if copied:
                    progress(f"{table.name}: {copied} rows")
        _verify(source, target_db, tables, summary, target_blobs)
    return summary


def _verify(
    source: Connection,
    target_db: Database,
    tables: list[Table],
    summary: MigrationSummary,
    target_blobs: BlobStore | None,
) -> None:
    with target_db.read_engine.connect() as target:
        for table in tables:
            expected, found = _count(source, table), _count(target, table)
            if expected != found:
                raise MigrationError(f"table {table.name}: {expected} rows in the source, {found} in the target")
        blobs = select(Blob.digest, Blob.size).order_by(Blob.digest)
        source_blobs = source.execute(blobs).all()
        if source_blobs != target.execute(blobs).all():
            raise MigrationError("the blobs table differs between the source and the target database")
    if target_blobs is not None:
        for digest_text, size in source_blobs:
            stored = target_blobs.size(Digest.parse(digest_text))
            if stored != size:
                raise MigrationError(f"blob {digest_text} has {stored} bytes in the target store, expected {size}")


__all__ = ["MigrationError", "MigrationSummary", "copy_blob", "migrate_to"]
