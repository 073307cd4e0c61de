"""A private PostgreSQL cluster for tests: ``initdb`` into a temp dir, ``postgres`` on loopback, always stopped.

The cluster is session-scoped (``initdb`` is most of its ~1.5 s start-up; the server is ready in ~0.2 s) and each
test gets its own database cloned from ``template0`` (a few tens of milliseconds), dropped afterwards. The
server never listens beyond 127.0.0.1 (plus a Unix socket inside the temp dir), is tuned for throw-away data
(``fsync``, ``synchronous_commit`` and ``full_page_writes`` off) and uses SCRAM passwords on TCP so another
user on a shared machine cannot walk into a test's database.

PostgreSQL refuses to run as root. Under root (CI) the server runs as the ``postgres`` system user (or
``nobody``) in a directory of its own under the system temp dir: pytest's own temp dirs are private to root.

The default collation is ICU ``en-US``, not byte order: a production cluster is usually created with a
language locale (``en_US.UTF-8``), under which ``ORDER BY``, ``<`` and ``>`` on text are case-insensitive at
first and order punctuation differently. Code that needs byte order (OCI tag lists, name ranges) must say so
(``COLLATE "C"``); a test cluster sorting like ``C`` would hide that.

Debian installs the server binaries in ``/usr/lib/postgresql/<major>/bin``, off ``PATH``; the newest one there
is used unless ``CARGOHOLD_POSTGRES_BIN`` names another directory or ``pg_ctl`` is on ``PATH``.

If pytest is killed outright (SIGKILL: no finalizers run) the server is orphaned like every other child
process of the suite; deleting its ``/tmp/cargohold-pg-*`` dir makes it shut down within a minute (PostgreSQL
re-checks its lock file).

Fixtures are registered through ``pytest_plugins`` in conftest.py so the session-scoped cluster really is
started once per session: ``pg_cluster`` (the cluster), ``pg_url`` (a SQLAlchemy URL of a fresh, empty
database) and ``pg_migrated_url`` (a fresh copy of a database migrated once per session).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from processes import free_port, stop_process
from tooling import tool_missing

BIN_ENV = "CARGOHOLD_POSTGRES_BIN"
SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")
DEFAULT_DRIVER = "psycopg"
"""SQLAlchemy driver in the URLs the fixtures hand out (see bench/choices/README.md for why psycopg 3)."""

SETTINGS = {
    # Loopback only, plus a socket in the cluster's own dir (never the system's /var/run/postgresql).
    "listen_addresses": "'127.0.0.1'",
    # Throw-away data: nothing needs to survive a crash of the machine, so skip every flush.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Tests run several replicas and thread pools against one cluster.
    "max_connections": "200",
    "timezone": "'UTC'",
    # Tiny test queries never profit from JIT compilation; it only adds start-up latency when it triggers.
    "jit": "off",
    "logging_collector": "off",
    "log_min_messages": "warning",
}


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def postgres_bin_dir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None when PostgreSQL is not installed."""
    candidates: list[Path] = []
    if override := os.environ.get(BIN_ENV):
        candidates.append(Path(override))
    if on_path := shutil.which("pg_ctl"):
        candidates.append(Path(on_path).resolve().parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for candidate in candidates:
        if all(os.access(candidate / tool, os.X_OK) for tool in SERVER_TOOLS):
            return candidate
    return None


def _server_account() -> pwd.struct_passwd | None:
    """The unprivileged account the server runs as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root, but neither a 'postgres' nor a 'nobody' account exists to run PostgreSQL")


@dataclass
class PostgresCluster:
    """One ``initdb``-created cluster in ``base_dir``; ``start``/``stop`` it, make and drop databases in it."""

    bin_dir: Path
    base_dir: Path
    user: str = "cargohold"
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int = 0
    icu_locale: str | None = "en-US"
    """Default collation of the cluster (ICU); None: byte order ("C"). See the module docstring."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent in ``initdb`` and ``start`` (the self-test prints them; start-up cost matters)."""
    _account: pwd.struct_passwd | None = field(default_factory=_server_account)
    _admin: Any = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir

    def _process_options(self) -> dict[str, Any]:
        """``subprocess`` options that run a server tool as the server's account, in the cluster's dir."""
        account = self._account
        return {
            "cwd": self.base_dir,
            "user": account.pw_uid if account else None,
            "group": account.pw_gid if account else None,
            "extra_groups": [] if account else None,
            "env": {**os.environ, "LC_ALL": "C", "PGTZ": "UTC"},
        }

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run one of the server tools to completion; raise with its output if it fails."""
        command = [str(self.bin_dir / tool), *args]
        options = self._process_options()
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **options)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def init(self) -> None:
        """``initdb`` with a password for TCP logins (SCRAM) and trust on the private Unix socket."""
        if self._account is not None:
            os.chown(self.base_dir, self._account.pw_uid, self._account.pw_gid)
        self.base_dir.chmod(0o700)
        password_file = self.base_dir / "password"
        password_file.write_text(self.password + "\n")
        if self._account is not None:
            os.chown(password_file, self._account.pw_uid, self._account.pw_gid)
        started = time.perf_counter()
        try:
            self._run(
                "initdb",
                "--pgdata",
                str(self.data_dir),
                "--username",
                self.user,
                "--pwfile",
                str(password_file),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                *(["--locale-provider=icu", f"--icu-locale={self.icu_locale}"] if self.icu_locale else []),
                "--no-sync",
                "--no-instructions",
            )
        finally:
            password_file.unlink()
        self.timings["initdb"] = time.perf_counter() - started
        settings = {**SETTINGS, "unix_socket_directories": f"'{self.socket_dir}'"}
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# cargohold test cluster\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def _spawn(self, tool: str, *args: str, stdout: Any) -> subprocess.Popen[bytes]:
        command = [str(self.bin_dir / tool), *args]
        return subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT, **self._process_options())

    def _ready(self) -> bool:
        """The postmaster writes ``ready`` as the 8th line of postmaster.pid once it accepts connections."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def start(self, attempts: int = 3, timeout: float = 60) -> None:
        """Start the postmaster on a free port; another process may grab the port first, so retry on a bind error.

        The postmaster runs as our child (not daemonised by ``pg_ctl start``) so that we can stop and reap it
        ourselves; a daemon would be left to PID 1, which does not reap exited children everywhere.
        """
        started = time.perf_counter()
        for attempt in range(attempts):
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.process = self._spawn("postgres", "-D", str(self.data_dir), "-c", f"port={self.port}", stdout=log)
            deadline = time.monotonic() + timeout
            while not self._ready():
                if self.process.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"PostgreSQL did not become ready in {timeout}s:\n{self.log()}")
                time.sleep(0.01)
            else:
                self.timings["start"] = time.perf_counter() - started
                return
            if attempt + 1 == attempts or "could not bind" not in self.log():
                raise RuntimeError(f"PostgreSQL exited during start-up:\n{self.log()}")
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT, as ``pg_ctl stop -m immediate``): no checkpoint, the data is thrown away."""
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None
        if self.process is not None:
            stop_process(self.process, signal.SIGQUIT, timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def admin(self) -> Any:
        """A shared autocommit connection as the cluster's superuser, over the private socket."""
        if self._admin is None:
            import psycopg

            self._admin = psycopg.connect(
                host=str(self.socket_dir), port=self.port, user=self.user, dbname="postgres", autocommit=True
            )
        return self._admin

    def execute(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement as superuser (``%s`` placeholders); its rows, if it returns any."""
        with self.admin().cursor() as cursor:
            cursor.execute(statement, params)  # type: ignore[arg-type]  # test-owned SQL, names made by us
            return cursor.fetchall() if cursor.description else []

    def create_database(self, template: str = "template0", name: str | None = None) -> str:
        """A new empty database (a copy of ``template``); returns its name."""
        name = name or f"t_{secrets.token_hex(6)}"
        # FILE_COPY (PostgreSQL 15+) copies the template's files instead of WAL-logging every block: ~30%
        # faster here for a small template, and its extra checkpoints cost nothing with fsync off.
        strategy = " STRATEGY FILE_COPY" if self.admin().info.server_version >= 150000 else ""
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}')
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name`` even if a test left connections open (a pool it never disposed)."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def url(self, database: str, driver: str = DEFAULT_DRIVER) -> str:
        """A SQLAlchemy URL for ``database`` over loopback TCP with the cluster's password."""
        return f"postgresql+{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"


@contextlib.contextmanager
def running_cluster(keep_log: Path | None = None) -> Iterator[PostgresCluster]:
    """A started cluster in a fresh temp dir, stopped and removed on every path out (the log copied first)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        tool_missing(
            "needs the PostgreSQL server (initdb, pg_ctl, postgres; Debian: apt-get install postgresql, "
            f"or set {BIN_ENV} to their directory)"
        )
    # Not pytest's tmp_path: its base dir is private to the user running pytest, and the server may be another.
    cluster = PostgresCluster(bin_dir=bin_dir, base_dir=Path(tempfile.mkdtemp(prefix="cargohold-pg-")))
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            if keep_log is not None and cluster.log_path.exists():
                shutil.copyfile(cluster.log_path, keep_log)
            shutil.rmtree(cluster.base_dir, ignore_errors=True)


@pytest.fixture(scope="session", name="pg_cluster")
def pg_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    """One private PostgreSQL cluster for the whole session (its log is kept in pytest's temp dir)."""
    with running_cluster(keep_log=tmp_path_factory.getbasetemp() / "postgres.log") as cluster:
        yield cluster


@pytest.fixture(name="pg_url")
def pg_url_fixture(pg_cluster: PostgresCluster) -> Iterator[str]:
    """A SQLAlchemy URL (psycopg 3) of a fresh, empty database, dropped after the test."""
    name = pg_cluster.create_database()
    try:
        yield pg_cluster.url(name)
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture(scope="session", name="pg_migrated_template")
def pg_migrated_template_fixture(pg_cluster: PostgresCluster) -> str:
    """A database with Cargohold's schema (``Database.migrate()``), made once per session to be copied."""
    from cargohold.metadata.db import Database

    name = pg_cluster.create_database(name=f"migrated_{secrets.token_hex(4)}")
    database = Database(pg_cluster.url(name))
    try:
        database.migrate()
    finally:
        database.dispose()  # CREATE DATABASE ... TEMPLATE refuses a template that has open connections
    return name


@pytest.fixture(name="pg_migrated_url")
def pg_migrated_url_fixture(pg_cluster: PostgresCluster, pg_migrated_template: str) -> Iterator[str]:
    """A SQLAlchemy URL of a fresh database already at the newest migration (a copy of the template)."""
    name = pg_cluster.create_database(template=pg_migrated_template)
    try:
        yield pg_cluster.url(name)
    finally:
        pg_cluster.drop_database(name)


# --- the backend switch: every test server on PostgreSQL --------------------------------------------------

DATABASE_ENV = "CARGOHOLD_TEST_DATABASE"
"""``postgresql`` runs every test server (in-process and ``cargohold serve``) on a database of the private
cluster instead of SQLite in its data dir: ``CARGOHOLD_TEST_DATABASE=postgresql pytest tests/test_protocol_*.py``.
The same test bodies then exercise PostgreSQL; nothing is duplicated."""


@dataclass
class ServerDatabases:
    """One PostgreSQL database per server data dir, made on first start (a copy of the migrated template) and
    kept for the session: a server restarted on the same data dir finds its data again, as it would in SQLite."""

    cluster: PostgresCluster
    template: str
    by_data_dir: dict[Path, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Servers on one data dir starting in threads at once (the replicas) must get one database."""

    def url_for(self, data_dir: Path) -> str:
        key = data_dir.resolve()
        with self.lock:
            if key not in self.by_data_dir:
                self.by_data_dir[key] = self.cluster.url(self.cluster.create_database(template=self.template))
            return self.by_data_dir[key]


_server_databases: ServerDatabases | None = None


def servers_on_postgresql() -> bool:
    return os.environ.get(DATABASE_ENV, "sqlite").lower() in ("postgresql", "postgres", "pg")


def server_database_url(data_dir: Path) -> str | None:
    """The database URL a test server on ``data_dir`` uses: None (SQLite in the data dir) unless switched."""
    return _server_databases.url_for(data_dir) if _server_databases is not None else None


@pytest.fixture(scope="session", autouse=True)
def server_database_backend(request: pytest.FixtureRequest) -> Iterator[None]:
    """Switches the test servers to PostgreSQL when :data:`DATABASE_ENV` says so (see there)."""
    global _server_databases
    if not servers_on_postgresql():
        yield
        return
    cluster = request.getfixturevalue("pg_cluster")
    _server_databases = ServerDatabases(cluster, request.getfixturevalue("pg_migrated_template"))
    try:
        yield
    finally:
        _server_databases = None
