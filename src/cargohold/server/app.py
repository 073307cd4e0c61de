"""The aiohttp application: wiring, middlewares, start-up and background housekeeping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from aiohttp import web

from cargohold.config import ServerSettings
from cargohold.config.convert import parse_cidrs
from cargohold.domain.space import SpaceMonitor
from cargohold.edge import requestid
from cargohold.edge.proxies import TrustedProxies
from cargohold.lifecycle.space import SpaceReclaimer
from cargohold.metadata.control import ControlStore
from cargohold.metadata.db import Database
from cargohold.metadata.store import MetadataStore
from cargohold.ops import dbmetrics
from cargohold.server import ui
from cargohold.server.auth import routes as auth_routes
from cargohold.server.auth.access import AccessPolicy, OpenAccess
from cargohold.server.auth.security import build_security
from cargohold.server.control import api, blob_copies
from cargohold.server.control import lifecycle as control_lifecycle
from cargohold.server.distribution import routing
from cargohold.server.drain import DRAIN_KEY, Drain, background_loop
from cargohold.server.http import health, middlewares, space
from cargohold.server.http.middlewares import API_VERSION_HEADER
from cargohold.server.state import STATE_KEY, RegistryState, state_of
from cargohold.storage import open_blob_store
from cargohold.storage.faults import classify
from cargohold.storage.private import secure_data_dir
from cargohold.storage.space import SpaceGuard, SpaceReserve

log = logging.getLogger(__name__)


async def api_root(request: web.Request) -> web.Response:
    """``GET /v2/``: the API version check clients (and ``docker login``) start with."""
    await state_of(request).access.authorize(request, None, frozenset())
    return web.json_response({}, headers=API_VERSION_HEADER)


def purge_stale_uploads(state: RegistryState, now: datetime | None = None) -> int:
    """Remove upload sessions idle for longer than the TTL, and staged files no session owns (blocking)."""
    return state.uploads.purge_stale(now)


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE_KEY]
    if not state.background_jobs:
        yield
        return
    interval = max(1.0, min(state.settings.upload_ttl / 4, timedelta(hours=1)).total_seconds())

    async def loop() -> None:
        while True:
            try:
                await state.run(purge_stale_uploads, state)
            except Exception as exc:
                if (fault := classify(exc)) is None:
                    log.exception("purging stale uploads failed; will retry in %.0f s", interval)
                else:
                    log.warning("purging stale uploads failed: %s; will retry in %.0f s", fault.describe(), interval)
            await asyncio.sleep(interval)

    async with background_loop(app, loop()):
        yield


async def _key_reloads(app: web.Application) -> AsyncIterator[None]:
    """Re-read the shared signing keys now and then: replicas sign with a key rotated elsewhere, and stop
    trusting a retired one, within ``--key-reload-interval`` (server/auth/signing.py)."""
    state = app[STATE_KEY]
    if state.auth is None:
        yield
        return
    signer = state.auth.authenticator.signer
    interval = max(0.1, state.settings.key_reload_interval.total_seconds())

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await state.run(signer.refresh)
            except Exception as exc:  # the database may be down for a moment: keep the keys loaded
                log.warning("re-reading the signing keys failed: %s; will retry in %.0f s", exc, interval)

    async with background_loop(app, loop()):
        yield


async def _shutdown(app: web.Application) -> AsyncIterator[None]:
    yield
    state = app[STATE_KEY]
    if state.oidc is not None:
        await state.oidc.verifier.aclose()
    state.executor.shutdown(wait=True, cancel_futures=True)
    state.metadata.db.dispose()


def create_app(
    settings: ServerSettings, access: AccessPolicy | None = None, *, background_jobs: bool = True
) -> web.Application:
    """Build the registry application; migrates the metadata database before returning.

    Without ``access``, every route requires a credential (see :mod:`cargohold.server.auth.policy`); passing
    :class:`OpenAccess` is for embedding the bare registry core behind another gate, and for tests. Without
    ``background_jobs``, the application serves requests but leaves purges, sweeps, garbage collection and
    evicting for space to another process (the first of ``--workers N``).
    """
    secure_data_dir(settings.data_dir, settings.resolved_database_url())
    blobs = open_blob_store(
        settings.storage_url,
        settings.data_dir,
        fsync=settings.fsync,
        redirect=settings.blob_redirect,
        redirect_url=settings.blob_redirect_url,
    )
    database_file = settings.database_file()
    guard = SpaceGuard(
        settings.min_free_space,
        blobs=blobs.filesystem_path(),
        database=database_file.parent if database_file is not None else None,
    )
    monitor = SpaceMonitor(
        guard,
        SpaceReserve(database_file) if database_file is not None else None,
        evict_for_space=settings.evict_for_space,
        interval=settings.space_check_interval,
    )
    # Restarting on a full disk: SQLite needs room for its WAL and shared-memory files just to open.
    monitor.make_room_for_database()
    # PostgreSQL: a connection for each I/O thread, plus garbage collection's reader and writer threads.
    database = Database(settings.resolved_database_url(), pool_size=settings.io_threads + 2)
    database.migrate()
    executor = ThreadPoolExecutor(max_workers=settings.io_threads, thread_name_prefix="cargohold-io")
    metadata = MetadataStore(database)
    control = ControlStore(database)
    state = RegistryState(
        settings=settings,
        metadata=metadata,
        blobs=blobs,
        access=access or OpenAccess(),
        executor=executor,
        control=control,
        space=monitor,
        background_jobs=background_jobs,
    )
    if access is None:
        security = build_security(state)
        state.auth, state.oidc = security.access, security.oidc
        state.access = security.access
    drain = Drain()
    proxies = TrustedProxies(parse_cidrs(settings.trusted_proxies, "trusted_proxies"), settings.proxy_header)
    app = web.Application(
        middlewares=[
            requestid.request_ids,
            proxies.middleware(),
            drain.middleware(),
            middlewares.oci_errors,
            space.storage_faults,
        ],
        client_max_size=1024**2,
    )
    requestid.install(app)
    app[STATE_KEY] = state
    app[DRAIN_KEY] = drain
    health.install(app, state)
    app.router.add_route("*", "/token", auth_routes.token)
    app.router.add_post("/auth/oidc/github-actions", auth_routes.oidc_exchange)
    app.router.add_get("/api/v1/oidc", auth_routes.oidc_discovery)
    if state.auth is not None:
        api.add_routes(app)
        ui.install(app)  # the web dashboard under /ui/ (GET / redirects there)
    blob_copies.install(app)
    app.router.add_get("/v2/", api_root)
    app.router.add_get("/v2", api_root)
    app.router.add_route("*", "/v2/{tail:.+}", routing.dispatch)
    app.cleanup_ctx.append(_shutdown)
    app.cleanup_ctx.append(_housekeeping)
    app.cleanup_ctx.append(_key_reloads)
    lifecycle = control_lifecycle.install(app)  # after the control API's routes: its routes, hooks, /metrics
    reclaimer = SpaceReclaimer(
        lifecycle.retention,
        lifecycle.collect_garbage,
        monitor.guard.measure,
        after_evict=lambda evicted: lifecycle.metering.refresh(sorted({e.project_id for e in evicted})),
    )
    # Reclaiming evicts and collects: a background job. Every worker measures free space for its own uploads.
    space.install(app, registry=lifecycle.metrics.registry, reclaimer=reclaimer if background_jobs else None)
    dbmetrics.install(app)  # after lifecycle: its metrics registry
    return app
