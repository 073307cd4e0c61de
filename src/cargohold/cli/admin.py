"""Admin-side commands: projects, trust relationships, tokens, pull tokens, and the stored login.

Everything here is a thin layer over :class:`cargohold.client.control.ControlClient`: the server decides
who may do what, so the CLI never second-guesses permissions; it only turns options into request bodies,
shows the answer as a table (or ``--json`` for scripts) and turns failures into one sentence through
:func:`cargohold.cli.context.guarded`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from cargohold.cli.context import (
    CliError,
    connect,
    emit,
    guarded,
    json_option,
    project_option,
    read_secret_stdin,
    registry_option,
    require_project,
    retry_for_option,
    retry_policy,
    stderr,
    stdout,
    token_option,
)
from cargohold.cli.durations import parse_duration
from cargohold.cli.main import app, argument
from cargohold.isotime import iso

if TYPE_CHECKING:
    from cargohold.client.control import ControlClient
    from cargohold.schemas import Project, Token, TrustRelationship, Whoami


@app.group("projects", no_args_is_help=True)
def projects_app() -> None:
    """Create, list, show and update projects (admin)."""


@app.group("trust", no_args_is_help=True)
def trust_app() -> None:
    """Trust relationships: which GitHub workflows may exchange OIDC tokens for a project."""


@app.group("tokens", no_args_is_help=True)
def tokens_app() -> None:
    """Create, list and revoke Cargohold tokens."""


PROJECT_COLUMNS = [
    ("id", "ID"),
    ("name", "Name"),
    ("retention", "Retention"),
    ("max_builds", "Max builds"),
    ("created_at", "Created"),
]
TRUST_COLUMNS = [("id", "ID"), ("repository", "Repository"), ("conditions", "Conditions"), ("access", "Access")]
TOKEN_COLUMNS = [
    ("id", "ID"),
    ("kind", "Kind"),
    ("name", "Name"),
    ("scope", "Scope"),
    ("expires_at", "Expires"),
    ("status", "Status"),
]


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


def _project_row(project: Project) -> dict[str, Any]:
    return {**project.to_json(), "retention": _human_seconds(project.retention_seconds)}


def _control(registry: str | None, token: str | None, project: str | None = None) -> tuple[ControlClient, str | None]:
    connection = connect(registry, project, token)
    return connection.control(), connection.project


def _trust_row(rel: TrustRelationship) -> dict[str, Any]:
    """One table row; the conditions share a column so the table still fits an 80-column terminal."""
    ids = "ids learned on first use"
    if rel.repository_owner_id or rel.repository_id:
        ids = f"ids {rel.repository_owner_id or '?'}/{rel.repository_id or '?'}"
    conditions = [ids]
    for value, label in (
        (rel.workflow, "workflow"),
        (rel.environment, "environment"),
        (rel.ref_pattern, "ref"),
        (rel.runner_environment, "runner"),
    ):
        if value:
            conditions.append(f"{label} {value}")
    if rel.allow_events:
        conditions.append("allows " + ", ".join(rel.allow_events))
    return {
        **rel.to_json(),
        "repository": f"{rel.owner}/{rel.repository}",
        "conditions": "; ".join(conditions),
        "access": ", ".join(rel.permissions or (["pull"] if rel.pull_only else ["pull", "push"])),
    }


def _token_row(token: Token) -> dict[str, Any]:
    scopes = []
    for permission in token.permissions:
        text = f"{permission.project}: {','.join(permission.actions)}"
        if permission.build_id:
            text += f" (build {permission.build_id})"
        scopes.append(text)
    status = "revoked" if token.revoked_at else "active"
    admin = token.admin_permissions
    if token.kind == "admin":
        scopes.append("everything" if "admin" in admin or not admin else ", ".join(admin))
    return {
        **token.to_json(),
        "scope": "; ".join(scopes) or "-",
        "expires_at": iso(token.expires_at) or "never",
        "status": status,
    }


# --- projects ---------------------------------------------------------------------------------------------


@projects_app.command("create")
@argument("name", help="Human-readable project name (the ID is generated).")
@click.option("--retention", help="Keep saved builds this long (e.g. 7d) or 'unlimited'.")
@click.option("--max-builds", type=click.IntRange(min=1), help="Keep at most this many builds.", show_default=False)
@registry_option
@token_option
@json_option
@guarded
def projects_create(
    name: str, retention: str | None, max_builds: int | None, registry: str | None, token: str | None, as_json: bool
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
        emit(project.to_json(), as_json=True)
        return
    emit(_project_row(project), as_json=False, columns=PROJECT_COLUMNS, rows=[_project_row(project)])
    stdout.print(f"Push images to {project.registry or project.id}:<build-id>", markup=False)


@projects_app.command("list")
@registry_option
@token_option
@json_option
@guarded
def projects_list(registry: str | None, token: str | None, as_json: bool) -> None:
    """List the projects this token can see (all of them for an admin)."""
    control, _ = _control(registry, token)
    with control:
        projects = control.list_projects()
    emit(
        {"projects": [p.to_json() for p in projects]},
        as_json=as_json,
        columns=PROJECT_COLUMNS,
        rows=[_project_row(p) for p in projects],
        title="Projects",
    )


@projects_app.command("show")
@argument("project_id", required=False, help="Project ID (default: --project/CARGOHOLD_PROJECT_ID).")
@project_option
@registry_option
@token_option
@json_option
@guarded
def projects_show(
    project_id: str | None, project: str | None, registry: str | None, token: str | None, as_json: bool
) -> None:
    """Show one project's settings."""
    control, resolved = _control(registry, token, project_id or project)
    with control:
        data = control.get_project(_need(resolved))
    emit(data.to_json() if as_json else _project_row(data), as_json=as_json)


@projects_app.command("update")
@argument("project_id", required=False, help="Project ID (default: --project/CARGOHOLD_PROJECT_ID).")
@click.option("--name", help="New name.", show_default=False)
@click.option("--retention", help="New retention (e.g. 14d) or 'unlimited'.", show_default=False)
@click.option("--max-builds", type=click.IntRange(min=1), help="New build cap.", show_default=False)
@project_option
@registry_option
@token_option
@json_option
@guarded
def projects_update(
    project_id: str | None,
    name: str | None,
    retention: str | None,
    max_builds: int | None,
    project: str | None,
    registry: str | None,
    token: str | None,
    as_json: bool,
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
    emit(data.to_json() if as_json else _project_row(data), as_json=as_json)


def _permission_list(text: str | None) -> list[str] | None:
    """``--permissions pull,push,delete`` as the list the API takes (the server says what is allowed)."""
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise CliError("--permissions needs at least one name, e.g. --permissions pull,push,delete")
    return names


def _need(project: str | None) -> str:
    if not project:
        raise CliError("no project given: pass the project ID, --project ID, or set CARGOHOLD_PROJECT_ID")
    return project


# --- trust relationships ----------------------------------------------------------------------------------


@trust_app.command("add")
@click.option("--repository", required=True, help="GitHub repository as owner/name.", show_default=False)
@click.option("--repository-id", help="Numeric repository id (learned on first use if omitted).")
@click.option("--owner-id", help="Numeric owner id (learned on first use if omitted).")
@click.option("--workflow", help="ci.yml, .github/workflows/ci.yml or owner/repo/.github/workflows/x.yml.")
@click.option("--environment", help="Required deployment environment.")
@click.option("--ref", help="Required ref pattern, e.g. refs/heads/main or refs/tags/v*.")
@click.option("--runner-environment", help="github-hosted or self-hosted.")
@click.option(
    "--allow-event", multiple=True, help="Opt into a risky event (pull_request_target, workflow_run); repeatable."
)
@click.option("--pull-only", is_flag=True, help="Grant pull but never push (same as --permissions pull).")
@click.option(
    "--permissions",
    help="What exchanged tokens may do in the project: pull,push (default), pull, or pull,push,delete "
    "(delete lets the workflow delete images and builds).",
    show_default=False,
)
@project_option
@registry_option
@token_option
@json_option
@guarded
def trust_add(
    repository: str,
    repository_id: str | None,
    owner_id: str | None,
    workflow: str | None,
    environment: str | None,
    ref: str | None,
    runner_environment: str | None,
    allow_event: tuple[str, ...],
    pull_only: bool,
    permissions: str | None,
    project: str | None,
    registry: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Let a GitHub repository's workflows exchange their OIDC tokens for access to a project.

    Exchanged tokens live --oidc-token-ttl (1 hour by default) and are revoked, with every token minted from
    them, when the relationship is removed.
    """
    if repository.count("/") != 1:
        raise CliError(f"--repository {repository!r} must be owner/name, e.g. octo-org/app")
    if pull_only and permissions is not None:
        raise CliError("pass either --pull-only or --permissions, not both")
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
            permissions=_permission_list(permissions),
        )
    emit(rel.to_json(), as_json=as_json, columns=TRUST_COLUMNS, rows=[_trust_row(rel)])


@trust_app.command("list")
@project_option
@registry_option
@token_option
@json_option
@guarded
def trust_list(project: str | None, registry: str | None, token: str | None, as_json: bool) -> None:
    """List a project's trust relationships."""
    connection = connect(registry, project, token)
    project_id = require_project(connection)
    with connection.control() as control:
        rels = control.list_trust(project_id)
    emit(
        {"trust_relationships": [r.to_json() for r in rels]},
        as_json=as_json,
        columns=TRUST_COLUMNS,
        rows=[_trust_row(r) for r in rels],
        title=f"Trust relationships of {project_id}",
    )


@trust_app.command("remove")
@argument("trust_id", help="Trust relationship ID (see cargohold trust list).")
@project_option
@registry_option
@token_option
@json_option
@guarded
def trust_remove(trust_id: str, project: str | None, registry: str | None, token: str | None, as_json: bool) -> None:
    """Delete a trust relationship and revoke the tokens exchanged through it (and every token minted from them)."""
    connection = connect(registry, project, token)
    project_id = require_project(connection)
    with connection.control() as control:
        result = control.remove_trust(project_id, trust_id)
    emit(
        result.to_json(),
        as_json=as_json,
        text=f"Removed trust relationship {trust_id} from project {project_id}; revoked {result.credentials_revoked} "
        "token(s).",
    )


# --- tokens -----------------------------------------------------------------------------------------------


@tokens_app.command("create")
@click.option(
    "--kind",
    default="project",
    help="project (push+pull), pull, admin, or metrics (an admin token that may only read /metrics, the same as "
    "--kind admin --permissions metrics).",
)
@click.option("--build", help="Limit a pull token to one build.", show_default=False)
@click.option("--name", help="What the token is for.", show_default=False)
@click.option(
    "--expires",
    help="Lifetime, e.g. 30d (default: never; pull tokens 1h). Never beyond the expiry of the token creating it.",
)
@click.option(
    "--permissions",
    help="Comma-separated: for project tokens pull,push (default) and delete (e.g. pull,push,delete), pull "
    "tokens pull, admin tokens admin (default) or metrics (scrape /metrics only).",
    show_default=False,
)
@project_option
@registry_option
@token_option
@json_option
@guarded
def tokens_create(
    kind: str,
    build: str | None,
    name: str | None,
    expires: str | None,
    permissions: str | None,
    project: str | None,
    registry: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Create a token; its secret is shown once (store it in a secret manager).

    The new token is a child of the token creating it: it can do no more than its creator, expires no later,
    and is revoked with it (admin tokens are the exception: each is independent).
    """
    if kind not in ("project", "pull", "admin", "metrics"):
        raise CliError(f"--kind {kind!r} is not one of project, pull, admin, metrics")
    if kind == "metrics":  # a Prometheus scraper's token: an admin token with the metrics permission alone
        if permissions not in (None, "metrics"):
            raise CliError("a metrics token has the metrics permission only; drop --permissions")
        kind, permissions, name = "admin", "metrics", name or "metrics token"
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
            permissions=_permission_list(permissions),
        )
    if as_json:
        emit(created.to_json(), as_json=True)
        return
    emit(_token_row(created), as_json=False, columns=TOKEN_COLUMNS, rows=[_token_row(created)])
    stdout.print(created.token, markup=False)
    if created.expiry_capped:
        stderr.print(f"It expires at {iso(created.expires_at)}, with the token that created it.", markup=False)
    stderr.print("This is the only time the token is shown.")


@tokens_app.command("list")
@click.option("--all", "include_inactive", is_flag=True, help="Include revoked and expired tokens.")
@project_option
@registry_option
@token_option
@json_option
@guarded
def tokens_list(
    include_inactive: bool, project: str | None, registry: str | None, token: str | None, as_json: bool
) -> None:
    """List tokens (never their secrets); --project narrows to one project."""
    connection = connect(registry, project, token)
    with connection.control() as control:
        tokens = control.list_tokens(connection.project, include_inactive=include_inactive)
    emit(
        {"tokens": [t.to_json() for t in tokens]},
        as_json=as_json,
        columns=TOKEN_COLUMNS,
        rows=[_token_row(t) for t in tokens],
        title="Tokens",
    )


@tokens_app.command("revoke")
@argument("token_id", help="Token ID (see cargohold tokens list), not the secret.")
@click.option(
    "--force",
    is_flag=True,
    help="Revoke even the last admin token (then only cargohold admin reset-token on the server's host, or "
    "CARGOHOLD_ADMIN_TOKEN, gets an admin back in).",
)
@registry_option
@token_option
@json_option
@guarded
def tokens_revoke(token_id: str, force: bool, registry: str | None, token: str | None, as_json: bool) -> None:
    """Revoke a token and every token minted from it; registries refuse them within a few seconds."""
    if token_id.startswith(("cha_", "chp_", "chl_", "cho_")):
        raise CliError("that looks like a token secret; pass the token ID shown by cargohold tokens list")
    control, _ = _control(registry, token)
    with control:
        result = control.revoke_token(token_id, force=force)
    descendants = result.descendants_revoked
    text = f"Revoked token {token_id}" + (f" and {descendants} token(s) minted from it." if descendants else ".")
    emit(result.to_json(), as_json=as_json, text=text)


@app.command("pull-token")
@argument("build_id", required=False, help="Limit the token to this build (default: the whole project).")
@click.option(
    "--expires", default="1h", help="Lifetime of the token (never beyond the expiry of the token creating it)."
)
@click.option("--name", help="What the token is for.", show_default=False)
@project_option
@registry_option
@token_option
@json_option
@guarded
def pull_token(
    build_id: str | None,
    expires: str,
    name: str | None,
    project: str | None,
    registry: str | None,
    token: str | None,
    as_json: bool,
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
        emit(created.to_json(), as_json=True)
    else:
        stdout.print(created.token, markup=False)
        if created.expiry_capped:
            stderr.print(f"It expires at {iso(created.expires_at)}, with the token that created it.", markup=False)


# --- login ------------------------------------------------------------------------------------------------


def _describe(who: Whoami) -> str:
    kind, name = who.kind, who.name
    if kind == "admin":
        admin = who.admin_permissions or ["admin"]
        return f"admin token {name!r} ({'everything' if 'admin' in admin else ', '.join(admin) + ' only'})"
    scopes = [
        f"{p.project} ({','.join(p.actions)}{', build ' + p.build_id if p.build_id else ''})" for p in who.permissions
    ]
    return f"{kind} token {name!r} for {', '.join(scopes) or 'nothing'}"


@app.command("login")
@argument("url", help="Cargohold URL, e.g. https://cargohold.example.com or host:port.")
@click.option("--token", help="The token (prefer --password-stdin).")
@retry_for_option
@click.option("--password-stdin", is_flag=True, help="Read the token from standard input.")
@json_option
@guarded
def login(url: str, token: str | None, password_stdin: bool, as_json: bool) -> None:
    """Check a token against the registry, then store both for later commands (file readable by you only)."""
    from cargohold.client.control import ControlClient, ControlError
    from cargohold.client.settings import normalize_registry_url, save_login

    if token and password_stdin:
        raise CliError("pass either --token or --password-stdin, not both")
    if password_stdin:
        token = read_secret_stdin()
    if not token:
        raise CliError("no token given: pass --token TOKEN or pipe it in with --password-stdin")
    registry = normalize_registry_url(url)
    with ControlClient(registry, token, retry=retry_policy()) as control:
        try:
            who = control.whoami()
        except ControlError as exc:
            raise CliError(f"logging in to {registry} failed: {exc}") from None
    path = save_login(registry, token)
    if as_json:
        emit({"registry": registry, "config": str(path), **who.to_json()}, as_json=True)
        return
    stdout.print(f"Logged in to {registry} as {_describe(who)}; saved to {path}.", markup=False)


@app.command("logout")
@json_option
@guarded
def logout(as_json: bool) -> None:
    """Forget the stored login (the token itself stays valid; revoke it to end it)."""
    from cargohold.client.settings import clear_login, config_path

    removed = clear_login()
    path = config_path()
    if as_json:
        emit({"removed": removed, "config": str(path)}, as_json=True)
        return
    stdout.print(f"Removed the stored login {path}." if removed else "No stored login to remove.", markup=False)


@app.command("whoami")
@registry_option
@token_option
@json_option
@guarded
def whoami(registry: str | None, token: str | None, as_json: bool) -> None:
    """Show which credential the CLI is using and what it may do."""
    connection = connect(registry, None, token)
    with connection.control() as control:
        who = control.whoami()
    if as_json:
        emit({"registry": connection.registry, "token_source": connection.token_source, **who.to_json()}, as_json=True)
        return
    stdout.print(f"{_describe(who)} at {connection.registry} (token from {connection.token_source})", markup=False)
