"""Running the registry: one aiohttp server process, drained gracefully on SIGTERM/SIGINT; with ``--workers N``
several of them under a supervisor (:mod:`cargohold.server.workers`)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from aiohttp import web

from cargohold.config import ServerSettings
from cargohold.edge.tls import serving_certificate
from cargohold.server.app import create_app
from cargohold.server.drain import serve
from cargohold.server.http.accesslog import AccessLogger, access_log, install_log_filters

log = logging.getLogger(__name__)

REPEAT_SIGNAL_GRACE = 1.0
"""Seconds in which a worker takes a repeated SIGTERM/SIGINT as the same request to stop (see drain.serve)."""


def worker_count(settings: ServerSettings) -> int:
    """``--workers``, where 0 means one per CPU this process may run on (its affinity mask, not the host's)."""
    if settings.workers > 0:
        return settings.workers
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def run(settings: ServerSettings) -> NoReturn:
    """Serve until SIGTERM/SIGINT, drain (cargohold.server.drain), and end the process.

    With more than one worker the process becomes their supervisor (cargohold.server.workers).
    """
    count = worker_count(settings)
    if count > 1:
        from cargohold.server.workers import supervise

        supervise(settings, count)
    serve_process(settings)


def serve_process(
    settings: ServerSettings,
    *,
    worker: int | None = None,
    on_started: Callable[[], None] | None = None,
) -> NoReturn:
    """One serving process: the whole server, or worker ``worker`` of several (which listens with SO_REUSEPORT,
    and runs the background jobs only if it is worker 0).

    The process ends with ``os._exit`` once the drain has closed everything itself (connections, thread
    pools, the database) and the logs are flushed: the interpreter's own teardown of some 900 modules takes
    half a second, and a restarting server is unavailable for all of it.
    """
    install_log_filters()
    app = create_app(settings, background_jobs=worker in (None, 0))
    if worker is None:
        log.info(
            "cargohold registry listening on %s://%s:%d (data dir %s), public URL %s",
            "https" if settings.tls_cert else "http",
            settings.host,
            settings.port,
            settings.data_dir,
            settings.resolved_public_url(),
        )
    asyncio.run(
        serve(
            make_runner(app, settings),
            lambda runner: make_sites(runner, settings, reuse_port=worker is not None),
            settings.shutdown_timeout,
            on_started=on_started,
            repeat_grace=REPEAT_SIGNAL_GRACE if worker is not None else 0.0,
        )
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def make_runner(app: web.Application, settings: ServerSettings) -> web.AppRunner:
    """The aiohttp runner; signals are ours (:func:`cargohold.server.drain.serve`), not aiohttp's."""
    return web.AppRunner(
        app,
        handle_signals=False,
        access_log=access_log if settings.access_log else None,
        access_log_class=AccessLogger,
        # What aiohttp waits for handlers in its own last shutdown step; the drain has waited before.
        shutdown_timeout=min(1.0, settings.shutdown_timeout / 10),
        keepalive_timeout=settings.header_timeout.total_seconds(),  # the request-head deadline too
    )


def make_sites(runner: web.AppRunner, settings: ServerSettings, *, reuse_port: bool = False) -> list[web.BaseSite]:
    """The listening socket; with TLS, its context is reloaded on SIGHUP (cargohold.edge.tls). Workers of
    ``--workers N`` each listen with ``SO_REUSEPORT``: the kernel spreads new connections over them."""
    certificate = serving_certificate(settings)
    return [
        web.TCPSite(
            runner,
            settings.host,
            settings.port,
            ssl_context=certificate.context if certificate else None,
            reuse_port=reuse_port or None,
        )
    ]
