"""Admin-side commands: projects, trust relationships, tokens, pull tokens, and the stored login.

Everything here is a thin layer over :class:`cargohold.client.control.ControlClient`: the server decides
who may do what, so the CLI never second-guesses permissions; it only turns options into request bodies,
shows the answer as a table (or ``--json`` for scripts) and turns failures into one sentence through
:func:`cargohold.cli.context.guarded`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cargohold.cli.context import (
    CliError,
    JsonOption,
    ProjectOption,
    RegistryOption,
    TokenOption,
    connect,
    emit,
    guarded,
    read_secret_stdin,
    require_project,
    stderr,
    stdout,
)
from cargohold.cli.durations import parse_duration
from cargohold.cli.main import app
from cargohold.client.control import ControlClient, ControlError
from cargohold.client.settings import clear_login, config_path, normalize_registry_url, save_login

projects_app = typer.Typer(help="Create, list, show and update projects (admin).", no_args_is_help=True)
trust_app = typer.Typer(
    help="Trust relationships: which GitHub workflows may exchange OIDC tokens for a project.", no_args_is_help=True
)
tokens_app = typer.Typer(help="Create, list and revoke Cargohold tokens.", no_args_is_help=True)
app.add_typer(projects_app, name="projects")
app.add_typer(trust_app, name="trust")
app.add_typer(tokens_app, name="tokens")

PROJECT_COLUMNS = [("id", "ID"), ("name", "Name"), ("retention", "Retention"), ("max_builds", "Max builds"),
                   ("created_at", "Created")]
TRUST_COLUMNS = [("id", "ID"), ("repository", "Repository"), ("conditions", "Conditions"), ("access", "Access")]
TOKEN_COLUMNS = [("id", "ID"), ("kind", "Kind"), ("name", "Name"), ("scope", "Scope"), ("expires_at", "Expires"),
                 ("status", "Status")]


# --- small helpers ----------------------------------------------------------------------------------------


def _seconds(text: str, option: str) -> int:
    """A ``--expires``/``--retention`` value in whole seconds; the error names the option so it is fixable."""
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise CliError(f"{option}: {exc}") from None
    seconds = int(value.total_seconds())
    if seconds <= 0:
        raise CliError(f"{option} must be longer than zero seconds (e.g. 1h, 7d)")
    return seconds


def _retention(text: str) -> int | None:
    """``unlimited`` (or ``never``/``none``) keeps builds until the build cap evicts them: null on the wire."""
    if text.strip().lower() in ("unlimited", "never", "none", "forever"):
        return None
    return _seconds(text, "--retention")


def _human_seconds(seconds: int | None) -> str:
    if seconds is None:
        return "unlimited"
    # Days rather than weeks: retention is configured in days (7d, 30d), so show it the same way.
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _project_row(project: dict[str, Any]) -> dict[str, Any]:
    return {**project, "retention": _human_seconds(project.get("retention_seconds"))}


def _control(registry: str | None, token: str | None, project: str | None = None) -> tuple[ControlClient, str | None]:
    connection = connect(registry, project, token)
    return connection.control(), connection.project


def _trust_row(rel: dict[str, Any]) -> dict[str, Any]:
    """One table row; the conditions share a column so the table still fits an 80-column terminal."""
    ids = "ids learned on first use"
    if rel.get("repository_owner_id") or rel.get("repository_id"):
        ids = f"ids {rel.get('repository_owner_id') or '?'}/{rel.get('repository_id') or '?'}"
    conditions = [ids]
    for key, label in (("workflow", "workflow"), ("environment", "environment"), ("ref_pattern", "ref"),
                       ("runner_environment", "runner")):
        if rel.get(key):
            conditions.append(f"{label} {rel[key]}")
    if rel.get("allow_events"):
        conditions.append("allows " + ", ".join(rel["allow_events"]))
    return {
        **rel,
        "repository": f"{rel['owner']}/{rel['repository']}",
        "conditions": "; ".join(conditions),
        "access": "pull" if rel.get("pull_only") else "push, pull",
    }


def _token_row(token: dict[str, Any]) -> dict[str, Any]:
    scopes = []
    for permission in token.get("permissions") or []:
        text = f"{permission['project']}: {','.join(permission['actions'])}"
        if permission.get("build_id"):
            text += f" (build {permission['build_id']})"
        scopes.append(text)
    status = "revoked" if token.get("revoked_at") else "active"
    return {
        **token,
        "scope": "; ".join(scopes) or ("everything" if token.get("kind") == "admin" else "-"),
        "expires_at": token.get("expires_at") or "never",
        "status": status,
    }


# --- projects ---------------------------------------------------------------------------------------------


@projects_app.command("create")
@guarded
def projects_create(
    name: Annotated[str, typer.Argument(help="Human-readable project name (the ID is generated).")],
    retention: Annotated[
        str | None, typer.Option("--retention", help="Keep saved builds this long (e.g. 7d) or 'unlimited'.")
    ] = None,
    max_builds: Annotated[
        int | None, typer.Option("--max-builds", min=1, help="Keep at most this many builds.", show_default=False)
    ] = None,
    registry: RegistryOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a project; prints its ID, which is also its repository name in image references."""
    settings: dict[str, Any] = {}
    if retention is not None:
        settings["retention_seconds"] = _retention(retention)
    if max_builds is not None:
        settings["max_builds"] = max_builds
    control, _ = _control(registry, token)
    with control:
        project = control.create_project(name, **settings)
    if as_json:
        emit(project, as_json=True)
        return
    emit(_project_row(project), as_json=False, columns=PROJECT_COLUMNS, rows=[_project_row(project)])
    stdout.print(f"Push images to {project.get('registry', project['id'])}:<build-id>", markup=False)


@projects_app.command("list")
@guarded
def projects_list(registry: RegistryOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """List the projects this token can see (all of them for an admin)."""
    control, _ = _control(registry, token)
    with control:
        projects = control.list_projects()
    emit(projects, as_json=as_json, columns=PROJECT_COLUMNS, rows=[_project_row(p) for p in projects],
         title="Projects")


@projects_app.command("show")
@guarded
def projects_show(
    project_id: Annotated[str | None, typer.Argument(help="Project ID (default: --project/CARGOHOLD_PROJECT_ID).")]
    = None,
    project: ProjectOption = None,
    registry: RegistryOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one project's settings."""
    control, resolved = _control(registry, token, project_id or project)
    with control:
        data = control.get_project(_need(resolved))
    emit(data if as_json else _project_row(data), as_json=as_json)


@projects_app.command("update")
@guarded
def projects_update(
    project_id: Annotated[str | None, typer.Argument(help="Project ID (default: --project/CARGOHOLD_PROJECT_ID).")]
    = None,
    name: Annotated[str | None, typer.Option("--name", help="New name.", show_default=False)] = None,
    retention: Annotated[
        str | None, typer.Option("--retention", help="New retention (e.g. 14d) or 'unlimited'.", show_default=False)
    ] = None,
    max_builds: Annotated[
        int | None, typer.Option("--max-builds", min=1, help="New build cap.", show_default=False)
    ] = None,
    project: ProjectOption = None,
    registry: RegistryOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change a project's name, retention or build cap (only the options given change)."""
    settings: dict[str, Any] = {}
    if name is not None:
        settings["name"] = name
    if retention is not None:
        settings["retention_seconds"] = _retention(retention)
    if max_builds is not None:
        settings["max_builds"] = max_builds
    if not settings:
        raise CliError("nothing to change: pass --name, --retention or --max-builds")
    control, resolved = _control(registry, token, project_id or project)
    with control:
        data = control.update_project(_need(resolved), **settings)
    emit(data if as_json else _project_row(data), as_json=as_json)


def _need(project: str | None) -> str:
    if not project:
        raise CliError("no project given: pass the project ID, --project ID, or set CARGOHOLD_PROJECT_ID")
    return project


# --- trust relationships ----------------------------------------------------------------------------------


@trust_app.command("add")
@guarded
def trust_add(
    repository: Annotated[
        str, typer.Option("--repository", help="GitHub repository as owner/name.", show_default=False)
    ],
    repository_id: Annotated[
        str | None, typer.Option("--repository-id", help="Numeric repository id (learned on first use if omitted).")
    ] = None,
    owner_id: Annotated[
        str | None, typer.Option("--owner-id", help="Numeric owner id (learned on first use if omitted).")
    ] = None,
    workflow: Annotated[
        str | None,
        typer.Option("--workflow", help="ci.yml, .github/workflows/ci.yml or owner/repo/.github/workflows/x.yml."),
    ] = None,
    environment: Annotated[str | None, typer.Option("--environment", help="Required deployment environment.")] = None,
    ref: Annotated[
        str | None, typer.Option("--ref", help="Required ref pattern, e.g. refs/heads/main or refs/tags/v*.")
    ] = None,
    runner_environment: Annotated[
        str | None, typer.Option("--runner-environment", help="github-hosted or self-hosted.")
    ] = None,
    allow_event: Annotated[
        list[str] | None,
        typer.Option("--allow-event", help="Opt into a risky event (pull_request_target, workflow_run); repeatable."),
    ] = None,
    pull_only: Annotated[bool, typer.Option("--pull-only", help="Grant pull but never push.")] = False,
    project: ProjectOption = None,
    registry: RegistryOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Let a GitHub repository's workflows exchange their OIDC tokens for access to a project."""
    if repository.count("/") != 1:
        raise CliError(f"--repository {repository!r} must be owner/name, e.g. octo-org/app")
    connection = connect(registry, project, token)
    project_id = require_project(connection)
    with connection.control() as control:
        rel = control.add_trust(
            project_id,
            repository=repository,
            repository_id=repository_id,
            repository_owner_id=owner_id,
            workflow=workflow,
            environment=environment,
            ref_pattern=ref,
            runner_environment=runner_environment,
            allow_events=list(allow_event or []) or None,
            pull_only=pull_only or None,
        )
    emit(rel, as_json=as_json, columns=TRUST_COLUMNS, rows=[_trust_row(rel)])


@trust_app.command("list")
@guarded
def trust_list(
    project: ProjectOption = None,
    registry: RegistryOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List a project's trust relationships."""
    connection = connect(registry, project, token)
    project_id = require_project(connection)
    with connection.control() as control:
        rels = control.list_trust(project_id)
    emit(rels, as_json=as_json, columns=TRUST_COLUMNS, rows=[_trust_row(r) for r in rels],
         title=f"Trust relationships of {project_id}")


@trust_app.command("remove")
@guarded
def trust_remove(
    trust_id: Annotated[str, typer.Argument(help="Trust relationship ID (see cargohold trust list).")],
    project: ProjectOption = None,
    registry: RegistryOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete a trust relationship; tokens already exchanged stay valid until they expire."""
    connection = connect(registry, project, token)
    project_id = require_project(connection)
    with connection.control() as control:
        result = control.remove_trust(project_id, trust_id)
    emit(result, as_json=as_json, text=f"Removed trust relationship {trust_id} from project {project_id}.")


# --- tokens -----------------------------------------------------------------------------------------------


@tokens_app.command("create")
@guarded
def tokens_create(
    kind: Annotated[str, typer.Option("--kind", help="project (push+pull), pull, or admin.")] = "project",
    build: Annotated[
        str | None, typer.Option("--build", help="Limit a pull token to one build.", show_default=False)
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="What the token is for.", show_default=False)] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="Lifetime, e.g. 30d (default: never; pull tokens 1h).")
    ] = None,
    project: ProjectOption = None,
    registry: RegistryOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a token; its secret is shown once (store it in a secret manager)."""
    if kind not in ("project", "pull", "admin"):
        raise CliError(f"--kind {kind!r} is not one of project, pull, admin")
    ttl = _seconds(expires, "--expires") if expires else None
    connection = connect(registry, project, token)
    if kind != "admin" and not connection.project and not build:
        raise CliError(f"a {kind} token needs a project: pass --project ID or set CARGOHOLD_PROJECT_ID")
    with connection.control() as control:
        created = control.create_token(
            kind,
            name or f"{kind} token",
            project_id=connection.project if kind != "admin" else None,
            build_id=build,
            expires_in=ttl,
        )
    if as_json:
        emit(created, as_json=True)
        return
    emit(_token_row(created), as_json=False, columns=TOKEN_COLUMNS, rows=[_token_row(created)])
    stdout.print(created["token"], markup=False)
    stderr.print("This is the only time the token is shown.")


@tokens_app.command("list")
@guarded
def tokens_list(
    include_inactive: Annotated[bool, typer.Option("--all", help="Include revoked and expired tokens.")] = False,
    project: ProjectOption = None,
    registry: RegistryOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List tokens (never their secrets); --project narrows to one project."""
    connection = connect(registry, project, token)
    with connection.control() as control:
        tokens = control.list_tokens(connection.project, include_inactive=include_inactive)
    emit(tokens, as_json=as_json, columns=TOKEN_COLUMNS, rows=[_token_row(t) for t in tokens], title="Tokens")


@tokens_app.command("revoke")
@guarded
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="Token ID (see cargohold tokens list), not the secret.")],
    registry: RegistryOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke a token; registries refuse it within a few seconds."""
    if token_id.startswith(("cha_", "chp_", "chl_", "cho_")):
        raise CliError("that looks like a token secret; pass the token ID shown by cargohold tokens list")
    control, _ = _control(registry, token)
    with control:
        result = control.revoke_token(token_id)
    emit(result, as_json=as_json, text=f"Revoked token {token_id}.")


@app.command("pull-token")
@guarded
def pull_token(
    build_id: Annotated[
        str | None, typer.Argument(help="Limit the token to this build (default: the whole project).")
    ] = None,
    expires: Annotated[str, typer.Option("--expires", help="Lifetime of the token.")] = "1h",
    name: Annotated[str | None, typer.Option("--name", help="What the token is for.", show_default=False)] = None,
    project: ProjectOption = None,
    registry: RegistryOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a short-lived pull token (only the token, so TOKEN=$(cargohold pull-token) works)."""
    ttl = _seconds(expires, "--expires")
    connection = connect(registry, project, token)
    if not connection.project and not build_id:
        raise CliError("no project given: pass --project ID (or a BUILD_ID), or set CARGOHOLD_PROJECT_ID")
    with connection.control() as control:
        created = control.create_token(
            "pull",
            name or (f"pull token for build {build_id}" if build_id else "pull token"),
            project_id=connection.project,
            build_id=build_id,
            expires_in=ttl,
        )
    if as_json:
        emit(created, as_json=True)
    else:
        stdout.print(created["token"], markup=False)


# --- login ------------------------------------------------------------------------------------------------


def _describe(who: dict[str, Any]) -> str:
    kind, name = who.get("kind"), who.get("name")
    if kind == "admin":
        return f"admin token {name!r} (everything)"
    scopes = [
        f"{p['project']} ({','.join(p['actions'])}{', build ' + p['build_id'] if p.get('build_id') else ''})"
        for p in who.get("permissions") or []
    ]
    return f"{kind} token {name!r} for {', '.join(scopes) or 'nothing'}"


@app.command("login")
@guarded
def login(
    url: Annotated[str, typer.Argument(help="Cargohold URL, e.g. https://cargohold.example.com or host:port.")],
    token: Annotated[str | None, typer.Option("--token", help="The token (prefer --password-stdin).")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the token from standard input.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check a token against the registry, then store both for later commands (file readable by you only)."""
    if token and password_stdin:
        raise CliError("pass either --token or --password-stdin, not both")
    if password_stdin:
        token = read_secret_stdin()
    if not token:
        raise CliError("no token given: pass --token TOKEN or pipe it in with --password-stdin")
    registry = normalize_registry_url(url)
    with ControlClient(registry, token) as control:
        try:
            who = control.whoami()
        except ControlError as exc:
            raise CliError(f"logging in to {registry} failed: {exc}") from None
    path = save_login(registry, token)
    if as_json:
        emit({"registry": registry, "config": str(path), **who}, as_json=True)
        return
    stdout.print(f"Logged in to {registry} as {_describe(who)}; saved to {path}.", markup=False)


@app.command("logout")
@guarded
def logout(as_json: JsonOption = False) -> None:
    """Forget the stored login (the token itself stays valid; revoke it to end it)."""
    removed = clear_login()
    path = config_path()
    if as_json:
        emit({"removed": removed, "config": str(path)}, as_json=True)
        return
    stdout.print(f"Removed the stored login {path}." if removed else "No stored login to remove.", markup=False)


@app.command("whoami")
@guarded
def whoami(registry: RegistryOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Show which credential the CLI is using and what it may do."""
    connection = connect(registry, None, token)
    with connection.control() as control:
        who = control.whoami()
    if as_json:
        emit({"registry": connection.registry, "token_source": connection.token_source, **who}, as_json=True)
        return
    stdout.print(
        f"{_describe(who)} at {connection.registry} (token from {connection.token_source})", markup=False
    )
