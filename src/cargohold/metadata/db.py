"""Database engines and sessions, and applying Alembic migrations at start-up.

SQLite is the embedded default. It runs in WAL mode so readers never block the writer, and every write
transaction starts with ``BEGIN IMMEDIATE``: taking the write lock up front means two writers queue on the
busy timeout instead of one failing with "database is locked" when it upgrades a read lock. Reads use a
separate engine with plain deferred transactions.

The hottest reads (a manifest's digest by tag, a blob link) are one ``SELECT`` each and need no transaction
around them: a single statement already reads one consistent snapshot. :meth:`Database.read_one` runs them on
a third engine that never opens one (no ``BEGIN``/``ROLLBACK`` round, no ORM session), which is a third of
the cost of a small request (bench/throughput.py). Anything that reads twice and needs both answers to agree
still uses :meth:`Database.read`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVarTuple, cast

from sqlalchemy import Connection, CursorResult, Engine, Row, Select, Table, create_engine, event, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

Columns = TypeVarTuple("Columns")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def script_heads(directory: Path = MIGRATIONS_DIR / "versions") -> set[str] | None:
    """The head revisions of the migration scripts, read from their ``revision``/``down_revision`` lines
    with :mod:`ast` (no Alembic import); ``None`` when a script does not spell them as plain constants, so
    that Alembic decides."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted(directory.glob("*.py")):
        values: dict[str, object] = {}
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            return None
        for node in tree.body:
            target: ast.expr
            if isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                try:
                    values[target.id] = ast.literal_eval(value)
                except ValueError:
                    return None
        revision, down = values.get("revision"), values.get("down_revision")
        if not isinstance(revision, str) or "down_revision" not in values:
            return None
        revisions.add(revision)
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, tuple | list) and all(isinstance(item, str) for item in down):
            parents.update(down)
        elif down is not None:
            return None
    heads = revisions - parents
    return heads or None


def url_is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def with_driver(url: str) -> str:
    """``postgresql://`` (and Heroku-style ``postgres://``) URLs name psycopg 3, the driver Cargohold installs
    (``cargohold[postgres]``); SQLAlchemy would otherwise look for psycopg2. URLs naming a driver are kept."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _make_engine(url: str, *, immediate: bool | None, pool_size: int | None = None) -> Engine:
    """An engine whose transactions begin with ``BEGIN IMMEDIATE`` (writes), ``BEGIN`` (reads), or, with
    ``immediate=None``, not at all: every statement is its own transaction (:meth:`Database.read_one`)."""
    if not url.startswith("sqlite"):
        # One connection per thread that may use the database at once (the server's I/O pool, GC's reader
        # and writer); beyond that, requests wait for a connection instead of opening more.
        sizing: dict[str, Any] = {"pool_size": pool_size, "max_overflow": 4} if pool_size else {}
        if url.startswith(("postgresql", "postgres:")):
            # An unreachable server fails a request (and /healthz) in seconds instead of the TCP timeout.
            sizing["connect_args"] = {"connect_timeout": 10}
        return create_engine(with_driver(url), pool_pre_ping=True, **sizing)
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    if immediate is None:
        # Hot reads may run on the event loop (Database.reads_inline), which must never wait for a pooled
        # connection: keep 20 open, and open more rather than queue when the thread pool holds them all.
        engine = create_engine(url, connect_args=connect_args, pool_size=20, max_overflow=-1)
    else:
        engine = create_engine(url, connect_args=connect_args)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: object) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    if immediate is not None:

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def upsert(session: Session, table: Any) -> Any:
    """An ``INSERT`` supporting ``on_conflict_do_nothing/do_update`` for the session's database dialect.

    SQLite and PostgreSQL spell upserts the same way in SQLAlchemy, but through dialect-specific ``insert``
    constructs; choosing here keeps the stores free of dialect imports.
    """
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


CONTENT_LOCK = "cargohold:content"
"""Held shared by every transaction that makes content reachable (a link, a mount, a manifest's reference
check) and exclusively by every transaction that removes it (garbage collection's batches, a blob's unlink)."""
LINEAGE_LOCK = "cargohold:lineage"
"""Held shared by a child credential's mint and exclusively by a revocation's walk of the lineage tree."""
SIGNING_KEYS_LOCK = "cargohold:signing-keys"
"""Held by a first start's check-then-insert of the first signing key, so replicas agree on one key."""


def hold_lock(executor: Session | Connection, name: str, *, shared: bool = False) -> None:
    """Hold the lock ``name`` until the current write transaction ends, across every process on the database.

    SQLite needs nothing: each write transaction already holds the database's single write lock from its first
    statement (``BEGIN IMMEDIATE``), which is stronger. PostgreSQL (READ COMMITTED) locks only rows written, so
    a read-then-write that another process must not interleave with takes a transaction-scoped advisory lock
    keyed by the name's 64-bit hash: exclusive, or shared (many shared holders at once, never with an exclusive
    one). Take it as the transaction's first statement, so that everything it reads is read under the lock.
    """
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    if bind.dialect.name != "postgresql":
        return
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    executor.execute(text(f"SELECT {function}(hashtextextended(:name, 0))"), {"name": name})


def continue_ids_after_copy(connection: Connection, table: Table) -> None:
    """After rows were inserted with their ids given (a migration between databases), make the database's own
    id generator continue after the largest one. SQLite's ``INTEGER PRIMARY KEY`` does that by itself;
    PostgreSQL's sequences (``SERIAL``/identity) would hand out 1 again."""
    if connection.dialect.name != "postgresql":
        return
    for column in table.primary_key.columns:
        sequence = connection.scalar(
            text("SELECT pg_get_serial_sequence(:table, :column)"), {"table": table.name, "column": column.name}
        )
        if sequence is None:
            continue
        largest = connection.scalar(select(func.max(column)))
        if largest is not None:
            connection.execute(
                text("SELECT setval(CAST(:sequence AS regclass), :value)"), {"sequence": sequence, "value": largest}
            )


def rowcount(result: object) -> int:
    """Rows an ``UPDATE`` or ``DELETE`` matched. ``Session.execute`` returns a ``CursorResult`` for those, which
    has ``rowcount``, but is annotated as the general ``Result``, which has not."""
    return int(cast("CursorResult[Any]", result).rowcount or 0)


class Database:
    """One database: a write engine, a read engine, and session factories for each."""

    def __init__(self, url: str, *, pool_size: int | None = None) -> None:
        """``pool_size``: connections a client-server database's pool keeps (the server passes its thread
        pool's size); None keeps SQLAlchemy's default (5, plus 10 on demand). SQLite ignores it."""
        self.url = url
        self.write_engine = _make_engine(url, immediate=True, pool_size=pool_size)
        self.read_engine = _make_engine(url, immediate=False) if url.startswith("sqlite") else self.write_engine
        self.statement_engine = (
            _make_engine(url, immediate=None)
            if url.startswith("sqlite")
            else self.write_engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._write_sessions = sessionmaker(self.write_engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction, committed on success and rolled back on any exception."""
        with self._write_sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read_sessions() as session, session.begin():
            yield session

    @property
    def reads_inline(self) -> bool:
        """Whether a :meth:`read_one` is cheaper run where it is needed than handed to a thread: an embedded
        SQLite read in WAL mode takes tens of microseconds and never waits for a writer, less than the hop to a
        thread pool and back; a read over a network connection to a database server is not."""
        return url_is_sqlite(self.url)

    def read_one(
        self, statement: Select[*Columns], parameters: Mapping[str, Any] | None = None
    ) -> Row[*Columns] | None:
        """The first row of one ``SELECT``, outside any transaction: for single-statement hot reads only.

        Hot statements are built once with ``bindparam`` placeholders and given their ``parameters`` here:
        building a statement costs about as much as running it.
        """
        with self.statement_engine.connect() as connection:
            return connection.execute(statement, parameters).first()

    def read_rows(
        self, statement: Select[*Columns], parameters: Mapping[str, Any] | None = None
    ) -> Sequence[Row[*Columns]]:
        """Every row of one ``SELECT``, outside any transaction (see :meth:`read_one`)."""
        with self.statement_engine.connect() as connection:
            return connection.execute(statement, parameters).all()

    def migrate(self) -> None:
        """Bring the schema up to the newest Alembic revision (idempotent).

        A database already at the newest revision (every restart of a server) is recognised without
        importing Alembic, a tenth of a second of start-up; anything else goes through Alembic.
        """
        if self.at_head():
            return
        from alembic import command  # imported here: alembic is only needed at start-up
        from alembic.config import Config

        from cargohold.metadata.schema_version import SchemaTooNew, record_version, schema_status

        heads = script_heads() or set()
        status = schema_status(self.write_engine, heads)
        if status.unknown:  # Alembic would fail with a traceback about a revision it cannot locate
            raise SchemaTooNew(status.too_new_message(self.url))
        with self.write_engine.connect() as connection:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            record_version(connection, heads)
            connection.commit()

    def at_head(self) -> bool:
        """Whether the database's Alembic revisions are exactly the migration scripts' heads."""
        heads = script_heads()
        if heads is None:
            return False
        try:
            with self.write_engine.connect() as connection:
                current = set(connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())
        except DBAPIError:  # no alembic_version table yet: a new database
            return False
        return current == heads

    def dispose(self) -> None:
        self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            self.read_engine.dispose()
        if url_is_sqlite(self.url):
            self.statement_engine.dispose()
