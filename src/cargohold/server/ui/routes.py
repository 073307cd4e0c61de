"""The dashboard's routes under ``/ui/``: parse the request, check the session (and its CSRF token on every
POST), call the same access checks and domain services as the control API, render a page.

Access is decided exactly as the control API decides it (``project_for``/``build_for``, ``Identity``); its
refusals (``RegistryError``, ``DomainError``) are rendered as an HTML page with the same status and message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from cargohold.domain.builds import BUILD_STATUSES, MAX_ID_SEARCH
from cargohold.domain.errors import DomainError
from cargohold.domain.images import describe_image
from cargohold.domain.projects import usage as project_usage
from cargohold.edge.proxies import client_address
from cargohold.lifecycle import audit
from cargohold.lifecycle.metering import month_of, month_start
from cargohold.metadata.control import ControlStore, ProjectRecord
from cargohold.metadata.sessions import SessionStore
from cargohold.oci.reference import is_valid_tag
from cargohold.server.auth.policy import AuthError, Identity
from cargohold.server.auth.ratelimit import retry_after_header
from cargohold.server.control import render
from cargohold.server.control.common import build_for, project_for, registry_host, room_to_clean_up
from cargohold.server.control.lifecycle import lifecycle_of
from cargohold.server.control.projects import PROJECT_NAME_RE
from cargohold.server.control.tokens import create_token_for, revoke_token_for
from cargohold.server.control.trust import add_trust_for, remove_trust_for
from cargohold.server.http.bodies import BodyStalled, BodyTooLarge, read_body
from cargohold.server.http.errors import RegistryError, http_error
from cargohold.server.http.query_limits import LimitError, page_size
from cargohold.server.http.request_keys import USER_KEY
from cargohold.server.state import STATE_KEY, RegistryState, state_of
from cargohold.server.ui import sessions
from cargohold.server.ui.charts import bar_chart
from cargohold.server.ui.render import page, redirect
from cargohold.server.ui.sessions import SESSIONS_KEY, SignedIn

FORM_KEY = web.RequestKey("cargohold.ui_form", dict[str, str])
"""The checked form of a POST (CSRF verified), for the handler behind :func:`signed_in_page`."""
log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MAX_FORM = 16 * 1024
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
EXTEND_CHOICES = {"1d": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}
HISTORY_MONTHS = 12

Handler = Callable[[web.Request, RegistryState, SignedIn], Awaitable[web.StreamResponse]]


# --- plumbing ----------------------------------------------------------------------------------------------


def _store(request: web.Request) -> SessionStore:
    return request.app[SESSIONS_KEY]


async def _form(request: web.Request) -> dict[str, str]:
    """A small urlencoded form, read through the one body reader (size limit, stall deadline)."""
    try:
        raw = await read_body(request, MAX_FORM)
    except (BodyTooLarge, BodyStalled) as exc:
        raise RegistryError("INVALID", f"the form could not be read: {exc}", status=400) from None
    try:
        return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=50))
    except (UnicodeDecodeError, ValueError):
        raise RegistryError("INVALID", "the form is not valid UTF-8 url-encoded data", status=400) from None


def _error_page(signed_in: SignedIn | None, status: int, message: str) -> web.Response:
    return page("error.html", status=status, me=_me(signed_in), csrf=_csrf(signed_in), message=message, code=status)


def _me(signed_in: SignedIn | None) -> dict[str, Any] | None:
    if signed_in is None:
        return None
    principal = signed_in.identity.principal
    return {"kind": principal.kind.value, "name": principal.name, "is_admin": signed_in.identity.is_admin}


def _csrf(signed_in: SignedIn | None) -> str:
    return signed_in.csrf_token if signed_in is not None else ""


def signed_in_page(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Require a live session (else go to sign-in); on POST, the session's CSRF token; render refusals."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        state = state_of(request)
        signed_in = await sessions.current(request, state, _store(request))
        if signed_in is None:
            if request.method == "POST":
                return _error_page(None, 403, "your session has ended; sign in again and repeat what you did")
            return redirect("/ui/sign-in?" + urlencode({"next": request.path_qs}))
        request[USER_KEY] = signed_in.identity.name  # the access log's user=
        try:
            if request.method == "POST":
                form = await _form(request)
                if not signed_in.csrf_ok(form.get("csrf")):
                    log.info(
                        "dashboard: refused a %s to %s without the session's CSRF token", request.method, request.path
                    )
                    return _error_page(signed_in, 403, "this form is stale or did not come from this dashboard")
                request[FORM_KEY] = form
            return await handler(request, state, signed_in)
        except RegistryError as exc:
            return _error_page(signed_in, exc.status, exc.message)
        except DomainError as exc:
            error = http_error(exc)
            return _error_page(signed_in, error.status, error.message)

    return wrapper


def _context(signed_in: SignedIn, **values: Any) -> dict[str, Any]:
    return {"me": _me(signed_in), "csrf": signed_in.csrf_token, **values}


# --- sign in and out ---------------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only a path inside the dashboard (never another site: an open redirect)."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/projects"


async def root(request: web.Request) -> web.Response:
    return redirect("/ui/", status=302)


async def home(request: web.Request) -> web.Response:
    return redirect("/ui/projects", status=302)


async def sign_in_form(request: web.Request) -> web.Response:
    state = state_of(request)
    if await sessions.current(request, state, _store(request)) is not None:
        return redirect(_safe_next(request.query.get("next")))
    return page("sign_in.html", me=None, csrf="", next=_safe_next(request.query.get("next")), message=None)


async def sign_in(request: web.Request) -> web.Response:
    """Exchange a token for a session. Failures count against the same per-address limit as the API's."""
    state = state_of(request)
    if state.auth is None:
        return _error_page(None, 404, "this server runs without credentials; the dashboard needs them")
    if request.headers.get("Sec-Fetch-Site") not in (None, "same-origin", "none"):
        return _error_page(None, 403, "sign in from the dashboard's own page")
    limiter, address = state.auth.limiter, client_address(request)
    wait = limiter.retry_after(address)
    if wait is not None:
        response = page(
            "sign_in.html",
            status=429,
            me=None,
            csrf="",
            next="/ui/projects",
            message=f"too many failed sign-ins from {address}; try again in {wait:.0f} s",
        )
        response.headers["Retry-After"] = retry_after_header(wait)
        return response
    try:
        form = await _form(request)
    except RegistryError as exc:
        return _error_page(None, exc.status, exc.message)
    token = form.get("token", "").strip()
    target = _safe_next(form.get("next"))
    try:
        identity = await state.auth.authenticator.from_secret(token) if token else None
    except AuthError as exc:
        limiter.record_failure(address)
        log.info("dashboard sign-in failed from %s: %s", address, exc)
        return page("sign_in.html", status=401, me=None, csrf="", next=target, message=f"Not signed in: {exc}.")
    if identity is None:
        return page("sign_in.html", status=400, me=None, csrf="", next=target, message="Paste a token to sign in.")
    session_id, record = await sessions.start(state, _store(request), identity)
    log.info("dashboard: %s signed in from %s", identity.name, address)
    response = redirect(target)
    sessions.set_cookie(request, response, session_id, record)
    return response


@signed_in_page
async def sign_out(request: web.Request, state: RegistryState, signed_in: SignedIn) -> web.StreamResponse:
    await sessions.end(request, state, _store(request))
    response = redirect("/ui/sign-in")
    sessions.clear_cookie(request, response)
    return response


# --- projects ----------------------------------------------------------------------------------------------


@signed_in_page
async def projects(request: web.Request, state: RegistryState, signed_in: SignedIn) -> web.StreamResponse:
    identity = signed_in.identity
    control = _control(state)
    records = await state.run(control.list_projects, identity.projects())
    records = [p for p in records if identity.project_allows(p.id, "pull")]
    ids = [p.id for p in records]
    counts = await state.run(control.count_builds, ids)
    lifecycle = lifecycle_of(request.app)
    stored = await state.run(lifecycle.metering.stored_bytes)
    rows = []
    for project in records:
        restricted = identity.build_restriction(project.id)
        row: dict[str, Any] = {"project": project, "restricted": restricted}
        if restricted is None:  # a one-build credential learns nothing about the rest of the project
            usage = await project_usage(state.run, lifecycle.metering, project.id, None)
            trust = await state.run(control.list_trust, project.id) if identity.is_admin else None  # as the API
            row.update(builds=counts.get(project.id, 0), stored=stored.get(project.id, 0), usage=usage, trust=trust)
        rows.append(row)
    return page("projects.html", **_context(signed_in, rows=rows))


@signed_in_page
async def create_project(request: web.Request, state: RegistryState, signed_in: SignedIn) -> web.StreamResponse:
    if not signed_in.identity.is_admin:
        raise RegistryError("DENIED", "only an admin token may create projects", status=403)
    name = request[FORM_KEY].get("name", "").strip()
    if not PROJECT_NAME_RE.match(name):
        raise RegistryError("INVALID", "a project name is 1-200 letters, digits, spaces and . @ / : + - _", status=400)
    project = await state.run(lambda: _control(state).create_project(name))
    log.info("%s created project %s (%s) in the dashboard", signed_in.identity.name, project.id, project.name)
    return redirect(f"/ui/projects/{project.id}/builds")


@signed_in_page
async def add_trust(request: web.Request, state: RegistryState, signed_in: SignedIn) -> web.StreamResponse:
    form = request[FORM_KEY]
    body: dict[str, Any] = {"repository": form.get("repository", "").strip()}
    for field in ("workflow", "environment", "ref_pattern"):
        if form.get(field, "").strip():
            body[field] = form[field].strip()
    if form.get("pull_only") == "1":
        body["pull_only"] = True
    await add_trust_for(state, _control(state), signed_in.identity, form.get("project", ""), body)
    return redirect("/ui/projects")


@signed_in_page
async def remove_trust(request: web.Request, state: RegistryState, signed_in: SignedIn) -> web.StreamResponse:
    project_id, trust_id = request.match_info["project"], request.match_info["trust"]
    await remove_trust_for(state, _control(state), signed_in.identity, project_id, trust_id)
    return redirect("/ui/projects")


# --- builds ------------------------------------------------------------------------------------------------


@signed_in_page
async def builds(request: web.Request, state: RegistryState, signed_in: SignedIn) -> web.StreamResponse:
    identity = signed_in.identity
    project = await project_for(state, _control(state), identity, request.match_info["project"], "pull")
    query = request.query
    status = query.get("status") or None
    if status is not None and status not in BUILD_STATUSES:
        raise RegistryError("INVALID", f"status must be one of {', '.join(BUILD_STATUSES)}", status=400)
    tag = query.get("tag") or None
    if tag is not None and not is_valid_tag(tag):
        raise RegistryError("INVALID", "a save-tag is up to 128 letters, digits, '_', '.', '-'", status=400)
    pinned = {"yes": True, "no": False}.get(query.get("pinned", ""))
    text = (query.get("q") or "").strip()[:MAX_ID_SEARCH] or None
    before = query.get("before") or None
    try:
        limit = page_size(query.get("limit"), name="limit", default=PAGE_SIZE, maximum=MAX_PAGE_SIZE)
    except LimitError as exc:
        raise RegistryError("INVALID", str(exc), status=400) from None
    restricted = identity.build_restriction(project.id)
    if restricted is not None:
        own = await state.builds.get(restricted)
        page_builds = [own] if own is not None and own.project_id == project.id and before is None else []
    else:
        page_builds = await state.builds.list_page(
            project.id, limit=limit, before=before, tag=tag, status=status, pinned=pinned, id_contains=text
        )
    filters = {"status": status or "", "tag": tag or "", "pinned": query.get("pinned", ""), "q": text or ""}
    if limit != PAGE_SIZE:
        filters["limit"] = str(limit)
    next_url = None
    if len(page_builds) == limit:
        next_url = "?" + urlencode({**{k: v for k, v in filters.items() if v}, "before": page_builds[-1].id})
    return page(
        "builds.html",
        **_context(
            signed_in,
            project=project,
            builds=page_builds,
            filters=filters,
            statuses=BUILD_STATUSES,
            next_url=next_url,
            first_url="?" + urlencode({k: v for k, v in filters.items() if v}) if before else None,
            may_push=identity.project_allows(project.id, "push") and restricted is None,
            may_delete=identity.project_allows(project.id, "delete") and restricted is None,
            now=datetime.now(UTC),
            extend_choices=EXTEND_CHOICES,
        ),
    )


@signed_in_page
async def build_detail(request: web.Request, state: RegistryState, signed_in: SignedIn) -> web.StreamResponse:
    identity = signed_in.identity
    build = await build_for(state, _control(state), identity, request.match_info["build"], "pull")
    image = None
    if build.status == "saved" and build.manifest_digest:
        image = await state.run(describe_image, state.metadata, state.blobs, build.project_id, build.manifest_digest)
    events = await state.run(lambda: audit.history(state.metadata.db, build.project_id, limit=100, build_id=build.id))
    host = registry_host(state)
    restricted = identity.build_restriction(build.project_id)
    return page(
        "build.html",
        **_context(
            signed_in,
            build=build,
            image=image,
            events=[(event, audit.describe(event)) for event in events],
            reference=f"{host}/{build.project_id}:{build.id}",
            registry=host,
            public_url=state.settings.resolved_public_url(),
            may_push=identity.project_allows(build.project_id, "push") and restricted is None,
            may_delete=identity.project_allows(build.project_id, "delete") and restricted is None,
            now=datetime.now(UTC),
            extend_choices=EXTEND_CHOICES,
        ),
    )


def _back_to_build(request: web.Request, build_id: str) -> web.Response:
    target = request[FORM_KEY].get("back", "")
    return redirect(target if target.startswith("/ui/") and not target.startswith("//") else f"/ui/builds/{build_id}")


@signed_in_page
async def pin(request: web.Request, state: RegistryState, signed_in: SignedIn) -> web.StreamResponse:
    build = await build_for(state, _control(state), signed_in.identity, request.match_info["build"], "push")
    await state.builds.pin(build.id, signed_in.identity.name)
    return _back_to_build(request, build.id)


@signed_in_page
async def unpin(request: web.Request, state: RegistryState, signed_in: SignedIn) -> web.StreamResponse:
    build = await build_for(state, _control(state), signed_in.identity, request.match_info["build"], "push")
    await state.builds.unpin(build.id, signed_in.identity.name)
    return _back_to_build(request, build.id)


@signed_in_page
async def extend(request: web.Request, state: RegistryState, signed_in: SignedIn) -> web.StreamResponse:
    build = await build_for(state, _control(state), signed_in.identity, request.match_info["build"], "push")
    by = EXTEND_CHOICES.get(request[FORM_KEY].get("by", ""))
    if by is None:
        raise RegistryError("INVALID", f"extend by one of {', '.join(EXTEND_CHOICES)}", status=400)
    await state.builds.extend(build.id, signed_in.identity.name, by=by, until=None)
    return _back_to_build(request, build.id)


@signed_in_page
async def delete(request: web.Request, state: RegistryState, signed_in: SignedIn) -> web.StreamResponse:
    build = await build_for(state, _control(state), signed_in.identity, request.match_info["build"], "delete")
    if request[FORM_KEY].get("confirm") != build.id:
        raise RegistryError("INVALID", f"type the build ID {build.id} to confirm deleting it", status=400)
    await room_to_clean_up(state)
    await state.builds.evict(build.id, signed_in.identity.name, dry_run=False)
    log.info("%s deleted build %s in the dashboard", signed_in.identity.name, build.id)
    return redirect(f"/ui/projects/{build.project_id}/builds")


# --- tags, usage, audit ------------------------------------------------------------------------------------


async def _whole_project(state: RegistryState, identity: Identity, project_id: str, what: str) -> ProjectRecord:
    project = await project_for(state, _control(state), identity, project_id, "pull")
    restricted = identity.build_restriction(project.id)
    if restricted is not None:
        raise RegistryError(
            "DENIED", f"this credential is limited to build {restricted}; {what} needs more", status=403
        )
    return project


@signed_in_page
async def tags(request: web.Request, state: RegistryState, signed_in: SignedIn) -> web.StreamResponse:
    project = await _whole_project(state, signed_in.identity, request.match_info["project"], "the tag list")
    lifecycle = lifecycle_of(request.app)
    after_text = request.query.get("after", "")
    repository, _, tag = after_text.rpartition(":")
    after = (repository, tag) if repository and tag else None
    records = await state.run(lambda: lifecycle.tags.list_tags(project.id, after=after, limit=PAGE_SIZE))
    next_url = None
    if len(records) == PAGE_SIZE:
        next_url = "?" + urlencode({"after": f"{records[-1].repository}:{records[-1].tag}"})
    mine = await state.run(_project_repositories, state, project.id)
    return page(
        "tags.html",
        **_context(
            signed_in, project=project, tags=records, repositories=mine, next_url=next_url, now=datetime.now(UTC)
        ),
    )


MAX_REPOSITORIES = 200


def _project_repositories(state: RegistryState, project_id: str) -> list[str]:
    """The project's repositories (``<project>`` and ``<project>/…``) in name order, from one index range:
    ``/`` sorts right after ``.``, so every ``<project>/…`` follows the key ``<project>.`` (blocking)."""
    nested = state.metadata.list_repositories(last=f"{project_id}.", limit=MAX_REPOSITORIES)
    mine = [name for name in nested if name.startswith(f"{project_id}/")]
    return ([project_id] if state.metadata.repository_exists(project_id) else []) + mine


@signed_in_page
async def usage(request: web.Request, state: RegistryState, signed_in: SignedIn) -> web.StreamResponse:
    project = await _whole_project(state, signed_in.identity, request.match_info["project"], "usage")
    metering = lifecycle_of(request.app).metering
    month = month_of(datetime.now(UTC))
    months = [month]
    start = month_start(month)
    for _ in range(HISTORY_MONTHS - 1):
        start = (start - timedelta(days=1)).replace(day=1)
        months.append(month_of(start))
    months.reverse()
    history = [await project_usage(state.run, metering, project.id, m) for m in months]
    current = history[-1]
    average_bytes = [u.byte_hours / u.hours_in_month for u in history]
    stored_chart = bar_chart(
        "Average stored bytes per month",
        [(u.month, value) for u, value in zip(history, average_bytes, strict=True)],
        [f"{value / 1e9:.2f} GB" for value in average_bytes],
    )
    gbm_chart = bar_chart(
        "GB-months per month",
        [(u.month, u.gb_months) for u in history],
        [f"{u.gb_months:.3f}" for u in history],
    )
    top_builds = await state.run(_control(state).largest_builds, project.id, 10)
    return page(
        "usage.html",
        **_context(
            signed_in,
            project=project,
            usage=current,
            charts=[stored_chart, gbm_chart],
            top_builds=top_builds,
            history=history,
        ),
    )


@signed_in_page
async def audit_log(request: web.Request, state: RegistryState, signed_in: SignedIn) -> web.StreamResponse:
    identity = signed_in.identity
    project = await project_for(state, _control(state), identity, request.match_info["project"], "pull")
    build_id = request.query.get("build") or None
    action = request.query.get("action") or None
    actor = (request.query.get("actor") or "").strip() or None
    restricted = identity.build_restriction(project.id)
    if restricted is not None:
        build_id = restricted  # a one-build credential reads that build's story only
    events = await state.run(lambda: audit.history(state.metadata.db, project.id, limit=500, build_id=build_id))
    actions = sorted({event.action for event in events})
    shown = [e for e in events if (action is None or e.action == action) and (actor is None or actor in e.actor)]
    return page(
        "audit.html",
        **_context(
            signed_in,
            project=project,
            events=[(event, audit.describe(event)) for event in shown[:200]],
            actions=actions,
            filters={"build": build_id or "", "action": action or "", "actor": actor or ""},
        ),
    )


# --- tokens ------------------------------------------------------------------------------------------------


@signed_in_page
async def tokens(request: web.Request, state: RegistryState, signed_in: SignedIn) -> web.StreamResponse:
    return await _tokens_page(request, state, signed_in, created=None)


async def _tokens_page(
    request: web.Request, state: RegistryState, signed_in: SignedIn, created: dict[str, Any] | None
) -> web.Response:
    identity = signed_in.identity
    control = _control(state)
    project_id = request.query.get("project") or None
    everything = request.query.get("all") == "1"
    listable = identity.is_admin or (project_id is not None and identity.project_allows(project_id, "push"))
    rows = []
    if listable:
        records = await state.run(lambda: control.list_credentials(project_id, include_inactive=everything))
        rows = _lineage_order([render.token(row).to_json() for row in records])
    pushable = sorted(
        p
        for p in (identity.projects() or [])
        if identity.project_allows(p, "push") and not identity.build_restriction(p)
    )
    return page(
        "tokens.html",
        status=201 if created else 200,
        **_context(
            signed_in,
            tokens=rows,
            listable=listable,
            created=created,
            project_id=project_id or "",
            pushable=pushable,
            everything=everything,
        ),
    )


def _lineage_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parents before their children, children indented by depth (the lineage as a tree)."""
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    ids = {row["id"] for row in rows}
    for row in rows:
        parent = row["parent_id"] if row["parent_id"] in ids else None
        by_parent.setdefault(parent, []).append(row)
    ordered: list[dict[str, Any]] = []

    def walk(parent: str | None, depth: int) -> None:
        for row in by_parent.get(parent, []):
            ordered.append({**row, "depth": min(depth, 6)})
            walk(row["id"], depth + 1)

    walk(None, 0)
    return ordered


@signed_in_page
async def create_token(request: web.Request, state: RegistryState, signed_in: SignedIn) -> web.StreamResponse:
    form = request[FORM_KEY]
    body: dict[str, Any] = {"kind": form.get("kind") or "pull", "name": form.get("name") or None}
    if form.get("project_id"):
        body["project_id"] = form["project_id"]
    if form.get("build_id"):
        body["build_id"] = form["build_id"]
    if form.get("expires_in_hours"):
        try:
            body["expires_in"] = int(float(form["expires_in_hours"]) * 3600)
        except ValueError:
            raise RegistryError("INVALID", "expires in must be a number of hours", status=400) from None
    created = (await create_token_for(state, _control(state), signed_in.identity, body)).to_json()
    # Shown once, in this response only (never in a URL, never stored): the page is not cached (no-store).
    return await _tokens_page(request, state, signed_in, created=created)


@signed_in_page
async def revoke_token(request: web.Request, state: RegistryState, signed_in: SignedIn) -> web.StreamResponse:
    token_id = request.match_info["token"]
    await revoke_token_for(state, _control(state), signed_in.identity, token_id, force=False)
    await state.run(request.app[SESSIONS_KEY].end_for_credential, token_id)
    return redirect("/ui/tokens")


async def unknown_page(request: web.Request) -> web.Response:
    """Any other path under /ui/: an HTML 404 (not the API's JSON), with the way back."""
    signed_in = await sessions.current(request, state_of(request), _store(request))
    return _error_page(signed_in, 404, "there is no such page in the dashboard")


# --- static files and wiring -------------------------------------------------------------------------------


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    return web.FileResponse(
        STATIC_DIR / name,
        headers={
            "Content-Type": STATIC_FILES[name],
            "Cache-Control": "public, max-age=86400",
            "X-Content-Type-Options": "nosniff",
        },
    )


STATIC_FILES = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8"}


def _control(state: RegistryState) -> ControlStore:
    if state.control is None:
        raise RegistryError("NOT_FOUND", "this server runs without the control plane", status=404)
    return state.control


def install(app: web.Application) -> None:
    """Add the dashboard's routes (call from ``create_app`` when the server has credentials)."""
    app[SESSIONS_KEY] = SessionStore(app[STATE_KEY].metadata.db)
    app.cleanup_ctx.append(sessions.prune_periodically)
    router = app.router
    router.add_get("/", root)
    router.add_get("/ui", home)
    router.add_get("/ui/", home)
    router.add_get("/ui/static/{name}", static)
    router.add_get("/ui/sign-in", sign_in_form)
    router.add_post("/ui/sign-in", sign_in)
    router.add_post("/ui/sign-out", sign_out)
    router.add_get("/ui/projects", projects)
    router.add_post("/ui/projects", create_project)
    router.add_post("/ui/trust", add_trust)
    router.add_post("/ui/projects/{project}/trust/{trust}/delete", remove_trust)
    router.add_get("/ui/projects/{project}/builds", builds)
    router.add_get("/ui/projects/{project}/tags", tags)
    router.add_get("/ui/projects/{project}/usage", usage)
    router.add_get("/ui/projects/{project}/audit", audit_log)
    router.add_get("/ui/builds/{build}", build_detail)
    router.add_post("/ui/builds/{build}/pin", pin)
    router.add_post("/ui/builds/{build}/unpin", unpin)
    router.add_post("/ui/builds/{build}/extend", extend)
    router.add_post("/ui/builds/{build}/delete", delete)
    router.add_get("/ui/tokens", tokens)
    router.add_post("/ui/tokens", create_token)
    router.add_post("/ui/tokens/{token}/revoke", revoke_token)
    router.add_get("/ui/{tail:.*}", unknown_page)  # last: only what no route above matched
