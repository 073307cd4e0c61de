"""Lifecycle routes and wiring: pin/unpin/extend, history, usage, GC, expiry sweeps, ``/metrics``.

:func:`install` is the one call ``create_app`` makes. It builds the lifecycle services on the app
(:data:`LIFECYCLE_KEY`), adds the routes below, installs the control API's hooks (after a save: enforce
the project's build cap and re-measure its storage; for a missing build: explain what happened to it),
adds the metrics middleware, and starts the background schedule: expiry sweeps and metering every
``retention_interval``, garbage collection every ``gc_interval``.

Routes (JSON; errors in the registry's ``{"errors": [...]}`` shape):

* ``POST /api/v1/builds/{build}/pin`` | ``/unpin`` | ``/extend`` ``{"by": seconds}`` or ``{"until": iso}``
  — push permission on the build's project.
* ``DELETE /api/v1/builds/{build}`` (``?dry_run=1``) — delete permission; evicts the build now.
* ``GET /api/v1/projects/{project}/history?limit=&build=`` — pull permission; newest first.
* ``GET /api/v1/projects/{project}/usage?month=YYYY-MM`` — pull permission.
* ``POST /api/v1/expire`` ``{"dry_run": bool, "project": id?}`` — admin (or push on the given project).
* ``POST /api/v1/gc`` ``{"dry_run": bool}`` — admin.
* ``GET /metrics`` — admin credential when the server authenticates (scrapers send a bearer token).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web

from cargohold.lifecycle import audit
from cargohold.lifecycle.clock import parse_iso, system_clock
from cargohold.lifecycle.gc import GarbageCollector, GcReport
from cargohold.lifecycle.metering import Metering
from cargohold.lifecycle.retention import BuildNotFound, Eviction, LifecycleError, Retention, build_json
from cargohold.metadata.control import BuildRecord
from cargohold.registry.api_common import (
    api_error,
    authenticated,
    check_project_access,
    identity_or_challenge,
    read_json_body,
)
from cargohold.registry.auth import Identity
from cargohold.registry.drain import DRAIN_KEY
from cargohold.registry.errors import RegistryError, manifest_unknown
from cargohold.registry.metrics import CONTENT_TYPE, Metrics
from cargohold.registry.state import STATE_KEY, RegistryState, state_of

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024


@dataclass
class Lifecycle:
    """The lifecycle services of one server process."""

    retention: Retention
    gc: GarbageCollector
    metering: Metering
    metrics: Metrics

    def on_evicted(self, evicted: list[Eviction]) -> None:
        for eviction in evicted:
            self.metrics.builds_evicted.labels(eviction.rule).inc()

    def record_gc(self, report: GcReport) -> None:
        result = "skipped" if report.skipped else ("ok" if report.completed else "stopped")
        self.metrics.gc_runs.labels(result).inc()
        if report.skipped or report.dry_run:
            return
        self.metrics.gc_duration.observe(report.duration_seconds)
        self.metrics.gc_freed_bytes.inc(report.bytes_freed)
        self.metrics.gc_freed_blobs.inc(report.blobs_deleted + report.orphan_files)
        self.metrics.gc_links_removed.inc(report.links_removed)

    def after_save(self, project_id: str) -> list[Eviction]:
        """Enforce the build cap and re-measure storage: call right after ``ControlStore.mark_saved``."""
        self.metrics.builds_saved.inc()
        evicted = self.retention.enforce_cap(project_id)
        self.metering.refresh([project_id])
        return evicted

    def collect_garbage(self, *, dry_run: bool = False) -> GcReport:
        report = self.gc.run(dry_run=dry_run)
        self.record_gc(report)
        if report.completed and not dry_run:
            self.metering.refresh()
        return report


LIFECYCLE_KEY = web.AppKey("cargohold_lifecycle", Lifecycle)


def lifecycle_of(app: web.Application) -> Lifecycle:
    return app[LIFECYCLE_KEY]


# --- hooks for the control API and the registry ---------------------------------------------------------


def _after_save(lifecycle: Lifecycle) -> Callable[..., Awaitable[None]]:
    """The control API's after-save hook (``api.AFTER_SAVE_KEY``): enforce the cap, re-measure storage."""

    async def after_save(state: RegistryState, build: BuildRecord) -> None:
        await state.run(lifecycle.after_save, build.project_id)

    return after_save


async def missing_manifest(request: web.Request, repository: str, reference: str) -> RegistryError:
    """The 404 for a manifest tag: MANIFEST_UNKNOWN, with the reason if lifecycle removed it."""
    state = state_of(request)
    explained = None
    if LIFECYCLE_KEY in request.app:
        explained = await state.run(audit.explain_missing, state.metadata.db, repository, reference)
    if explained is None:
        return manifest_unknown(reference)
    return RegistryError("MANIFEST_UNKNOWN", explained, detail={"reference": reference, "reason": explained})


# --- request helpers --------------------------------------------------------------------------------------


async def _identity(request: web.Request) -> tuple[RegistryState, Lifecycle, Identity]:
    state, _control, identity = await authenticated(request)
    return state, lifecycle_of(request.app), identity


async def _build_project(state: RegistryState, identity: Identity, build_id: str, action: str) -> str:
    assert state.control is not None
    build = await state.run(state.control.get_build, build_id)
    if build is None or not identity.can_project(build.project_id, "pull"):
        explained = await state.run(audit.explain_missing, state.metadata.db, None, build_id)
        raise api_error(404, "NOT_FOUND", explained or f"build {build_id} does not exist")
    restricted = identity.build_restriction(build.project_id)
    if restricted is not None and restricted != build_id:
        raise api_error(404, "NOT_FOUND", f"build {build_id} does not exist")
    check_project_access(identity, build.project_id, action)
    return build.project_id


def _flag(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in (None, "", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise api_error(400, "INVALID", f'"{field}" must be true or false')


# --- routes -----------------------------------------------------------------------------------------------


async def pin_build(request: web.Request) -> web.Response:
    return await _change(request, "pin")


async def unpin_build(request: web.Request) -> web.Response:
    return await _change(request, "unpin")


async def extend_build(request: web.Request) -> web.Response:
    return await _change(request, "extend")


async def _change(request: web.Request, action: str) -> web.Response:
    state, lifecycle, identity = await _identity(request)
    build_id = request.match_info["build"]
    await _build_project(state, identity, build_id, "push")
    retention = lifecycle.retention
    try:
        if action == "pin":
            build = await state.run(retention.pin, build_id, identity.name)
        elif action == "unpin":
            build = await state.run(retention.unpin, build_id, identity.name)
        else:
            body = await read_json_body(request, MAX_BODY)
            by, until = body.get("by"), body.get("until")
            if by is not None and (isinstance(by, bool) or not isinstance(by, int | float)):
                raise api_error(400, "INVALID", '"by" must be a number of seconds')
            try:
                until_at = parse_iso(str(until)) if until is not None else None
            except ValueError:
                raise api_error(400, "INVALID", f'"until" must be an ISO 8601 time, not {until!r}') from None
            by_delta = timedelta(seconds=by) if by is not None else None
            build = await state.run(lambda: retention.extend(build_id, identity.name, by=by_delta, until=until_at))
    except LifecycleError as exc:
        raise api_error(409, "CONFLICT", str(exc)) from None
    except BuildNotFound as exc:
        raise api_error(404, "NOT_FOUND", str(exc)) from None
    return web.json_response(build_json(build))


async def delete_build(request: web.Request) -> web.Response:
    """Evict a build now (``?dry_run=1``: say what would go). Pinned builds too: a person asked."""
    state, lifecycle, identity = await _identity(request)
    build_id = request.match_info["build"]
    await _build_project(state, identity, build_id, "delete")
    dry_run = _flag(request.query.get("dry_run"), "dry_run")
    try:
        eviction = await state.run(
            lambda: lifecycle.retention.evict_build(build_id, "manual", identity.name, dry_run=dry_run)
        )
    except BuildNotFound as exc:
        raise api_error(404, "NOT_FOUND", str(exc)) from None
    if not dry_run:
        await state.run(lifecycle.metering.refresh, [eviction.project_id])
    return web.json_response({"dry_run": dry_run, "evicted": [eviction.to_json()]})


async def project_history(request: web.Request) -> web.Response:
    state, _lifecycle, identity = await _identity(request)
    project_id = request.match_info["project"]
    check_project_access(identity, project_id, "pull")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise api_error(400, "INVALID", "limit must be a whole number") from None
    build = request.query.get("build")
    events = await state.run(lambda: audit.history(state.metadata.db, project_id, limit=limit, build_id=build))
    return web.json_response({"project_id": project_id, "events": [event.to_json() for event in events]})


async def project_usage(request: web.Request) -> web.Response:
    state, lifecycle, identity = await _identity(request)
    project_id = request.match_info["project"]
    check_project_access(identity, project_id, "pull")
    month = request.query.get("month") or None
    try:
        usage = await state.run(lifecycle.metering.usage, project_id, month)
    except ValueError as exc:
        raise api_error(400, "INVALID", str(exc)) from None
    except LookupError as exc:
        raise api_error(404, "NOT_FOUND", str(exc)) from None
    return web.json_response(usage.to_json())


async def run_expiry(request: web.Request) -> web.Response:
    state, lifecycle, identity = await _identity(request)
    body = await read_json_body(request, MAX_BODY)
    dry_run = _flag(body.get("dry_run"), "dry_run")
    project_id = body.get("project")
    if project_id is None:
        if not identity.is_admin:
            raise api_error(403, "DENIED", 'only an admin token may sweep every project; pass {"project": "<id>"}')
    else:
        check_project_access(identity, str(project_id), "push")
    evicted: list[Eviction] = await state.run(
        lambda: lifecycle.retention.expire(identity.name, dry_run=dry_run, project_id=project_id)
    )
    if project_id is not None:
        evicted += await state.run(lambda: lifecycle.retention.enforce_cap(str(project_id), dry_run=dry_run))
    if not dry_run and evicted:
        await state.run(lifecycle.metering.refresh, sorted({e.project_id for e in evicted}))
    return web.json_response({"dry_run": dry_run, "evicted": [e.to_json() for e in evicted]})


async def run_gc(request: web.Request) -> web.Response:
    state, lifecycle, identity = await _identity(request)
    if not identity.is_admin:
        raise api_error(403, "DENIED", "only an admin token may run garbage collection")
    dry_run = _flag((await read_json_body(request, MAX_BODY)).get("dry_run"), "dry_run")
    report = await state.run(lambda: lifecycle.collect_garbage(dry_run=dry_run))
    if report.skipped:
        raise api_error(409, "CONFLICT", f"{report.skipped}; try again when it finishes")
    return web.json_response(report.to_json())


async def metrics_endpoint(request: web.Request) -> web.Response:
    state = state_of(request)
    if state.auth is not None:
        identity = await identity_or_challenge(
            state.auth, request, "metrics need an admin token (Authorization: Bearer <token>)"
        )
        if not identity.is_admin:
            raise api_error(403, "DENIED", "only an admin token may read metrics")
    body = await state.run(lifecycle_of(request.app).metrics.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


# --- background schedule ----------------------------------------------------------------------------------


async def _schedule(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE_KEY]
    lifecycle = lifecycle_of(app)
    settings = state.settings

    def sweep() -> None:
        lifecycle.retention.expire()
        lifecycle.metering.refresh()
        audit.prune(state.metadata.db, system_clock() - settings.history_retention)

    async def every(interval: timedelta, job: Callable[[], object], what: str) -> None:
        seconds = max(0.05, interval.total_seconds())
        while True:
            await asyncio.sleep(seconds)
            try:
                await state.run(job)
            except Exception:
                log.exception("%s failed; will retry in %.0f s", what, seconds)

    tasks = [asyncio.create_task(every(settings.retention_interval, sweep, "retention sweep"))]
    if settings.gc_interval > timedelta(0):
        tasks.append(asyncio.create_task(every(settings.gc_interval, lifecycle.collect_garbage, "garbage collection")))

    def stop_for_drain() -> None:
        """No new pass starts; a running GC pass stops after its batch (a sweep in progress finishes: each
        eviction is its own transaction and a sweep is short)."""
        lifecycle.gc.stop.set()
        for task in tasks:
            task.cancel()

    app[DRAIN_KEY].on_drain(stop_for_drain)
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def install(app: web.Application) -> None:
    """Wire lifecycle into an app built by ``create_app`` (call after the control API's routes are added)."""
    from cargohold.registry import api

    state = app[STATE_KEY]
    db = state.metadata.db
    settings = state.settings
    metering = Metering(
        db, price_per_gb_month=settings.storage_price_per_gb_month, free_gb_months=settings.free_gb_months
    )
    metrics = Metrics(metering.stored_bytes)
    lifecycle = Lifecycle(
        retention=Retention(db),
        gc=GarbageCollector(db, state.blobs, grace=settings.gc_grace),
        metering=metering,
        metrics=metrics,
    )
    lifecycle.retention.listeners.append(lifecycle.on_evicted)
    app[LIFECYCLE_KEY] = lifecycle
    app[api.AFTER_SAVE_KEY] = _after_save(lifecycle)
    app.middlewares.insert(0, metrics.middleware())
    app.on_response_prepare.append(metrics.on_response_prepare)
    router = app.router
    router.add_post("/api/v1/builds/{build}/pin", pin_build)
    router.add_post("/api/v1/builds/{build}/unpin", unpin_build)
    router.add_post("/api/v1/builds/{build}/extend", extend_build)
    if not _has_route(app, "DELETE", "/api/v1/builds/{build}"):
        router.add_delete("/api/v1/builds/{build}", delete_build)
    router.add_get("/api/v1/projects/{project}/history", project_history)
    router.add_get("/api/v1/projects/{project}/usage", project_usage)
    router.add_post("/api/v1/expire", run_expiry)
    router.add_post("/api/v1/gc", run_gc)
    router.add_get("/metrics", metrics_endpoint)
    app.cleanup_ctx.append(_schedule)


def _has_route(app: web.Application, method: str, path: str) -> bool:
    return any(
        route.method == method and route.resource is not None and route.resource.canonical == path
        for route in app.router.routes()
    )
