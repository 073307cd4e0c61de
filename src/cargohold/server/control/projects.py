"""Projects: ``GET/POST /api/v1/projects``, ``GET/PATCH /api/v1/projects/{project}``."""

from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web

from cargohold import schemas
from cargohold.domain.projects import update_project as update
from cargohold.server.control import render
from cargohold.server.control.common import (
    authenticated,
    duration,
    invalid,
    project_for,
    read_json_body,
    registry_host,
    require_admin,
)

log = logging.getLogger(__name__)

PROJECT_NAME_RE = re.compile(r"^[\w .@/:+-]{1,200}$")


async def list_projects(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    projects = await state.run(control.list_projects, identity.projects())
    return render.respond(schemas.ProjectList(projects=[render.project(project) for project in projects]))


def _project_settings(body: dict[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if "name" in body:
        name = body["name"]
        if not isinstance(name, str) or not PROJECT_NAME_RE.match(name):
            raise invalid("name must be 1-200 characters of letters, digits, spaces and . @ / : + - _")
        settings["name"] = name
    if "retention_seconds" in body:
        settings["retention"] = duration(body["retention_seconds"], "retention_seconds", allow_none=True)
    if "max_builds" in body:
        cap = body["max_builds"]
        if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= 1_000_000:
            raise invalid("max_builds must be an integer between 1 and 1000000")
        settings["max_builds"] = cap
    return settings


async def create_project(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    require_admin(identity)
    settings = _project_settings(await read_json_body(request))
    if "name" not in settings:
        raise invalid('a project needs a name: {"name": "my-app"}')
    project = await state.run(lambda: control.create_project(**settings))
    log.info("%s created project %s (%s)", identity.name, project.id, project.name)
    return render.respond(render.project(project, registry_host(state)), status=201)


async def show_project(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    project = await project_for(state, control, identity, request.match_info["project"], "pull")
    return render.respond(render.project(project, registry_host(state)))


async def update_project(request: web.Request) -> web.Response:
    state, control, identity = await authenticated(request)
    require_admin(identity)
    project_id = request.match_info["project"]
    settings = _project_settings(await read_json_body(request))
    project = await update(state.run, control, project_id, **settings)
    return render.respond(render.project(project))
