"""Running the registry: one aiohttp server process."""

from __future__ import annotations

import logging

from aiohttp import web

from cargohold.config import ServerSettings
from cargohold.registry.accesslog import AccessLogger, access_log, install_log_filters
from cargohold.registry.app import create_app

log = logging.getLogger(__name__)


def run(settings: ServerSettings) -> None:
    install_log_filters()
    app = create_app(settings)
    log.info(
        "cargohold registry listening on http://%s:%d (data dir %s)", settings.host, settings.port, settings.data_dir
    )
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log=access_log if settings.access_log else None,
        access_log_class=AccessLogger,
        print=None,
        shutdown_timeout=10,
        keepalive_timeout=settings.header_timeout.total_seconds(),  # the request-head deadline too
    )
