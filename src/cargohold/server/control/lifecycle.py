"""Lifecycle routes and wiring: pin/unpin/extend, history, usage, GC, expiry sweeps, ``/metrics``.

:func:`install` is the one call ``create_app`` makes. It builds the lifecycle services on the app
(:data:`LIFECYCLE_KEY`), adds the routes below, installs the control API's hooks (after a save: enforce
the project's build cap and re-measure its storage; for a missing build: explain what happened to it),
adds the metrics middleware, and starts the background schedule: expiry sweeps (builds, then tags pushed
outside builds, then untagged manifests) and metering every ``retention_interval``, garbage collection
every ``gc_interval``.

Routes (JSON; errors in the registry's ``{"errors": [...]}`` shape):

* ``POST /api/v1/builds/{build}/pin`` | ``/unpin`` | ``/extend`` ``{"by": seconds}`` or ``{"until": iso}``
  — push permission on the build's project.
* ``DELETE /api/v1/builds/{build}`` (``?dry_run=1``) — delete permission; evicts the build now.
* ``GET /api/v1/projects/{project}/tags?repository=&limit=&after=`` — pull permission on the whole project;
  the project's tags pushed outside builds (:mod:`cargohold.lifecycle.tag_retention`).
* ``POST /api/v1/projects/{project}/tags/pin`` | ``/unpin`` | ``/extend`` ``{"repository", "tag", …}`` —
  push permission; like the build routes, for one of those tags.
* ``GET /api/v1/projects/{project}/history?limit=&build=`` — pull permission; newest first. A credential
  limited to one build sees only that build's events; ``limit`` is 1..1000.
* ``GET /api/v1/projects/{project}/usage?month=YYYY-MM`` — pull permission on the whole project (a
  credential limited to one build gets 403: usage is about every build).
* ``POST /api/v1/expire`` ``{"dry_run": bool, "project": id?}`` — admin (or push on the given project).
* ``POST /api/v1/gc`` ``{"dry_run": bool}`` — admin.
* ``GET /api/v1/storage`` — admin: free space, the minimum, degraded or not (see cargohold.server.http.space).
* ``GET /metrics`` — an admin credential, or one holding only ``metrics``, when the server authenticates
  (scrapers send a bearer token).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta

from aiohttp import web

from cargohold import schemas
from cargohold.clock import utc_now
from cargohold.domain import projects
from cargohold.domain.tags import change_tag
from cargohold.lifecycle import audit
from cargohold.lifecycle.gc import GarbageCollector, GcReport
from cargohold.lifecycle.lease import Lease
from cargohold.lifecycle.metering import Metering
from cargohold.lifecycle.retention import Eviction, Retention
from cargohold.lifecycle.tag_retention import ManifestCollection, TagEviction, TagRecord, TagRetention
from cargohold.oci.reference import is_valid_name, is_valid_tag
from cargohold.server.auth.policy import Identity
from cargohold.server.auth.visibility import explain_missing_build
from cargohold.server.control import render
from cargohold.server.control.common import (
    api_error,
    authenticated,
    check_project_access,
    extension,
    flag,
    identity_or_challenge,
    read_json_body,
    registry_host,
    room_to_clean_up,
)
from cargohold.server.control.storage import server_storage
from cargohold.server.drain import DRAIN_KEY
from cargohold.server.http.metrics import CONTENT_TYPE, Metrics
from cargohold.server.http.query_limits import LimitError, page_size
from cargohold.server.state import STATE_KEY, RegistryState, state_of
from cargohold.storage.faults import classify

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
SWEEP_LEASE = "sweep"
SWEEP_LEASE_TTL = timedelta(minutes=10)
"""Longer than a sweep takes; a replica killed mid-sweep delays the next one on another host by at most this."""
MAX_EXTENSION_SECONDS = 100 * 365 * 86400
"""Longest single extension (about 100 years): beyond it expiry dates leave what a datetime can hold."""


@dataclass
class Lifecycle:
    """The lifecycle services of one server process."""

    retention: Retention
    tags: TagRetention
    gc: GarbageCollector
    metering: Metering
    metrics: Metrics

    def on_evicted(self, evicted: list[Eviction]) -> None:
        for eviction in evicted:
            self.metrics.builds_evicted.labels(eviction.rule).inc()

    def on_tags_removed(self, evicted: list[TagEviction], collected: list[ManifestCollection]) -> None:
        for eviction in evicted:
            self.metrics.tags_evicted.labels(eviction.rule).inc()
        self.metrics.manifests_collected.inc(sum(len(collection.digests) for collection in collected))

    def expire(
        self, actor: str = "system", *, dry_run: bool = False, project_id: str | None = None
    ) -> tuple[list[Eviction], list[TagEviction], list[ManifestCollection]]:
        """One expiry sweep: builds, then tags pushed outside builds, then the untagged manifests left over."""
        builds = self.retention.expire(actor, dry_run=dry_run, project_id=project_id)
        tags, manifests = self.tags.expire(actor, dry_run=dry_run, project_id=project_id)
        manifests += self.tags.collect_untagged(actor, dry_run=dry_run, project_id=project_id)
        return builds, tags, manifests

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

    def scheduled_sweep(self, history_retention: timedelta) -> bool:
        """The background sweep (expiry, metering, audit pruning), run by one replica at a time: replicas
        sharing a database take the ``sweep`` lease, and one that finds it held skips this round (False).
        Correctness does not depend on it (evictions and accruals lock what they change); the lease saves the
        other replicas the duplicate work and keeps the log to one sweep per interval."""
        db = self.retention.db
        lease = Lease(db, SWEEP_LEASE, ttl=SWEEP_LEASE_TTL)
        if not lease.acquire():
            log.debug("retention sweep skipped: another replica is sweeping")
            return False
        try:
            self.expire()
            self.metering.refresh()
            audit.prune(db, utc_now() - history_retention)
        finally:
            lease.release()
        return True

    def collect_garbage(self, *, dry_run: bool = False) -> GcReport:
        report = self.gc.run(dry_run=dry_run)
        self.record_gc(report)
        if report.completed and not dry_run:
            self.metering.refresh()
        return report


LIFECYCLE_KEY = web.AppKey("cargohold_lifecycle", Lifecycle)


def lifecycle_of(app: web.Application) -> Lifecycle:
    return app[LIFECYCLE_KEY]


# --- request helpers --------------------------------------------------------------------------------------


async def _identity(request: web.Request) -> tuple[RegistryState, Lifecycle, Identity]:
    state, _control, identity = await authenticated(request)
    return state, lifecycle_of(request.app), identity


async def _build_project(state: RegistryState, identity: Identity, build_id: str, action: str) -> str:
    assert state.control is not None
    build = await state.run(state.control.get_build, build_id)
    if build is None or not identity.project_allows(build.project_id, "pull"):
        explained = await explain_missing_build(state, identity, build_id) if build is None else None
        raise api_error(404, "NOT_FOUND", explained or f"build {build_id} does not exist")
    restricted = identity.build_restriction(build.project_id)
    if restricted is not None and restricted != build_id:
        raise api_error(404, "NOT_FOUND", f"build {build_id} does not exist")
    check_project_access(identity, build.project_id, action)
    return build.project_id


# --- routes -----------------------------------------------------------------------------------------------


# --- tags pushed outside builds -----------------------------------------------------------------------------

MAX_TAGS_PAGE = 500


def _tag(state: RegistryState, record: TagRecord) -> schemas.Tag:
    reference = f"{registry_host(state)}/{record.repository}:{record.tag}"
    return schemas.Tag.from_json({**record.to_json(), "reference": reference})


def _visible_tags(identity: Identity, project_id: str) -> None:
    """A build-scoped pull credential sees its build only: none of the project's other tags."""
    restricted = identity.build_restriction(project_id)
    if restricted is not None:
        raise api_error(403, "DENIED", f"this pull credential is limited to build {restricted}")


async def list_tags(request: web.Request) -> web.Response:
    """``tags list``: the project's non-build tags by repository and tag, a page at a time."""
    state, lifecycle, identity = await _identity(request)
    project_id = request.match_info["project"]
    check_project_access(identity, project_id, "pull")
    _visible_tags(identity, project_id)
    assert state.control is not None
    if await state.run(state.control.get_project, project_id) is None:
        raise api_error(404, "NOT_FOUND", f"project {project_id} does not exist")
    try:
        limit = min(max(int(request.query.get("limit", "50")), 1), MAX_TAGS_PAGE)
    except ValueError:
        raise api_error(400, "INVALID", "limit must be a whole number") from None
    repository = request.query.get("repository") or None
    if repository is not None:
        _check_repository(project_id, repository)
    after = None
    if request.query.get("after"):
        cursor = request.query["after"]
        after_repository, _, after_tag = cursor.rpartition(":")
        if not after_repository or not after_tag:
            raise api_error(400, "INVALID", f'"after" must be <repository>:<tag> as in "next", not {cursor!r}')
        after = (after_repository, after_tag)
    records = await state.run(
        lambda: lifecycle.tags.list_tags(project_id, repository=repository, after=after, limit=limit)
    )
    page = schemas.TagPage(
        project_id=project_id,
        tags=[_tag(state, record) for record in records],
        next=f"{records[-1].repository}:{records[-1].tag}" if len(records) == limit else None,
    )
    return render.respond(page)


def _check_repository(project_id: str, repository: str) -> None:
    if not is_valid_name(repository):
        raise api_error(400, "INVALID", f"{repository!r} is not a valid repository name")
    if repository != project_id and not repository.startswith(f"{project_id}/"):
        raise api_error(
            400, "INVALID", f"repository {repository} is not in project {project_id} (it must be {project_id}[/…])"
        )


async def pin_tag(request: web.Request) -> web.Response:
    return await _change_tag(request, "pin")


async def unpin_tag(request: web.Request) -> web.Response:
    return await _change_tag(request, "unpin")


async def extend_tag(request: web.Request) -> web.Response:
    return await _change_tag(request, "extend")


async def _change_tag(request: web.Request, action: str) -> web.Response:
    """Body ``{"repository": "<project>/web", "tag": "1.0"}`` (``repository`` defaults to the project's own),
    plus ``by``/``until`` for extend."""
    state, lifecycle, identity = await _identity(request)
    project_id = request.match_info["project"]
    check_project_access(identity, project_id, "push")
    body = await read_json_body(request, MAX_BODY)
    repository, tag = body.get("repository", project_id), body.get("tag")
    if not isinstance(repository, str):
        raise api_error(400, "INVALID", '"repository" must be a repository name such as "<project>/web"')
    _check_repository(project_id, repository)
    if not isinstance(tag, str) or not is_valid_tag(tag):
        raise api_error(400, "INVALID", '"tag" must be a tag: up to 128 letters, digits, "_", ".", "-"')
    by, until = extension(body) if action == "extend" else (None, None)
    record = await change_tag(
        state.run, lifecycle.tags, state.metadata.db, action, repository, tag, identity.name, by=by, until=until
    )
    return render.respond(_tag(state, record))


async def project_history(request: web.Request) -> web.Response:
    state, _lifecycle, identity = await _identity(request)
    project_id = request.match_info["project"]
    check_project_access(identity, project_id, "pull")
    try:
        limit = page_size(request.query.get("limit"), name="limit", default=100, maximum=audit.MAX_HISTORY)
    except LimitError as exc:
        raise api_error(400, "INVALID", str(exc)) from None
    build = request.query.get("build")
    restricted = identity.build_restriction(project_id)
    if restricted is not None:
        # A credential limited to one build reads that build's story only.
        if build is not None and build != restricted:
            raise api_error(404, "NOT_FOUND", f"build {build} does not exist")
        build = restricted
    events = await state.run(lambda: audit.history(state.metadata.db, project_id, limit=limit, build_id=build))
    history = [schemas.HistoryEvent.from_json(event.to_json()) for event in events]
    return render.respond(schemas.History(project_id=project_id, events=history))


async def project_usage(request: web.Request) -> web.Response:
    state, lifecycle, identity = await _identity(request)
    project_id = request.match_info["project"]
    check_project_access(identity, project_id, "pull")
    restricted = identity.build_restriction(project_id)
    if restricted is not None:
        raise api_error(
            403,
            "DENIED",
            f"this credential is limited to build {restricted}; project usage needs a credential for all of "
            f"{project_id}",
        )
    month = request.query.get("month") or None
    usage = schemas.Usage.from_json((await projects.usage(state.run, lifecycle.metering, project_id, month)).to_json())
    if identity.is_admin and state.space is not None and state.space.guard.watching:
        usage = dataclasses.replace(usage, server_storage=await state.run(server_storage, state))
    return render.respond(usage)


async def run_expiry(request: web.Request) -> web.Response:
    state, lifecycle, identity = await _identity(request)
    body = await read_json_body(request, MAX_BODY)
    dry_run = flag(body.get("dry_run"), "dry_run")
    project_id = body.get("project")
    if project_id is not None and not isinstance(project_id, str):
        raise api_error(400, "INVALID", '"project" must be a project ID')
    if project_id is None:
        if not identity.is_admin:
            raise api_error(403, "DENIED", 'only an admin token may sweep every project; pass {"project": "<id>"}')
    else:
        check_project_access(identity, str(project_id), "push")
    await room_to_clean_up(state)
    evicted, tags, manifests = await state.run(
        lambda: lifecycle.expire(identity.name, dry_run=dry_run, project_id=project_id)
    )
    if project_id is not None:
        evicted += await state.run(lambda: lifecycle.retention.enforce_cap(str(project_id), dry_run=dry_run))
    changed = {e.project_id for e in evicted} | {e.project_id for e in tags} | {c.project_id for c in manifests}
    if not dry_run and changed:
        await state.run(lifecycle.metering.refresh, sorted(changed))
    report = schemas.ExpiryReport(
        dry_run=dry_run,
        evicted=[schemas.Eviction.from_json(e.to_json()) for e in evicted],
        tags=[schemas.TagEviction.from_json(e.to_json()) for e in tags],
        manifests=[schemas.ManifestCollection.from_json(c.to_json()) for c in manifests],
    )
    return render.respond(report)


async def run_gc(request: web.Request) -> web.Response:
    state, lifecycle, identity = await _identity(request)
    if not identity.is_admin:
        raise api_error(403, "DENIED", "only an admin token may run garbage collection")
    dry_run = flag((await read_json_body(request, MAX_BODY)).get("dry_run"), "dry_run")
    await room_to_clean_up(state)
    report = await state.run(lambda: lifecycle.collect_garbage(dry_run=dry_run))
    if report.skipped:
        raise api_error(409, "CONFLICT", f"{report.skipped}; try again when it finishes")
    return render.respond(schemas.GcReport.from_json(report.to_json()))


async def metrics_endpoint(request: web.Request) -> web.Response:
    state = state_of(request)
    if state.auth is not None:
        identity = await identity_or_challenge(
            state.auth, request, "metrics need an admin token (Authorization: Bearer <token>)"
        )
        if not identity.principal.may_read_metrics:
            raise api_error(403, "DENIED", "only an admin token (or one with the metrics permission) may read metrics")
    body = await state.run(lifecycle_of(request.app).metrics.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


# --- background schedule ----------------------------------------------------------------------------------


async def _schedule(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE_KEY]
    if not state.background_jobs:  # another worker runs the schedule (cargohold.server.workers)
        yield
        return
    lifecycle = lifecycle_of(app)
    settings = state.settings

    def sweep() -> None:
        lifecycle.scheduled_sweep(settings.history_retention)

    async def every(interval: timedelta, job: Callable[[], object], what: str) -> None:
        seconds = max(0.05, interval.total_seconds())
        while True:
            await asyncio.sleep(seconds)
            try:
                await state.run(job)
            except Exception as exc:
                if (fault := classify(exc)) is None:
                    log.exception("%s failed; will retry in %.0f s", what, seconds)
                else:  # a full or failing disk is not a bug: one line, no traceback
                    if state.space is not None:
                        state.space.on_fault(fault)
                    log.warning("%s failed: %s; will retry in %.0f s", what, fault.describe(), seconds)

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


def install(app: web.Application) -> Lifecycle:
    """Wire lifecycle into an app built by ``create_app`` (call after the control API's routes are added)."""
    from cargohold.server.control import builds, storage

    state = app[STATE_KEY]
    db = state.metadata.db
    settings = state.settings
    metering = Metering(
        db, price_per_gb_month=settings.storage_price_per_gb_month, free_gb_months=settings.free_gb_months
    )
    metrics = Metrics(metering.stored_bytes)
    lifecycle = Lifecycle(
        retention=Retention(db),
        tags=TagRetention(db),
        gc=GarbageCollector(db, state.blobs, grace=settings.gc_grace),
        metering=metering,
        metrics=metrics,
    )
    lifecycle.retention.listeners.append(lifecycle.on_evicted)
    lifecycle.tags.listeners.append(lifecycle.on_tags_removed)
    app[LIFECYCLE_KEY] = lifecycle
    state.manifests.with_lifecycle(lifecycle.retention, lifecycle.metering)
    if state.control is not None:
        state.builds.with_lifecycle(lifecycle.retention, lifecycle.after_save, lifecycle.metering.refresh)
    app.middlewares.insert(0, metrics.middleware())
    app.on_response_prepare.append(metrics.on_response_prepare)
    router = app.router
    router.add_post("/api/v1/builds/{build}/pin", builds.pin_build)
    router.add_post("/api/v1/builds/{build}/unpin", builds.unpin_build)
    router.add_post("/api/v1/builds/{build}/extend", builds.extend_build)
    if not _has_route(app, "DELETE", "/api/v1/builds/{build}"):
        router.add_delete("/api/v1/builds/{build}", builds.delete_build)
    router.add_get("/api/v1/projects/{project}/tags", list_tags)
    router.add_post("/api/v1/projects/{project}/tags/pin", pin_tag)
    router.add_post("/api/v1/projects/{project}/tags/unpin", unpin_tag)
    router.add_post("/api/v1/projects/{project}/tags/extend", extend_tag)
    router.add_get("/api/v1/projects/{project}/history", project_history)
    router.add_get("/api/v1/projects/{project}/usage", project_usage)
    router.add_post("/api/v1/expire", run_expiry)
    router.add_post("/api/v1/gc", run_gc)
    router.add_get("/api/v1/storage", storage.storage_status)
    router.add_get("/metrics", metrics_endpoint)
    app.cleanup_ctx.append(_schedule)
    return lifecycle


def _has_route(app: web.Application, method: str, path: str) -> bool:
    return any(
        route.method == method and route.resource is not None and route.resource.canonical == path
        for route in app.router.routes()
    )
