"""Running the registry: one aiohttp server process, drained gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import NoReturn

from aiohttp import web

from cargohold.config import ServerSettings
from cargohold.edge.tls import serving_certificate
from cargohold.server.app import create_app
from cargohold.server.drain import serve
from cargohold.server.http.accesslog import AccessLogger, access_log, install_log_filters

log = logging.getLogger(__name__)


def run(settings: ServerSettings) -> NoReturn:
    """Serve until SIGTERM/SIGINT, drain (cargohold.server.drain), and end the process.

    The process ends with ``os._exit`` once the drain has closed everything itself (connections, thread
    pools, the database) and the logs are flushed: the interpreter's own teardown of some 900 modules takes
    half a second, and a restarting server is unavailable for all of it.
    """
    install_log_filters()
    app = create_app(settings)
    log.info(
        "cargohold registry listening on %s://%s:%d (data dir %s), public URL %s",
        "https" if settings.tls_cert else "http",
        settings.host,
        settings.port,
        settings.data_dir,
        settings.resolved_public_url(),
    )
    asyncio.run(
        serve(make_runner(app, settings), lambda runner: make_sites(runner, settings), settings.shutdown_timeout)
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


def make_sites(runner: web.AppRunner, settings: ServerSettings) -> list[web.BaseSite]:
    """The listening socket; with TLS, its context is reloaded on SIGHUP (cargohold.edge.tls)."""
    certificate = serving_certificate(settings)
    return [web.TCPSite(runner, settings.host, settings.port, ssl_context=certificate.context if certificate else None)]
