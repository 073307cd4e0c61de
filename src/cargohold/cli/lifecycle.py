"""Lifecycle commands: ``cargohold builds …`` (list, show, pin, unpin, extend, rm, history), ``cargohold tags …``
(list, pin, unpin, extend: tags pushed outside builds), ``gc``, ``expire`` and ``usage``.

Like the admin commands these are a thin layer over the control API (:mod:`cargohold.client.control`): the
server decides who may pin, delete or collect, and explains a missing build from its audit log, so the CLI
only turns options into requests, prints a table or a sentence for people (``--json`` for scripts), and
turns failures into one sentence that says what to do (:func:`cargohold.cli.context.guarded`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cargohold.cli.context import (
    CliError,
    connect,
    emit,
    guarded,
    json_option,
    project_option,
    registry_option,
    stdout,
    token_option,
)
from cargohold.cli.durations import parse_duration
from cargohold.cli.main import app, argument

if TYPE_CHECKING:
    from cargohold.client.control import ControlClient


@app.group("builds", no_args_is_help=True)
def builds_app() -> None:
    """Saved builds: list, inspect, pin, extend, delete, and see what retention did to them."""


build_argument = argument("build", help="Build ID (as printed by cargohold save).")
BUILD_COLUMNS = [
    ("id", "ID"),
    ("status", "Status"),
    ("saved_at", "Saved"),
    ("expires", "Expires"),
    ("pinned", "Pinned"),
    ("size", "Size"),
    ("save_tags", "Save tags"),
]
HISTORY_COLUMNS = [
    ("at", "When"),
    ("action", "Action"),
    ("rule", "Rule"),
    ("build_id", "Build"),
    ("actor", "Actor"),
    ("message", "What happened"),
]
EVICTION_COLUMNS = [("build_id", "Build"), ("project_id", "Project"), ("rule", "Rule"), ("reason", "Why")]
TAG_COLUMNS = [
    ("reference", "Repository:tag"),
    ("short_digest", "Digest"),
    ("size", "Size"),
    ("pushed", "Last pushed"),
    ("expires", "Expires"),
]
TAG_EVICTION_COLUMNS = [("repository", "Repository"), ("tag", "Tag"), ("rule", "Rule"), ("reason", "Why")]
COLLECTION_COLUMNS = [("repository", "Repository"), ("count", "Manifests"), ("reason", "Why")]

T = TypeVar("T")


# --- helpers ------------------------------------------------------------------------------------------------


@contextmanager
def _client(
    registry: str | None, token: str | None, project: str | None = None, *, need_project: bool = False
) -> Iterator[tuple[ControlClient, str | None]]:
    connection = connect(registry, project, token, need_project=need_project)
    client = connection.control()
    try:
        yield client, connection.project
    finally:
        client.close()


def _on_build(client: ControlClient, build_id: str, call: Callable[[], T]) -> T:
    """Run a call about one build; a bare "does not exist" gets a hint.

    The server already explains builds that retention removed ("expired on …; push and save it again"); only
    an ID it never knew gets the plain answer, most likely a typo.
    """
    from cargohold.client.control import ControlError

    try:
        return call()
    except ControlError as exc:
        if exc.status != 404 or not _bare_missing(str(exc), build_id):
            raise
    raise CliError(f"build {build_id} does not exist; check the ID with `cargohold builds list --project <id>`")


def _bare_missing(message: str, build_id: str) -> bool:
    """True for the plain "build X does not exist" (explanations say "expired", "was evicted", "was deleted")."""
    text = message.strip().rstrip(".")
    return build_id in text and text.endswith("does not exist")


def human_bytes(size: int) -> str:
    """:func:`cargohold.images.progress.human_bytes`, imported on first use (the images package is not cheap)."""
    from cargohold.images.progress import human_bytes as format_size

    return format_size(size)


def _build_row(build: dict[str, Any]) -> dict[str, Any]:
    expires = build.get("expires_at") or ("never" if build.get("status") == "saved" else None)
    if build.get("pinned"):
        expires = "pinned"
    size = build.get("total_size")
    return {
        **build,
        "expires": expires,
        "size": human_bytes(size) if isinstance(size, int) else None,
    }


def _build_summary(build: dict[str, Any]) -> dict[str, Any]:
    """The fields people look at in ``builds show``, in reading order."""
    row = _build_row(build)
    summary = {
        "id": build.get("id"),
        "project": build.get("project_id"),
        "status": build.get("status"),
        "reference": build.get("reference"),
        "digest": build.get("digest"),
        "platforms": build.get("platforms"),
        "created": build.get("created_at"),
        "saved": build.get("saved_at"),
        "expires": row["expires"],
        "pinned": build.get("pinned"),
        "size": row["size"],
        "unique size": human_bytes(build["unique_size"]) if isinstance(build.get("unique_size"), int) else None,
        "save tags": build.get("save_tags"),
    }
    if build.get("failure"):
        summary["failure"] = build["failure"]
    return summary


def _seconds(text: str, option: str) -> float:
    try:
        seconds = parse_duration(text).total_seconds()
    except ValueError as exc:
        raise CliError(f"{option}: {exc}") from None
    if seconds <= 0:
        raise CliError(f"{option} must be longer than zero (e.g. 12h, 3d)")
    return seconds


def _evictions(result: dict[str, Any], *, as_json: bool, dry_run: bool, empty: str) -> None:
    evicted = result.get("evicted") or []
    tags = result.get("tags") or []
    manifests = result.get("manifests") or []
    if as_json:
        emit(result, as_json=True)
        return
    if not evicted and not tags and not manifests:
        stdout.print(empty, markup=False)
        return
    verb = "Would evict" if dry_run else "Evicted"
    if evicted:
        count = len(evicted)
        stdout.print(f"{verb} {count} {'build' if count == 1 else 'builds'}:", markup=False)
        emit(evicted, as_json=False, columns=EVICTION_COLUMNS, rows=evicted)
    if tags:
        count = len(tags)
        stdout.print(f"{verb} {count} {'tag' if count == 1 else 'tags'} pushed outside builds:", markup=False)
        emit(tags, as_json=False, columns=TAG_EVICTION_COLUMNS, rows=tags)
    if manifests:
        count = sum(int(collection.get("count", 0)) for collection in manifests)
        noun = "manifest" if count == 1 else "manifests"
        stdout.print(f"{'Would remove' if dry_run else 'Removed'} {count} untagged {noun}:", markup=False)
        emit(manifests, as_json=False, columns=COLLECTION_COLUMNS, rows=manifests)


# --- builds -------------------------------------------------------------------------------------------------


@builds_app.command("list")
@click.option("--tag", help="Only the build holding this save-tag.", show_default=False)
@click.option("--limit", type=click.IntRange(1, 500), default=50, help="Newest builds to show.")
@registry_option
@project_option
@token_option
@json_option
@guarded
def builds_list(
    tag: str | None, limit: int, registry: str | None, project: str | None, token: str | None, as_json: bool
) -> None:
    """List a project's builds, newest first."""
    with _client(registry, token, project, need_project=True) as (client, project_id):
        assert project_id is not None
        result = client.list_builds(project_id, limit=limit, tag=tag)
    builds = result.get("builds") or []
    if as_json:
        emit(result, as_json=True)
    elif not builds:
        stdout.print(f"Project {project_id} has no builds{f' tagged {tag}' if tag else ''}.", markup=False)
    else:
        emit(
            result,
            as_json=False,
            columns=BUILD_COLUMNS,
            rows=[_build_row(build) for build in builds],
            title=f"Builds of {project_id}",
        )
        if result.get("next"):
            stdout.print(f"Showing the newest {len(builds)}; pass --limit to see more.", markup=False)


@builds_app.command("show")
@build_argument
@registry_option
@token_option
@json_option
@guarded
def builds_show(build: str, registry: str | None, token: str | None, as_json: bool) -> None:
    """Show one build: status, expiry, pin, sizes, save-tags."""
    with _client(registry, token) as (client, _):
        data = _on_build(client, build, lambda: client.get_build(build))
    emit(data if as_json else _build_summary(data), as_json=as_json)


@builds_app.command("pin")
@build_argument
@registry_option
@token_option
@json_option
@guarded
def builds_pin(build: str, registry: str | None, token: str | None, as_json: bool) -> None:
    """Keep a saved build until unpinned: neither expiry nor the project's build cap removes it."""
    with _client(registry, token) as (client, _):
        data = _on_build(client, build, lambda: client.pin_build(build))
    emit(data, as_json=as_json, text=f"Pinned build {build}; it stays until you run `cargohold builds unpin {build}`.")


@builds_app.command("unpin")
@build_argument
@registry_option
@token_option
@json_option
@guarded
def builds_unpin(build: str, registry: str | None, token: str | None, as_json: bool) -> None:
    """Let a pinned build expire again (at once, if its expiry already passed)."""
    with _client(registry, token) as (client, _):
        data = _on_build(client, build, lambda: client.unpin_build(build))
    expires = data.get("expires_at")
    when = f"it expires at {expires}" if expires else "it has no expiry, so only the build cap can evict it"
    emit(data, as_json=as_json, text=f"Unpinned build {build}; {when}.")


@builds_app.command("extend")
@build_argument
@click.option("--by", help="Add this to the expiry (e.g. 12h, 3d).", show_default=False)
@click.option("--until", help="New expiry, ISO 8601 (e.g. 2026-12-31T00:00:00Z).", show_default=False)
@registry_option
@token_option
@json_option
@guarded
def builds_extend(
    build: str, by: str | None, until: str | None, registry: str | None, token: str | None, as_json: bool
) -> None:
    """Move a saved build's expiry later."""
    from cargohold.isotime import iso, parse_iso

    if (by is None) == (until is None):
        raise CliError("give exactly one of --by (e.g. --by 3d) or --until (e.g. --until 2026-12-31T00:00:00Z)")
    by_seconds = _seconds(by, "--by") if by is not None else None
    until_iso = None
    if until is not None:
        try:
            until_iso = iso(parse_iso(until))
        except ValueError:
            raise CliError(f"--until {until!r} is not an ISO 8601 time; use e.g. 2026-12-31T00:00:00Z") from None
    with _client(registry, token) as (client, _):
        data = _on_build(client, build, lambda: client.extend_build(build, by_seconds=by_seconds, until=until_iso))
    emit(data, as_json=as_json, text=f"Build {build} now expires at {data.get('expires_at')}.")


@builds_app.command("rm")
@build_argument
@click.option("--dry-run", is_flag=True, help="Only say what would be deleted.")
@registry_option
@token_option
@json_option
@guarded
def builds_rm(build: str, dry_run: bool, registry: str | None, token: str | None, as_json: bool) -> None:
    """Delete a build now (pinned ones too), with its tags and the manifests only it used (needs delete)."""
    with _client(registry, token) as (client, _):
        result = _on_build(client, build, lambda: client.delete_build(build, dry_run=dry_run))
    if as_json:
        emit(result, as_json=True)
        return
    eviction = (result.get("evicted") or [{}])[0]
    tags = ", ".join(eviction.get("tags") or [build])
    if dry_run:
        stdout.print(f"Would delete build {build} and its tags {tags}; nothing was changed.", markup=False)
    else:
        stdout.print(
            f"Deleted build {build} and its tags {tags}; garbage collection frees its blobs later.", markup=False
        )


@builds_app.command("history")
@click.option("--build", help="Only events about this build.", show_default=False)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, help="Newest events to show.")
@registry_option
@project_option
@token_option
@json_option
@guarded
def builds_history(
    build: str | None, limit: int, registry: str | None, project: str | None, token: str | None, as_json: bool
) -> None:
    """What retention did in a project: evictions (and the rule behind each), pins, extensions."""
    with _client(registry, token, project, need_project=True) as (client, project_id):
        assert project_id is not None
        events = client.project_history(project_id, limit=limit, build_id=build)
    if as_json:
        emit({"project_id": project_id, "events": events}, as_json=True)
    elif not events:
        subject = f"build {build}" if build else f"project {project_id}"
        stdout.print(f"No lifecycle events for {subject}.", markup=False)
    else:
        emit(events, as_json=False, columns=HISTORY_COLUMNS, rows=events, title=f"History of {project_id}")


# --- gc, expire, usage --------------------------------------------------------------------------------------


@app.command()
@click.option("--dry-run", is_flag=True, help="Only count what would be freed.")
@registry_option
@token_option
@json_option
@guarded
def gc(dry_run: bool, registry: str | None, token: str | None, as_json: bool) -> None:
    """Collect garbage now: blobs no manifest needs any more (admin)."""
    with _client(registry, token) as (client, _):
        report = client.run_gc(dry_run=dry_run)
    if as_json:
        emit(report, as_json=True)
        return
    verb = "would free" if dry_run else "freed"
    blobs = int(report.get("blobs_deleted", 0)) + int(report.get("orphan_files", 0))
    stdout.print(
        f"Garbage collection {verb} {blobs} blobs ({human_bytes(int(report.get('bytes_freed', 0)))}) and "
        f"{'would remove' if dry_run else 'removed'} {report.get('links_removed', 0)} links "
        f"in {float(report.get('duration_seconds', 0)):.2f} s.",
        markup=False,
    )
    if not report.get("completed", True):
        stdout.print(f"It stopped early: {report.get('error') or 'see the server log'}.", markup=False)


@app.command()
@click.option("--dry-run", is_flag=True, help="Only say what would go, and why.")
@registry_option
@project_option
@token_option
@json_option
@guarded
def expire(dry_run: bool, registry: str | None, project: str | None, token: str | None, as_json: bool) -> None:
    """Evict expired builds (and builds never saved for 24 hours), expired tags pushed outside builds and the
    untagged manifests nothing keeps, now; without --project, every project."""
    with _client(registry, token, project) as (client, project_id):
        result = client.run_expiry(project_id=project_id, dry_run=dry_run)
    scope = f"in project {project_id}" if project_id else "in any project"
    _evictions(result, as_json=as_json, dry_run=dry_run, empty=f"Nothing to expire {scope}.")


@app.command()
@click.option("--month", help="YYYY-MM (default: this month, UTC).", show_default=False)
@registry_option
@project_option
@token_option
@json_option
@guarded
def usage(month: str | None, registry: str | None, project: str | None, token: str | None, as_json: bool) -> None:
    """Storage a project used in a month: GB-months, the free allowance and the cost estimate.

    With an admin token it also shows the server's free space; without a project, only that.
    """
    from cargohold.client.control import ControlError

    with _client(registry, token, project) as (client, project_id):
        if project_id is None:
            try:
                storage = client.server_storage()
            except ControlError as exc:
                if exc.status != 403:
                    raise
                raise CliError("no project given: pass --project ID or set CARGOHOLD_PROJECT_ID") from None
            if as_json:
                emit({"server_storage": storage}, as_json=True)
            else:
                emit(_storage_rows(storage), as_json=False)
            return
        data = client.project_usage(project_id, month=month)
    if as_json:
        emit(data, as_json=True)
        return
    currency = data.get("currency", "USD")
    rows = {
        "project": data.get("project_id"),
        "month": data.get("month"),
        "stored now": human_bytes(int(data.get("stored_bytes") or 0)),
        "GB-months": f"{float(data.get('gb_months') or 0):.4f}",
        "free allowance": f"{float(data.get('free_gb_months') or 0):g} GB-months",
        "billable": f"{float(data.get('billable_gb_months') or 0):.4f} GB-months",
        "price": f"{float(data.get('price_per_gb_month') or 0):g} {currency} per GB-month",
        "estimated cost": f"{float(data.get('estimated_cost') or 0):.2f} {currency}",
        "as of": data.get("as_of"),
    }
    storage = data.get("server_storage")
    if isinstance(storage, dict):
        rows.update(_storage_rows(storage))
    emit(rows, as_json=False)


def _storage_rows(storage: dict[str, Any]) -> dict[str, Any]:
    """The server's free space as ``key: value`` lines (admins): one per filesystem, then the status."""
    rows: dict[str, Any] = {}
    for fs in storage.get("filesystems") or []:
        if not isinstance(fs, dict):
            continue
        rows[f"server free space ({fs.get('role')})"] = (
            f"{human_bytes(int(fs.get('free_bytes') or 0))} of {human_bytes(int(fs.get('total_bytes') or 0))}, "
            f"minimum {human_bytes(int(fs.get('min_free_bytes') or 0))} ({fs.get('path')})"
        )
    rows["server storage"] = storage.get("reason") or storage.get("status") or "-"
    return rows


# --- tags pushed outside builds ------------------------------------------------------------------------------


@app.group("tags", no_args_is_help=True)
def tags_app() -> None:
    """Tags pushed outside builds (docker push, skopeo copy): list them, pin or extend one before it expires."""


tag_argument = argument(
    "reference", help="<repository>:<tag> as `cargohold tags list` shows it (e.g. p4f2abc9de/web:1.0)."
)


def _tag_reference(reference: str) -> tuple[str, str]:
    """``[host/]repository:tag`` -> ``(repository, tag)``, with a one-sentence error for anything else."""
    from cargohold.oci.imageref import is_registry_host
    from cargohold.oci.reference import is_valid_name, is_valid_tag

    text = reference.strip()
    first, slash, rest = text.partition("/")
    if slash and is_registry_host(first):
        text = rest
    repository, colon, tag = text.rpartition(":")
    if not colon or not is_valid_name(repository) or not is_valid_tag(tag):
        raise CliError(
            f"{reference!r} is not <repository>:<tag>; give it as `cargohold tags list` shows it, "
            "e.g. p4f2abc9de/web:1.0"
        )
    return repository, tag


def _tag_row(tag: dict[str, Any]) -> dict[str, Any]:
    """One table row: ``repository:tag`` in one column and minutes-precision times, so it fits 80 columns
    (``--json`` has every field in full)."""
    expires = "pinned" if tag.get("pinned") else _minutes(tag.get("expires_at")) or "never"
    digest = str(tag.get("digest") or "")
    size = tag.get("size")
    return {
        "reference": f"{tag.get('repository')}:{tag.get('tag')}",
        "short_digest": digest.split(":", 1)[-1][:12] if digest else None,
        "size": human_bytes(size) if isinstance(size, int) else None,
        "pushed": _minutes(tag.get("pushed_at")),
        "expires": expires,
    }


def _minutes(moment: Any) -> str | None:
    """``2026-05-01T12:34:56Z`` -> ``2026-05-01 12:34`` (UTC, as every time the CLI prints)."""
    return str(moment)[:16].replace("T", " ") if moment else None


def _on_tag(client: ControlClient, reference: str, call: Callable[[], T]) -> T:
    """Run a call about one tag; a bare "does not exist" gets a hint (an expired tag is explained by the server)."""
    from cargohold.client.control import ControlError

    try:
        return call()
    except ControlError as exc:
        if exc.status != 404 or not str(exc).strip().rstrip(".").endswith("does not exist"):
            raise
    raise CliError(f"{reference} does not exist; check it with `cargohold tags list --project <id>`")


@tags_app.command("list")
@click.option("--repository", help="Only this repository (<project>/web, or just web).", show_default=False)
@click.option("--limit", type=click.IntRange(1, 500), default=100, help="Tags to show.")
@registry_option
@project_option
@token_option
@json_option
@guarded
def tags_list(
    repository: str | None, limit: int, registry: str | None, project: str | None, token: str | None, as_json: bool
) -> None:
    """List a project's tags pushed outside builds: digest, size, last push, expiry, pin."""
    with _client(registry, token, project, need_project=True) as (client, project_id):
        assert project_id is not None
        if repository and repository != project_id and not repository.startswith(f"{project_id}/"):
            repository = f"{project_id}/{repository}"
        result = client.list_tags(project_id, repository=repository, limit=limit)
    tags = result.get("tags") or []
    if as_json:
        emit(result, as_json=True)
    elif not tags:
        where = f"repository {repository}" if repository else f"project {project_id}"
        stdout.print(f"No tags pushed outside builds in {where}.", markup=False)
    else:
        title = f"Tags of {repository or project_id} pushed outside builds"
        emit(result, as_json=False, columns=TAG_COLUMNS, rows=[_tag_row(tag) for tag in tags], title=title)
        if result.get("next"):
            stdout.print(f"Showing the first {len(tags)}; pass --limit to see more.", markup=False)


@tags_app.command("pin")
@tag_argument
@registry_option
@token_option
@json_option
@guarded
def tags_pin(reference: str, registry: str | None, token: str | None, as_json: bool) -> None:
    """Keep a tag (and the image it names) until unpinned."""
    repository, tag = _tag_reference(reference)
    with _client(registry, token) as (client, _):
        data = _on_tag(client, reference, lambda: client.pin_tag(repository, tag))
    text = f"Pinned {repository}:{tag}; it stays until you run `cargohold tags unpin {repository}:{tag}`."
    emit(data, as_json=as_json, text=text)


@tags_app.command("unpin")
@tag_argument
@registry_option
@token_option
@json_option
@guarded
def tags_unpin(reference: str, registry: str | None, token: str | None, as_json: bool) -> None:
    """Let a pinned tag expire again (at once, if its expiry already passed)."""
    repository, tag = _tag_reference(reference)
    with _client(registry, token) as (client, _):
        data = _on_tag(client, reference, lambda: client.unpin_tag(repository, tag))
    expires = data.get("expires_at")
    when = f"it expires at {expires}" if expires else "its project keeps images without a time limit"
    emit(data, as_json=as_json, text=f"Unpinned {repository}:{tag}; {when}.")


@tags_app.command("extend")
@tag_argument
@click.option("--by", help="Add this to the expiry (e.g. 12h, 3d).", show_default=False)
@click.option("--until", help="New expiry, ISO 8601 (e.g. 2026-12-31T00:00:00Z).", show_default=False)
@registry_option
@token_option
@json_option
@guarded
def tags_extend(
    reference: str, by: str | None, until: str | None, registry: str | None, token: str | None, as_json: bool
) -> None:
    """Move a tag's expiry later (a later push never moves it earlier)."""
    from cargohold.isotime import iso, parse_iso

    repository, tag = _tag_reference(reference)
    if (by is None) == (until is None):
        raise CliError("give exactly one of --by (e.g. --by 3d) or --until (e.g. --until 2026-12-31T00:00:00Z)")
    by_seconds = _seconds(by, "--by") if by is not None else None
    until_iso = None
    if until is not None:
        try:
            until_iso = iso(parse_iso(until))
        except ValueError:
            raise CliError(f"--until {until!r} is not an ISO 8601 time; use e.g. 2026-12-31T00:00:00Z") from None
    with _client(registry, token) as (client, _):
        data = _on_tag(
            client, reference, lambda: client.extend_tag(repository, tag, by_seconds=by_seconds, until=until_iso)
        )
    emit(data, as_json=as_json, text=f"{repository}:{tag} now expires at {data.get('expires_at')}.")
