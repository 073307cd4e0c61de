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
from cargohold.isotime import iso, parse_iso

if TYPE_CHECKING:
    from cargohold.client.control import ControlClient
    from cargohold.schemas import Build, ExpiryReport, ServerStorage, Tag


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


def _build_row(build: Build) -> dict[str, Any]:
    expires = iso(build.expires_at) or ("never" if build.status == "saved" else None)
    if build.pinned:
        expires = "pinned"
    return {
        **build.to_json(),
        "expires": expires,
        "size": human_bytes(build.total_size) if build.total_size is not None else None,
    }


def _build_summary(build: Build) -> dict[str, Any]:
    """The fields people look at in ``builds show``, in reading order."""
    row = _build_row(build)
    summary = {
        "id": build.id,
        "project": build.project_id,
        "status": build.status,
        "reference": build.reference,
        "digest": build.digest,
        "platforms": build.platforms,
        "created": iso(build.created_at),
        "saved": iso(build.saved_at),
        "expires": row["expires"],
        "pinned": build.pinned,
        "size": row["size"],
        "unique size": human_bytes(build.unique_size) if build.unique_size is not None else None,
        "save tags": build.save_tags,
    }
    if build.failure:
        summary["failure"] = build.failure
    return summary


def _seconds(text: str, option: str) -> float:
    try:
        seconds = parse_duration(text).total_seconds()
    except ValueError as exc:
        raise CliError(f"{option}: {exc}") from None
    if seconds <= 0:
        raise CliError(f"{option} must be longer than zero (e.g. 12h, 3d)")
    return seconds


def _until(text: str | None) -> str | None:
    """``--until`` as the wire's ISO 8601 form; a time without a zone is UTC."""
    if text is None:
        return None
    try:
        return iso(parse_iso(text))
    except ValueError:
        raise CliError(f"--until {text!r} is not an ISO 8601 time; use e.g. 2026-12-31T00:00:00Z") from None


def _evictions(result: ExpiryReport, *, as_json: bool, dry_run: bool, empty: str) -> None:
    evicted = [eviction.to_json() for eviction in result.evicted]
    tags = [eviction.to_json() for eviction in result.tags]
    manifests = [collection.to_json() for collection in result.manifests]
    if as_json:
        emit(result.to_json(), as_json=True)
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
        count = sum(collection.count for collection in result.manifests)
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
    builds = result.builds
    if as_json:
        emit(result.to_json(), as_json=True)
    elif not builds:
        stdout.print(f"Project {project_id} has no builds{f' tagged {tag}' if tag else ''}.", markup=False)
    else:
        emit(
            result.to_json(),
            as_json=False,
            columns=BUILD_COLUMNS,
            rows=[_build_row(build) for build in builds],
            title=f"Builds of {project_id}",
        )
        if result.next:
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
    emit(data.to_json() if as_json else _build_summary(data), as_json=as_json)


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
    emit(
        data.to_json(),
        as_json=as_json,
        text=f"Pinned build {build}; it stays until you run `cargohold builds unpin {build}`.",
    )


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
    expires = iso(data.expires_at)
    when = f"it expires at {expires}" if expires else "it has no expiry, so only the build cap can evict it"
    emit(data.to_json(), as_json=as_json, text=f"Unpinned build {build}; {when}.")


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
    if (by is None) == (until is None):
        raise CliError("give exactly one of --by (e.g. --by 3d) or --until (e.g. --until 2026-12-31T00:00:00Z)")
    by_seconds = _seconds(by, "--by") if by is not None else None
    until_iso = _until(until)
    with _client(registry, token) as (client, _):
        data = _on_build(client, build, lambda: client.extend_build(build, by_seconds=by_seconds, until=until_iso))
    emit(data.to_json(), as_json=as_json, text=f"Build {build} now expires at {iso(data.expires_at)}.")


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
        emit(result.to_json(), as_json=True)
        return
    tags = ", ".join((result.evicted[0].tags if result.evicted else []) or [build])
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
        events = [event.to_json() for event in client.project_history(project_id, limit=limit, build_id=build)]
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
        emit(report.to_json(), as_json=True)
        return
    verb = "would free" if dry_run else "freed"
    blobs = report.blobs_deleted + report.orphan_files
    stdout.print(
        f"Garbage collection {verb} {blobs} blobs ({human_bytes(report.bytes_freed)}) and "
        f"{'would remove' if dry_run else 'removed'} {report.links_removed} links "
        f"in {report.duration_seconds:.2f} s.",
        markup=False,
    )
    if not report.completed:
        stdout.print(f"It stopped early: {report.error or 'see the server log'}.", markup=False)


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
                emit({"server_storage": storage.to_json()}, as_json=True)
            else:
                emit(_storage_rows(storage), as_json=False)
            return
        data = client.project_usage(project_id, month=month)
    if as_json:
        emit(data.to_json(), as_json=True)
        return
    currency = data.currency
    rows: dict[str, Any] = {
        "project": data.project_id,
        "month": data.month,
        "stored now": human_bytes(data.stored_bytes),
        "GB-months": f"{data.gb_months:.4f}",
        "free allowance": f"{data.free_gb_months:g} GB-months",
        "billable": f"{data.billable_gb_months:.4f} GB-months",
        "price": f"{data.price_per_gb_month:g} {currency} per GB-month",
        "estimated cost": f"{data.estimated_cost:.2f} {currency}",
        "as of": iso(data.as_of),
    }
    if data.server_storage is not None:
        rows.update(_storage_rows(data.server_storage))
    emit(rows, as_json=False)


def _storage_rows(storage: ServerStorage) -> dict[str, Any]:
    """The server's free space as ``key: value`` lines (admins): one per filesystem, then the status."""
    rows: dict[str, Any] = {}
    for fs in storage.filesystems:
        rows[f"server free space ({fs.role})"] = (
            f"{human_bytes(fs.free_bytes)} of {human_bytes(fs.total_bytes)}, "
            f"minimum {human_bytes(fs.min_free_bytes)} ({fs.path})"
        )
    rows["server storage"] = storage.reason or storage.status or "-"
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


def _tag_row(tag: Tag) -> dict[str, Any]:
    """One table row: ``repository:tag`` in one column and minutes-precision times, so it fits 80 columns
    (``--json`` has every field in full)."""
    expires = "pinned" if tag.pinned else _minutes(iso(tag.expires_at)) or "never"
    return {
        "reference": f"{tag.repository}:{tag.tag}",
        "short_digest": tag.digest.split(":", 1)[-1][:12] if tag.digest else None,
        "size": human_bytes(tag.size),
        "pushed": _minutes(iso(tag.pushed_at)),
        "expires": expires,
    }


def _minutes(moment: str | None) -> str | None:
    """``2026-05-01T12:34:56Z`` -> ``2026-05-01 12:34`` (UTC, as every time the CLI prints)."""
    return moment[:16].replace("T", " ") if moment else None


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
    tags = result.tags
    if as_json:
        emit(result.to_json(), as_json=True)
    elif not tags:
        where = f"repository {repository}" if repository else f"project {project_id}"
        stdout.print(f"No tags pushed outside builds in {where}.", markup=False)
    else:
        title = f"Tags of {repository or project_id} pushed outside builds"
        emit(result.to_json(), as_json=False, columns=TAG_COLUMNS, rows=[_tag_row(tag) for tag in tags], title=title)
        if result.next:
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
    emit(data.to_json(), as_json=as_json, text=text)


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
    expires = iso(data.expires_at)
    when = f"it expires at {expires}" if expires else "its project keeps images without a time limit"
    emit(data.to_json(), as_json=as_json, text=f"Unpinned {repository}:{tag}; {when}.")


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
    repository, tag = _tag_reference(reference)
    if (by is None) == (until is None):
        raise CliError("give exactly one of --by (e.g. --by 3d) or --until (e.g. --until 2026-12-31T00:00:00Z)")
    by_seconds = _seconds(by, "--by") if by is not None else None
    until_iso = _until(until)
    with _client(registry, token) as (client, _):
        data = _on_tag(
            client, reference, lambda: client.extend_tag(repository, tag, by_seconds=by_seconds, until=until_iso)
        )
    emit(data.to_json(), as_json=as_json, text=f"{repository}:{tag} now expires at {iso(data.expires_at)}.")
