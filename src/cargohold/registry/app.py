"""The aiohttp application: wiring, middlewares, start-up and background housekeeping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from aiohttp import ClientConnectionResetError, web
from aiohttp.http_exceptions import HttpProcessingError

from cargohold import __version__
from cargohold.client.tls import verify_option
from cargohold.config import ServerSettings
from cargohold.config.convert import parse_cidrs
from cargohold.edge import requestid
from cargohold.edge.proxies import TrustedProxies
from cargohold.metadata.control import ControlStore
from cargohold.metadata.db import Database
from cargohold.metadata.store import MetadataStore
from cargohold.ops import dbmetrics
from cargohold.registry import api, api_lifecycle, auth_routes, blob_copy, routing, space
from cargohold.registry.access import AccessPolicy, OpenAccess
from cargohold.registry.bodies import BodyStalled, BodyTooLarge, respond_and_close
from cargohold.registry.drain import DRAIN_KEY, Drain
from cargohold.registry.egress import EgressPolicy, parse_networks
from cargohold.registry.errors import RegistryError
from cargohold.registry.security import build_security
from cargohold.registry.state import STATE_KEY, RegistryState, state_of
from cargohold.storage.faults import classify
from cargohold.storage.filesystem import FilesystemBlobStore
from cargohold.storage.private import secure_data_dir
from cargohold.storage.space import SpaceGuard, SpaceReserve

log = logging.getLogger(__name__)

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


@web.middleware
async def oci_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every failure into the OCI JSON error format; never leak a traceback to the client."""
    is_registry = request.path.startswith("/v2")
    head = request.method == "HEAD"
    close = False
    try:
        response = await handler(request)
    except RegistryError as exc:
        response = exc.response(head=head)
        close = exc.close
    except BodyTooLarge as exc:
        response = RegistryError("SIZE_INVALID", str(exc), status=413, detail={"limit": exc.limit}).response(head=head)
    except BodyStalled as exc:
        code = "BLOB_UPLOAD_INVALID" if is_registry else "TIMEOUT"
        response = RegistryError(code, str(exc), status=408).response(head=head)
        close = True
    except web.HTTPException as exc:
        if not is_registry or exc.status < 400:
            raise
        code = {401: "UNAUTHORIZED", 403: "DENIED", 404: "NAME_UNKNOWN", 405: "UNSUPPORTED", 413: "SIZE_INVALID"}
        response = RegistryError(
            code.get(exc.status, "UNSUPPORTED"), exc.reason or "request refused", status=exc.status
        ).response(head=head)
    except (ConnectionResetError, ClientConnectionResetError, HttpProcessingError) as exc:
        # The client went away or sent a broken body mid-request; nothing was committed.
        log.info("client connection failed during %s %s: %s", request.method, request.path, exc)
        response = RegistryError("BLOB_UPLOAD_INVALID", f"request body incomplete: {exc}").response(head=head)
    except Exception:
        log.exception("internal error handling %s %s", request.method, request.path_qs)
        response = RegistryError("UNKNOWN", "internal server error; the server log has the details").response(head=head)
    if is_registry:
        response.headers.update(API_VERSION_HEADER)
    if close:
        return await respond_and_close(request, response)
    return response


async def api_root(request: web.Request) -> web.Response:
    """``GET /v2/``: the API version check clients (and ``docker login``) start with."""
    await state_of(request).access.authorize(request, None, frozenset())
    return web.json_response({}, headers=API_VERSION_HEADER)


async def healthz(request: web.Request) -> web.Response:
    """``{"status": "ok"}``, or ``"degraded"`` with ``reasons`` while storage is low: still HTTP 200, since
    pulls keep working and a load balancer should keep sending them (uploads get 507 meanwhile)."""
    state = state_of(request)
    await state.run(state.metadata.repository_exists, "healthz-probe")
    body: dict[str, object] = {"status": "ok", "version": __version__}
    if state.space is not None and (reason := await state.run(state.space.degraded_reason)) is not None:
        body.update(status="degraded", reasons=[reason])
    return web.json_response(body)


def purge_stale_uploads(state: RegistryState, now: datetime | None = None) -> int:
    """Remove upload sessions idle for longer than the TTL, and staged files no session owns."""
    now = now or datetime.now(UTC)
    cutoff = now - state.settings.upload_ttl
    removed = 0
    for upload_id in state.metadata.stale_uploads(cutoff):
        state.blobs.remove_upload(upload_id)
        state.metadata.delete_upload(upload_id)
        removed += 1
    known = state.metadata.upload_ids()
    for upload_id, modified in list(state.blobs.iter_uploads()):
        if upload_id not in known and modified < cutoff:
            state.blobs.remove_upload(upload_id)
            removed += 1
    if removed:
        log.info("purged %d stale upload session(s) idle since before %s", removed, cutoff.isoformat())
    return removed


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE_KEY]
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

    task = asyncio.create_task(loop())
    app[DRAIN_KEY].on_drain(task.cancel)  # a purge in progress finishes; no new one starts
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _shutdown(app: web.Application) -> AsyncIterator[None]:
    yield
    state = app[STATE_KEY]
    if state.oidc is not None:
        await state.oidc.verifier.aclose()
    state.executor.shutdown(wait=True, cancel_futures=True)
    if state.push_executor is not None:
        state.push_executor.shutdown(wait=True, cancel_futures=True)
    state.metadata.db.dispose()


def create_app(settings: ServerSettings, access: AccessPolicy | None = None) -> web.Application:
    """Build the registry application; migrates the metadata database before returning.

    Without ``access``, every route requires a credential (see :mod:`cargohold.registry.auth`); passing
    :class:`OpenAccess` is for embedding the bare registry core behind another gate, and for tests.
    """
    secure_data_dir(settings.data_dir, settings.resolved_database_url())
    blobs = FilesystemBlobStore(settings.data_dir, fsync=settings.fsync)
    database_file = settings.database_file()
    guard = SpaceGuard(
        settings.min_free_space,
        blobs=blobs.filesystem_path(),
        database=database_file.parent if database_file is not None else None,
    )
    monitor = space.SpaceMonitor(
        guard,
        SpaceReserve(database_file) if database_file is not None else None,
        evict_for_space=settings.evict_for_space,
        interval=settings.space_check_interval,
    )
    # Restarting on a full disk: SQLite needs room for its WAL and shared-memory files just to open.
    monitor.make_room_for_database()
    database = Database(settings.resolved_database_url())
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
    )
    if settings.server_push:
        state.egress = EgressPolicy(parse_networks(settings.push_allow_networks))
        state.push_executor = ThreadPoolExecutor(max_workers=settings.push_threads, thread_name_prefix="cargohold-push")
        state.push_executor.submit(verify_option, True)  # load the CA bundle now, not in the first push
    if access is None:
        security = build_security(state)
        state.auth, state.oidc = security.access, security.oidc
        state.access = security.access
    drain = Drain()
    proxies = TrustedProxies(parse_cidrs(settings.trusted_proxies, "trusted_proxies"), settings.proxy_header)
    app = web.Application(
        middlewares=[requestid.request_ids, proxies.middleware(), drain.middleware(), oci_errors, space.storage_faults],
        client_max_size=1024**2,
    )
    requestid.install(app)
    app[STATE_KEY] = state
    app[DRAIN_KEY] = drain
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/token", auth_routes.token)
    app.router.add_post("/auth/oidc/github-actions", auth_routes.oidc_exchange)
    app.router.add_get("/api/v1/oidc", auth_routes.oidc_discovery)
    if state.auth is not None:
        api.add_routes(app)
    blob_copy.add_routes(app)
    app.router.add_get("/v2/", api_root)
    app.router.add_get("/v2", api_root)
    app.router.add_route("*", "/v2/{tail:.+}", routing.dispatch)
    app.cleanup_ctx.append(_shutdown)
    app.cleanup_ctx.append(_housekeeping)
    api_lifecycle.install(app)  # after the control API's routes: lifecycle routes, hooks, /metrics, schedule
    space.install(app)  # after lifecycle: reclaiming uses its retention, GC and metrics
    dbmetrics.install(app)  # after lifecycle too: its metrics registry
    return app
