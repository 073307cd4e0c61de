"""The control API's route table under ``/api/v1``: projects, builds, save-tags, tokens, trust relationships,
pull-info (one module per resource: :mod:`.projects`, :mod:`.builds`, :mod:`.tokens`, :mod:`.trust`).

JSON in, JSON out; errors use the same ``{"errors": [{code, message}]}`` shape as the registry so clients
need one error parser. Every route authenticates with the same credentials as the registry
(``Authorization: Bearer <token>`` or Basic ``x-token:<token>``) and checks scope itself:

* admins manage projects, trust relationships and tokens of any kind;
* a credential with push on a project creates and finishes that project's builds and mints pull tokens;
* a credential with pull on a project reads its builds and asks for pull-info (a pull token of its own
  is never widened: pull-info for a build-scoped caller stays scoped to that build).

Every credential minted here (tokens, build tokens, pull-info tokens) is a child of the caller's: it holds
nothing the caller lacks, expires no later than the caller's, and is revoked with it (see
:func:`cargohold.server.auth.credentials.new_credential` and ``docs/api.md``, "Token lineage").
"""

from __future__ import annotations

from aiohttp import web

from cargohold.server.control import builds, projects, tokens, trust


def add_routes(app: web.Application) -> None:
    """The control API's routes by resource (lifecycle, storage and blob-copy routes are wired by their modules)."""
    router = app.router
    router.add_get("/api/v1/whoami", tokens.whoami)
    router.add_get("/api/v1/projects", projects.list_projects)
    router.add_post("/api/v1/projects", projects.create_project)
    router.add_get("/api/v1/projects/{project}", projects.show_project)
    router.add_patch("/api/v1/projects/{project}", projects.update_project)
    router.add_post("/api/v1/projects/{project}/builds", builds.create_build)
    router.add_get("/api/v1/projects/{project}/builds", builds.list_builds)
    router.add_post("/api/v1/projects/{project}/trust", trust.add_trust)
    router.add_get("/api/v1/projects/{project}/trust", trust.list_trust)
    router.add_delete("/api/v1/projects/{project}/trust/{trust}", trust.remove_trust)
    router.add_get("/api/v1/builds/{build}", builds.show_build)
    router.add_post("/api/v1/builds/{build}/save", builds.save_build)
    router.add_post("/api/v1/builds/{build}/fail", builds.fail_build)
    router.add_post("/api/v1/builds/{build}/tags", builds.add_tags)
    router.add_delete("/api/v1/builds/{build}/tags/{tag}", builds.remove_tag)
    router.add_get("/api/v1/pull-info", builds.pull_info)
    router.add_post("/api/v1/tokens", tokens.create_token)
    router.add_get("/api/v1/tokens", tokens.list_tokens)
    router.add_delete("/api/v1/tokens/{token}", tokens.revoke_token)
