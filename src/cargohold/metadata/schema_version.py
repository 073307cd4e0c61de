"""Where a database's schema stands against this Cargohold's migrations, said in one sentence.

Three answers: current, behind (``cargohold db upgrade`` or a server start applies the migrations), or
*ahead*: written by a newer Cargohold. Alembic would fail on the last with a traceback about a revision it
cannot locate; instead the server refuses to start and names the version the database needs, which the
newer Cargohold recorded when it migrated (table ``schema_info``, key ``revision:<id>``). Downgrading a
database is not supported: restore the backup taken before the upgrade (docs/operations.md).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, bindparam, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from cargohold import __version__

VERSIONS_DIR = Path(__file__).parent / "migrations" / "versions"


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer Cargohold; the message says which version it needs."""


def script_revisions(directory: Path = VERSIONS_DIR) -> set[str]:
    """Every revision id the migration scripts define (read with :mod:`ast`, no Alembic import)."""
    revisions: set[str] = set()
    for path in directory.glob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            target: ast.expr | None = node.target if isinstance(node, ast.AnnAssign) else None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
            value = getattr(node, "value", None)
            if isinstance(target, ast.Name) and target.id == "revision" and isinstance(value, ast.Constant):
                revisions.add(str(value.value))
    return revisions


def database_revisions(connection: Connection) -> set[str] | None:
    """The revisions recorded in ``alembic_version``; None for a database that has none yet (new)."""
    try:
        return set(connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())
    except DBAPIError:
        connection.rollback()
        return None


def _needed_version(connection: Connection, revisions: set[str]) -> str | None:
    try:
        rows = connection.execute(
            text("SELECT value FROM schema_info WHERE key IN :keys").bindparams(bindparam("keys", expanding=True)),
            {"keys": [f"revision:{revision}" for revision in revisions]},
        )
    except DBAPIError:
        connection.rollback()
        return None
    versions = sorted({row[0] for row in rows}, key=_version_key)
    return versions[-1] if versions else None


def _version_key(version: str) -> tuple[int | str, ...]:
    return tuple(int(part) if part.isdigit() else part for part in version.replace("-", ".").split("."))


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    current: frozenset[str]
    """Revisions the database is at (empty: a new database)."""
    heads: frozenset[str]
    """What this Cargohold's migrations lead to."""
    unknown: frozenset[str]
    """Revisions of the database this Cargohold does not know: it was migrated by a newer one."""
    needed_version: str | None = None

    @property
    def up_to_date(self) -> bool:
        return self.current == self.heads

    def too_new_message(self, url: str) -> str:
        url = make_url(url).render_as_string(hide_password=True)
        needs = f"Cargohold {self.needed_version} or newer" if self.needed_version else "a newer Cargohold"
        return (
            f"the database {url} was upgraded by a newer Cargohold (schema revision {', '.join(sorted(self.unknown))}"
            f"); this is Cargohold {__version__}, which knows revisions up to {', '.join(sorted(self.heads))}: run "
            f"{needs}, or restore the backup taken before that upgrade"
        )


def schema_status(engine: Engine, heads: set[str]) -> SchemaStatus:
    with engine.connect() as connection:
        current = database_revisions(connection) or set()
        unknown = current - script_revisions()
        needed = _needed_version(connection, unknown) if unknown else None
    return SchemaStatus(frozenset(current), frozenset(heads), frozenset(unknown), needed)


def record_version(connection: Connection, heads: set[str]) -> None:
    """Remember that this version brought the database to ``heads`` (kept when already recorded)."""
    for revision in heads:
        connection.execute(
            text("INSERT INTO schema_info (key, value) VALUES (:key, :value) ON CONFLICT (key) DO NOTHING"),
            {"key": f"revision:{revision}", "value": __version__},
        )
