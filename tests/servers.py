"""Every Cargohold server a test talks to, and the one place that says how it runs.

Two kinds, chosen per test by fixture name:

* ``server`` — :class:`InProcessServer`: the real application (``create_app``) served by aiohttp's
  ``AppRunner`` on 127.0.0.1 from an event loop in a background thread of the test process. Same routes,
  middlewares, settings, housekeeping and log lines as ``cargohold serve``, without the two seconds a child
  process spends starting (most of it importing the app). Synchronous tests (httpx, CLI subprocesses,
  skopeo) use it unchanged: it listens on a real port.
* ``server_process`` — :class:`ServerProcess`: a real ``cargohold serve`` child process. For what only a
  process has: being killed (``kill -9``), signals and the drain, the process umask, start-up time, and the
  command line itself (flags, environment variables).

Both expose ``url``, ``host``, ``port``, ``admin_token``, ``data_dir``, ``client()``, ``anonymous()``,
``log()``, ``start()`` and ``stop()``; ``start()`` after ``stop()`` restarts on the same data dir and port.
``log()`` is the server's log as ``cargohold serve`` writes it (``<time> <LEVEL> <logger>: <message>``, the
access log included), so tests grep it the same way whichever kind they use.

Sharing: :func:`shared_server` is one in-process server for the whole session, for read-mostly tests that
create their own projects or repositories; :func:`module_server` makes a module-scoped ``server`` fixture
(optionally with settings). Nothing that mutates global state (GC, retention sweeps, settings) may share.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from cargohold.clock import utc_now

# The server's own modules, imported here and nowhere else in the tests' fixtures: when the server package
# moves, this block is the one to change.
from cargohold.config import ServerSettings
from cargohold.logformat import EscapingFormatter
from cargohold.server.app import create_app
from cargohold.server.control.blob_copies import PUSH_KEY
from cargohold.server.control.lifecycle import LIFECYCLE_KEY, Lifecycle
from cargohold.server.drain import DRAIN_KEY
from cargohold.server.http.accesslog import install_log_filters
from cargohold.server.process import make_runner
from cargohold.server.state import STATE_KEY, RegistryState
from pgcluster import server_database_url
from processes import ManagedProcess, free_port
from s3server import S3_MODE, TEST_BLOB_STORE, registry_storage

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The format of ``cargohold serve``'s log lines (cargohold.cli.main._configure_logging)."""

QUIET_LOGGERS = ("alembic", "httpx", "httpcore")
"""Loggers ``cargohold serve`` raises to WARNING; so does the test process once an in-process server runs."""

SERVER_THREAD_PREFIX = "cargohold-test-server"
STRAY_THREAD_PREFIXES = (SERVER_THREAD_PREFIX, "cargohold-io", "cargohold-push", "gc-")
"""Thread names a stopped in-process server must not leave behind (see :func:`leaked_threads`)."""


def new_admin_token() -> str:
    return secrets.token_urlsafe(24)


class _HttpClients:
    """``client()`` and ``anonymous()`` for anything with a ``url`` and an ``admin_token``."""

    url: str
    admin_token: str | None

    def verify(self) -> bool | ssl.SSLContext:
        """What httpx should verify this server's certificate with (plain HTTP: the default)."""
        return True

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        """An httpx client with the registry's base URL, authenticated as admin unless ``token`` is given."""
        secret = token or self.admin_token
        auth = httpx.BasicAuth("x-token", secret) if secret else None
        kwargs.setdefault("verify", self.verify())
        kwargs.setdefault("follow_redirects", S3_MODE)  # blob GETs redirect to the bucket, as registry clients follow
        return httpx.Client(base_url=self.url, timeout=30, auth=auth, **kwargs)

    def anonymous(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("verify", self.verify())
        kwargs.setdefault("follow_redirects", S3_MODE)
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


# --- a real `cargohold serve` process ------------------------------------------------------------------


@dataclass
class ServerProcess(_HttpClients, ManagedProcess):
    """A `cargohold serve` child process bound to 127.0.0.1."""

    name = "cargohold serve"

    data_dir: Path
    port: int = field(default_factory=free_port)
    admin_token: str = field(default_factory=new_admin_token)
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    database_url: str | None = None
    """``--database-url`` (None: SQLite in the data dir). Replicas share one, with one data dir or blob store."""
    storage_url: str | None = None
    """``--storage-url`` (None: the filesystem under the data dir); passed only when set."""
    umask: int = -1
    """The child's umask (-1: inherit this process's)."""
    ca_cert: Path | None = None
    """Set for a server started with ``--tls-cert``: the CA to verify it with (its URLs are then https)."""
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_cert else 'http'}://127.0.0.1:{self.port}"

    def verify(self) -> bool | ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_cert)) if self.ca_cert else True

    @property
    def host(self) -> str:
        """``host:port`` as image references and skopeo want it."""
        return f"127.0.0.1:{self.port}"

    def _database_env(self) -> dict[str, str]:
        """``CARGOHOLD_DATABASE_URL`` when the tests run the servers on PostgreSQL (tests/pgcluster.py)."""
        url = server_database_url(self.data_dir)
        return {"CARGOHOLD_DATABASE_URL": url} if url else {}

    def start(self, timeout: float = 60.0) -> ServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "cargohold",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *(["--database-url", self.database_url] if self.database_url is not None else []),
            *(["--storage-url", self.storage_url] if self.storage_url is not None else []),
            *self.extra_args,
        ]
        storage_url, storage_env = registry_storage(self.data_dir)
        if storage_url is not None and self.storage_url is None and "--storage-url" not in self.extra_args:
            cmd += ["--storage-url", storage_url, "--blob-redirect", "off" if TEST_BLOB_STORE == "s3-stream" else "on"]
        self.launch(
            cmd,
            log_path=self.data_dir.parent / f"server-{self.port}.log",
            health_url=f"{self.url}/healthz",
            # One process unless a test asks for workers (--workers N): the default is one per CPU.
            env={
                "CARGOHOLD_ADMIN_TOKEN": self.admin_token,
                "CARGOHOLD_WORKERS": "1",
                **self._database_env(),
                **storage_env,
                **self.env,
            },
            timeout=timeout,
            umask=self.umask,
            verify=self.verify(),
        )
        return self


# --- the application in this process --------------------------------------------------------------


class _LogRouter(logging.Handler):
    """One root handler for every in-process server: a record goes to the server whose thread logged it.

    A server's threads are its event loop's and its thread pools' (requests, server-side pushes). The
    garbage collector's short-lived helper threads (``gc-*``) belong to no pool a server exposes; their
    records go to every running server.
    """

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(EscapingFormatter(LOG_FORMAT))
        self.servers: list[InProcessServer] = []

    def emit(self, record: logging.LogRecord) -> None:
        owners = [server for server in list(self.servers) if server.owns_thread(record.thread)]
        if not owners and (record.threadName or "").startswith("gc-"):
            owners = list(self.servers)
        if not owners:
            return
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        for server in owners:
            server.append_log(line)


_ROUTER = _LogRouter()
_RUNNING: set[InProcessServer] = set()
_RUNNING_LOCK = threading.Lock()


def _install_log_router() -> None:
    """Log like ``cargohold serve`` does (INFO, the same quiet loggers, aiohttp's filters), once."""
    root = logging.getLogger()
    if _ROUTER not in root.handlers:
        root.addHandler(_ROUTER)
        root.setLevel(logging.INFO)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        install_log_filters()


@dataclass(eq=False)
class InProcessServer(_HttpClients):
    """The registry application served from a background event loop in this process (see the module doc).

    ``settings`` are :class:`ServerSettings` fields (``gc_interval=timedelta(0)``, ``oidc_issuers=(...)``);
    host, port, data dir and admin token are the server's own.
    """

    data_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    """Known before the start (tests hand the URL to OIDC issuers); kept across restarts."""
    admin_token: str | None = field(default_factory=new_admin_token)
    """None: no bootstrap token (on an empty data dir the server then creates and prints a first admin token)."""
    app: web.Application | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _log: list[str] = field(default_factory=list)
    _log_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        """``host:port`` as image references and skopeo want it."""
        return f"127.0.0.1:{self.port}"

    @property
    def state(self) -> RegistryState:
        """The running application's state (stores, settings, auth), for tests that reach inside."""
        assert self.app is not None, "the server is not running"
        return self.app[STATE_KEY]

    @property
    def lifecycle(self) -> Lifecycle:
        """The running application's lifecycle services (retention, tag retention, GC, metering)."""
        assert self.app is not None, "the server is not running"
        return self.app[LIFECYCLE_KEY]

    def move_lifecycle_clock(self, monkeypatch: pytest.MonkeyPatch, by: timedelta) -> None:
        """Let the server's retention decisions (builds and tags) see the time ``by`` from now, until the test
        ends: a retention period runs out without the test waiting for it."""
        lifecycle = self.lifecycle
        for service in (lifecycle.retention, lifecycle.tags):
            monkeypatch.setattr(service, "clock", lambda: utc_now() + by)

    @property
    def running(self) -> bool:
        return self._thread is not None

    def server_settings(self) -> ServerSettings:
        settings = dict(self.settings)
        if "database_url" not in settings and (url := server_database_url(self.data_dir)):
            settings["database_url"] = url  # the tests run the servers on PostgreSQL (tests/pgcluster.py)
        storage_url, _ = registry_storage(self.data_dir)
        storage = {"storage_url": storage_url, "blob_redirect": TEST_BLOB_STORE != "s3-stream"}
        return ServerSettings(
            host="127.0.0.1",
            port=self.port,
            data_dir=self.data_dir,
            admin_token=self.admin_token,
            **{**storage, **settings},
        )

    def start(self, timeout: float = 60.0) -> InProcessServer:
        """Build the app and listen; returns once it accepts connections (or raises what start-up raised)."""
        if self._thread is not None:
            raise RuntimeError(f"the server on port {self.port} is already running")
        _install_log_router()
        listener = _listen(self.port)
        self.port = listener.getsockname()[1]
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._setup(listener))
            except BaseException as exc:
                failure.append(exc)
                listener.close()
                self.app = None
                _close_loop(loop)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            _close_loop(loop)

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"{SERVER_THREAD_PREFIX}-{self.port}", daemon=True)
        with _RUNNING_LOCK:
            _ROUTER.servers.append(self)
            _RUNNING.add(self)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"the in-process server did not start in {timeout}s:\n{self.log()[-4000:]}")
        if failure:
            self._forget()
            raise failure[0]
        return self

    async def _setup(self, listener: socket.socket) -> None:
        settings = self.server_settings()
        self.app = create_app(settings)  # in the loop's thread, so the migration's log lines are this server's
        self._runner = make_runner(self.app, settings)
        await self._runner.setup()
        await web.SockSite(self._runner, listener).start()

    def stop(self, timeout: float = 60.0) -> None:
        """Drain and clean up as ``cargohold serve`` does on SIGTERM, without the process exit.

        Housekeeping stops (``Drain.begin``), the listener closes, aiohttp shuts down the connections, and
        the application's cleanup runs: thread pools joined, the database disposed.
        """
        if self._thread is None or self._loop is None:
            return
        loop, thread = self._loop, self._thread
        try:
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(self._teardown(), loop).result(timeout)
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if thread.is_alive():
                raise RuntimeError(f"the in-process server on port {self.port} did not stop in {timeout}s")
        finally:
            self._forget()

    async def _teardown(self) -> None:
        assert self._runner is not None and self.app is not None
        self.app[DRAIN_KEY].begin()
        await self._runner.cleanup()

    def _forget(self) -> None:
        with _RUNNING_LOCK:
            if self in _ROUTER.servers:
                _ROUTER.servers.remove(self)
            _RUNNING.discard(self)
        self._thread = self._loop = self._runner = None
        self.app = None

    def owns_thread(self, ident: int | None) -> bool:
        """Whether thread ``ident`` is this server's event loop or one of its thread pools' workers."""
        thread, app = self._thread, self.app
        if ident is None or thread is None:
            return False
        if ident == thread.ident:
            return True
        if app is None or STATE_KEY not in app:
            return False
        pools = [app[STATE_KEY].executor]
        if PUSH_KEY in app:
            pools.append(app[PUSH_KEY].executor)
        return any(ident == worker.ident for pool in pools for worker in list(pool._threads))

    def append_log(self, line: str) -> None:
        with self._log_lock:
            self._log.append(line + "\n")

    def log(self) -> str:
        """Everything this server logged, across restarts, as ``cargohold serve`` prints it."""
        with self._log_lock:
            return "".join(self._log)


def _listen(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:``port`` (0: any free port), bound before the app needs its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on the loop (as ``asyncio.run`` does), then close it and its default executor."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()


def running_in_process() -> list[InProcessServer]:
    with _RUNNING_LOCK:
        return list(_RUNNING)


def leaked_threads() -> list[str]:
    """Names of live threads that only a running in-process server should have."""
    return sorted(t.name for t in threading.enumerate() if t.name.startswith(STRAY_THREAD_PREFIXES))


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


# --- fixtures and factories ------------------------------------------------------------------------

Server = InProcessServer | ServerProcess
"""Either kind: for helpers that only need the common interface."""


@contextmanager
def running(server: Server, *, check_tracebacks: bool = False) -> Iterator[Server]:
    """Start ``server``, yield it, always stop it; optionally fail if its log gained a traceback."""
    server.start()
    try:
        yield server
    finally:
        server.stop()
    if check_tracebacks:
        assert_no_traceback(server.log())


@contextmanager
def two_apps_on_one_data_dir(data_dir: Path) -> Iterator[tuple[InProcessServer, InProcessServer]]:
    """Two running applications sharing ``data_dir`` (its database and blobs) and an admin token: two workers
    or two replicas of one registry, for what must hold across processes."""
    token = new_admin_token()
    with (
        running(InProcessServer(data_dir=data_dir, admin_token=token)) as first,
        running(InProcessServer(data_dir=data_dir, admin_token=token)) as second,
    ):
        assert isinstance(first, InProcessServer) and isinstance(second, InProcessServer)
        yield first, second


def assert_no_traceback(log: str) -> None:
    assert "Traceback" not in log, f"server log has a traceback:\n{log[-4000:]}"


@pytest.fixture(name="server")
def server_fixture(tmp_path: Path) -> Iterator[InProcessServer]:
    """A fresh in-process registry with its own empty data directory."""
    with running(InProcessServer(data_dir=tmp_path / "data")) as started:
        assert isinstance(started, InProcessServer)
        yield started


@pytest.fixture(name="server_process")
def server_process_fixture(tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh ``cargohold serve`` child process with its own empty data directory."""
    with running(ServerProcess(data_dir=tmp_path / "data")) as started:
        assert isinstance(started, ServerProcess)
        yield started


@pytest.fixture(name="http")
def http_fixture(server: InProcessServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


_SHARED: InProcessServer | None = None


def shared_server(tmp_path_factory: pytest.TempPathFactory) -> InProcessServer:
    """One in-process registry for the whole session, started on first use and stopped at session end.

    For tests that only create their own projects and repositories (fresh names) and change no setting:
    the protocol suites. conftest's session fixture stops it (and checks that nothing leaked).
    """
    global _SHARED
    if _SHARED is None or not _SHARED.running:
        _SHARED = InProcessServer(data_dir=tmp_path_factory.mktemp("shared-registry") / "data").start()
    return _SHARED


def stop_shared_server() -> None:
    global _SHARED
    if _SHARED is not None:
        _SHARED.stop()
        assert_no_traceback(_SHARED.log())
        _SHARED = None


def shared_server_fixture() -> Any:
    """A module-scoped ``server`` fixture that is the session's :func:`shared_server`.

    Fails the module if the server's log gained a traceback while the module ran.
    """

    @pytest.fixture(scope="module", name="server")
    def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
        started = shared_server(tmp_path_factory)
        before = len(started.log())
        yield started
        assert_no_traceback(started.log()[before:])

    return _server


def module_server(configure: Callable[[pytest.TempPathFactory], dict[str, Any]] | None = None, **settings: Any) -> Any:
    """A module-scoped in-process ``server`` fixture with ``settings`` (``ServerSettings`` fields).

    ``configure`` computes settings that need other fixtures' values (it receives the temp path factory);
    for settings that depend on other fixtures, write the fixture out with :class:`InProcessServer`.
    """

    @pytest.fixture(scope="module", name="server")
    def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
        extra = configure(tmp_path_factory) if configure is not None else {}
        proc = InProcessServer(data_dir=tmp_path_factory.mktemp("server") / "data", settings={**settings, **extra})
        with running(proc, check_tracebacks=True) as started:
            assert isinstance(started, InProcessServer)
            yield started

    return _server


def traceback_guard_fixture() -> Any:
    """An autouse fixture failing a test after which the server log gained a Python traceback."""

    @pytest.fixture(autouse=True, name="no_tracebacks")
    def _guard(server: Server) -> Iterator[None]:
        start = len(server.log())
        yield
        new = server.log()[start:]
        assert "Traceback" not in new, f"server logged a traceback during this test:\n{new[-4000:]}"

    return _guard
