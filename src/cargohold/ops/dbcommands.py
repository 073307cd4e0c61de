"""``cargohold db check`` and ``cargohold db upgrade``: the schema migrations a server applies at start-up,
run on their own (before a rolling upgrade, or to see what an upgrade will do)."""

from __future__ import annotations

from cargohold.metadata.db import Database, script_heads
from cargohold.metadata.schema_version import SchemaStatus, SchemaTooNew, schema_status


def check(database_url: str) -> SchemaStatus:
    database = Database(database_url)
    try:
        return schema_status(database.write_engine, script_heads() or set())
    finally:
        database.dispose()


def describe(status: SchemaStatus, database_url: str) -> str:
    """One sentence for ``db check``."""
    heads = ", ".join(sorted(status.heads))
    if status.unknown:
        return status.too_new_message(database_url)
    if status.up_to_date:
        return f"the database is up to date (schema revision {heads})"
    if not status.current:
        return f"the database is empty; cargohold db upgrade (or starting the server) creates schema revision {heads}"
    return (
        f"the database is at schema revision {', '.join(sorted(status.current))} and needs the migrations up to "
        f"{heads}: run cargohold db upgrade (back it up first: cargohold backup DIR)"
    )


def upgrade(database_url: str) -> tuple[SchemaStatus, SchemaStatus]:
    """Apply the migrations; the status before and after. :class:`SchemaTooNew` for a newer database."""
    before = check(database_url)
    if before.unknown:
        raise SchemaTooNew(before.too_new_message(database_url))
    database = Database(database_url)
    try:
        database.migrate()
    finally:
        database.dispose()
    return before, check(database_url)
