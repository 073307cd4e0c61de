"""``cargohold serve --workers N``: N server processes on one port, under a supervisor.

Why processes: one Python process serves small requests (manifest GET, blob HEAD, tokens) on one core, and
a CI fleet or a Kubernetes cluster pulling at once makes those the bottleneck. Each worker is a whole server
(:func:`cargohold.server.process.serve_process`) listening on the same address with ``SO_REUSEPORT``, so the
kernel spreads new connections over them; what they share lives in the database and the data directory.

The supervisor (this module) is the process the service manager sees. It opens no database and runs no event
loop, so every worker is forked from a clean process:

* **Start.** Worker 0 starts alone and the others only once it listens: it migrates the database, creates the
  signing key and, on an empty data directory, the first admin token, exactly once. With ``--port 0`` the
  supervisor reserves a port first (a bound, non-listening ``SO_REUSEPORT`` socket) and hands it to all.
* **Background jobs run once**: worker 0 runs the stale-upload purge, retention sweeps, garbage collection
  and evicting for space (every worker measures free space for its own uploads). A manual GC through the API
  is guarded by the database lease in any worker.
* **Signals.** SIGTERM/SIGINT are forwarded to every worker, which drains as a single server does
  (:mod:`cargohold.server.drain`); the supervisor exits once all have, 0 if all drained cleanly, else 1. A
  second SIGTERM/SIGINT kills the workers at once. SIGHUP is forwarded (each worker reloads its TLS
  certificate). Workers run in their own process group, so a terminal's Ctrl-C reaches only the supervisor;
  one that receives the same signal from a service manager too takes it as one (``REPEAT_SIGNAL_GRACE``).
  A worker whose supervisor dies (even by SIGKILL) gets SIGTERM and drains (``PR_SET_PDEATHSIG``).
* **A worker that dies is restarted** (worker 0 again takes the background jobs), unless it lived less than
  ``WORKER_MIN_LIFETIME``: a worker that cannot start would only be restarted forever, so then the server
  drains the others and exits 1 for the service manager to act on (``Restart=on-failure``).

What is per process (see DEVELOPERS.md, "Several workers"): the credential-lookup and registry-token caches,
the manifest cache, the failed-authentication rate limit, upload-session locks and running hashes (a chunk
may land on any worker: the hash is rebuilt from the staged bytes), and ``/metrics`` (each scrape sees one
worker's counters).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import NoReturn

from cargohold.config import ServerSettings
from cargohold.edge.logs import set_worker

log = logging.getLogger(__name__)

WORKER_MIN_LIFETIME = 10.0
"""Seconds a worker must have run for its death to be answered with a restart rather than a shutdown."""
_PR_SET_PDEATHSIG = 1


@dataclass
class _Worker:
    index: int
    pid: int
    started: float


@dataclass
class Supervisor:
    settings: ServerSettings
    count: int
    workers: dict[int, _Worker] = field(default_factory=dict)
    """By pid."""
    stopping: bool = False
    failed: bool = False
    min_lifetime: float = WORKER_MIN_LIFETIME

    def run(self) -> NoReturn:
        reservation = self._reserve_port()
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        log.info(
            "cargohold registry listening on %s://%s:%d with %d workers (data dir %s), public URL %s",
            "https" if self.settings.tls_cert else "http",
            self.settings.host,
            self.settings.port,
            self.count,
            self.settings.data_dir,
            self.settings.resolved_public_url(),
        )
        first = self._start(0, wait_ready=True)
        if first is None:
            self._exit(1, reservation)
        for index in range(1, self.count):
            if not self.stopping:
                self._start(index)
        self._watch()
        self._exit(1 if self.failed else 0, reservation)

    def _reserve_port(self) -> socket.socket | None:
        """With ``--port 0``: bind one port for every worker, and keep it bound (never listening) for restarts."""
        if self.settings.port != 0:
            return None
        family, kind, proto, _, address = socket.getaddrinfo(
            self.settings.host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        reservation = socket.socket(family, kind, proto)
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind(address)
        self.settings = dataclasses.replace(self.settings, port=int(reservation.getsockname()[1]))
        return reservation

    def _start(self, index: int, *, wait_ready: bool = False) -> _Worker | None:
        """Fork worker ``index``; with ``wait_ready``, return only once it listens (None if it died first)."""
        read_end, write_end = os.pipe() if wait_ready else (-1, -1)
        pid = os.fork()
        if pid == 0:
            if wait_ready:
                os.close(read_end)
            _worker_main(self.settings, index, os.getppid(), write_end)
        worker = _Worker(index, pid, time.monotonic())
        self.workers[pid] = worker
        log.info("worker %d started (pid %d)%s", index, pid, "; it runs the background jobs" if index == 0 else "")
        if wait_ready:
            os.close(write_end)
            with os.fdopen(read_end, "rb") as ready:
                if ready.read(1) != b"r":  # end of file: the worker exited before it listened
                    self._reap(pid)
                    return None
        return worker

    def _reap(self, pid: int) -> None:
        _, status = os.waitpid(pid, 0)
        self.workers.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)
        log.error("worker (pid %d) exited with %s before it listened; stopping", pid, code)
        self.failed = True
        self._stop_all()

    def _watch(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                # -SIGTERM: ended by the signal before its event loop took it over (still starting: nothing to
                # drain); anything else but 0 means the drain went wrong (its watchdog fired, say).
                if code not in (0, -signal.SIGTERM):
                    log.warning("worker %d (pid %d) exited with %s during the drain", worker.index, pid, code)
                    self.failed = True
                continue
            lived = time.monotonic() - worker.started
            if lived < self.min_lifetime:
                log.error(
                    "worker %d (pid %d) exited with %s after %.1f s; stopping the server (a worker that cannot "
                    "run would only be restarted forever)",
                    worker.index,
                    pid,
                    code,
                    lived,
                )
                self.failed = True
                self._stop_all()
                continue
            log.error("worker %d (pid %d) exited with %s after %.0f s; restarting it", worker.index, pid, code, lived)
            self._start(worker.index)

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stopping:
            log.warning("second %s during the drain: stopping the workers now", name)
            for pid in list(self.workers):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.failed = True
            return
        log.info("%s received: draining %d workers", name, len(self.workers))
        self._stop_all()

    def _stop_all(self) -> None:
        self.stopping = True
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        for pid in list(self.workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    def _exit(self, code: int, reservation: socket.socket | None) -> NoReturn:
        if reservation is not None:
            reservation.close()
        if code == 0:
            log.info("stopped (%d workers)", self.count)
        else:
            log.error("stopped with errors (exit 1)")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def supervise(settings: ServerSettings, count: int) -> NoReturn:
    """Run ``count`` workers until SIGTERM/SIGINT (see the module docstring); never returns."""
    Supervisor(settings, count).run()


def _worker_main(settings: ServerSettings, index: int, supervisor: int, ready_fd: int) -> NoReturn:
    """The forked child: its own process group, SIGTERM when the supervisor dies, then a whole server."""
    code = 1
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)  # the supervisor's handlers are not this process's
        # Until the event loop takes SIGHUP over: a reload while the worker starts must not end it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.setpgid(0, 0)
        _die_with(supervisor)
        set_worker(index)
        from cargohold.metadata.schema_version import SchemaTooNew
        from cargohold.server.process import serve_process

        def ready() -> None:
            if ready_fd >= 0:
                os.write(ready_fd, b"r")
                os.close(ready_fd)

        try:
            serve_process(settings, worker=index, on_started=ready)
        except SchemaTooNew as exc:
            sys.stderr.write(f"Error: {exc}\n")
    except SystemExit as exc:  # start-up refusals phrased for people (e.g. a short admin token)
        if isinstance(exc.code, str):
            sys.stderr.write(f"{exc.code}\n")
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("worker %d failed", index)
    finally:
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)


def _die_with(supervisor: int) -> None:
    """Ask Linux for SIGTERM when the supervisor ends, and drain: no worker outlives it, even a SIGKILLed one."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor:  # it died before the request took effect
        os._exit(1)
