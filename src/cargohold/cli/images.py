"""``cargohold save``, ``build``, ``pull`` and ``push``: thin click wrappers over :mod:`cargohold.images`.

Everything that moves bytes lives in the images package (the GitHub Actions call the same functions);
this module parses flags, picks the progress style, prints the summary (or ``--json``) and turns failures
into one sentence via :func:`~cargohold.cli.context.handle_errors`. The images and client packages are
imported inside the commands, so ``--help`` and option parsing do not pay for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cargohold.cli.context import (
    CliError,
    connect,
    emit,
    handle_errors,
    json_option,
    project_option,
    registry_option,
    stdout,
    token_option,
)
from cargohold.cli.main import app, argument

if TYPE_CHECKING:
    from pathlib import Path

    from cargohold.images.progress import Progress

DEFAULT_JOBS = 6
"""``--jobs`` default: the value of :data:`cargohold.client.copy.DEFAULT_JOBS` (a test keeps them equal), repeated
here because importing the client library costs more than the rest of a ``--help``."""

progress_option = click.option(
    "--progress",
    default="auto",
    envvar="CARGOHOLD_PROGRESS",
    show_envvar=True,
    help="auto (bars on a terminal, plain lines in CI), tty, plain or quiet.",
)
jobs_option = click.option(
    "--jobs", "-j", type=click.IntRange(1, 64), default=DEFAULT_JOBS, help="Blobs transferred in parallel."
)
metadata_option = click.option(
    "--metadata-file",
    type=click.Path(),
    show_default=False,
    help="Write buildx-style JSON metadata (digest, descriptor, build ID) here.",
)
save_tag_option = click.option(
    "--save-tag", multiple=True, show_default=False, help="Also name the build PROJECT:TAG (repeatable)."
)
platform_option = click.option(
    "--platform", show_default=False, help="os/arch[/variant] to pick from a multi-platform image."
)

F = TypeVar("F", bound=Callable[..., Any])


def pass_through_options(command: F) -> F:
    """One option per flag of :data:`cargohold.build_flags.PASS_THROUGH` (``--cache-from``, ``--ssh``, ...),
    passed to the builder as given; a builder that lacks one fails naming it."""
    from cargohold.build_flags import BUILDERS, PASS_THROUGH

    names = {"docker-buildx": "buildx", "buildah": "buildah", "docker": "docker build"}
    for spec in reversed(PASS_THROUGH):
        builders = ", ".join(names[b] for b in BUILDERS if b in spec.builders)
        command = click.option(
            spec.flag,
            spec.field,
            multiple=spec.repeatable,
            show_default=False,
            help=f"Passed to the builder{' (repeatable)' if spec.repeatable else ''}: {builders}.",
        )(command)
    return command


def transfer_options(command: F) -> F:
    """The options every image command ends with, in this order: --jobs, --progress, --registry, --project,
    --token, --json."""
    for option in (json_option, token_option, project_option, registry_option, progress_option, jobs_option):
        command = option(command)
    return command


def _path(value: str | None) -> Path | None:
    from pathlib import Path

    return Path(value) if value is not None else None


def _progress(mode: str, as_json: bool) -> Progress:
    from cargohold.images.progress import MODES, make_progress

    if mode not in MODES:
        raise CliError(f"--progress must be one of {', '.join(MODES)}; got {mode!r}")
    # With --json, stdout is for the document only; progress still goes to stderr unless asked otherwise.
    return make_progress(mode)


def _print_save(result: Any, as_json: bool) -> None:
    from cargohold.images.progress import human_bytes

    save = result
    data = {k: v for k, v in asdict(save).items() if k != "build"}
    data["pull_command"] = save.pull_command
    data["push_command"] = save.push_command
    if as_json:
        emit(data, as_json=True)
        return
    stdout.print(f"Saved build {save.build_id}", markup=False)
    emit(
        {
            "reference": save.reference,
            "digest": save.digest,
            "platforms": save.platforms,
            "size": f"{human_bytes(save.total_size)} total, {human_bytes(save.uploaded_size)} newly uploaded "
            f"({save.uploaded_blobs} blobs uploaded, {save.skipped_blobs} already present)",
            "save tags": save.save_tags,
        },
        as_json=False,
    )
    stdout.print("Next:", markup=False)
    stdout.print(f"  pull:  {save.pull_command}", markup=False)
    stdout.print(f"  push:  {save.push_command}", markup=False)


@app.command()
@argument("source", help="oci:DIR[:REF], oci-archive:FILE, docker-archive:FILE or docker-daemon:IMAGE.")
@save_tag_option
@click.option(
    "--target",
    "targets",
    multiple=True,
    show_default=False,
    help="NAME=SOURCE: also save a bake target's image in this build (repeatable; pull it with --target NAME).",
)
@metadata_option
@transfer_options
def save(
    source: str,
    save_tag: tuple[str, ...],
    targets: tuple[str, ...],
    metadata_file: str | None,
    jobs: int,
    progress: str,
    registry: str | None,
    project: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Save an image (layout, archive or local Docker image) as a new build."""
    from cargohold.images.save import save_image

    with handle_errors():
        named: dict[str, str] = {}
        for item in targets:
            name, sep, target_source = item.partition("=")
            if not sep or not name.strip() or not target_source.strip():
                raise CliError(f"--target {item!r} is not NAME=SOURCE; write e.g. --target app=oci:out/app")
            if name.strip() in named:
                raise CliError(f"--target {name.strip()} is given twice; name each target once")
            named[name.strip()] = target_source.strip()
        connection = connect(registry, project, token, need_project=True)
        result = save_image(
            connection,
            source,
            save_tags=list(save_tag),
            targets=named,
            metadata_file=_path(metadata_file),
            jobs=jobs,
            progress=_progress(progress, as_json),
        )
        _print_save(result, as_json)


@app.command()
@argument("path", default=".", help="Build context directory.")
@click.option("--file", "-f", help="Dockerfile path.", show_default=False)
@click.option("--tag", "-t", multiple=True, help="Image name (repeatable); --push pushes to these.", show_default=False)
@click.option("--build-arg", multiple=True, help="KEY=VALUE (repeatable).", show_default=False)
@click.option("--target", help="Stage to build.", show_default=False)
@click.option(
    "--platform",
    multiple=True,
    help="os/arch (repeatable or comma-separated; several need buildx).",
    show_default=False,
)
@click.option("--label", multiple=True, help="KEY=VALUE (repeatable).", show_default=False)
@click.option("--secret", multiple=True, help="id=ID,src=FILE or id=ID,env=VAR (repeatable).", show_default=False)
@click.option("--no-cache", is_flag=True, help="Do not use the build cache.")
@click.option("--pull", is_flag=True, help="Always pull base images.")
@click.option("--save", is_flag=True, help="Save the result to Cargohold as a new build.")
@save_tag_option
@click.option("--load", is_flag=True, help="Also leave the image in the local Docker daemon.")
@click.option("--push", is_flag=True, help="Also push the saved build to the -t tags.")
@click.option(
    "--builder",
    show_default=False,
    help="docker-buildx, docker, buildah, or a buildx builder name (default: the first available).",
)
@pass_through_options
@metadata_option
@transfer_options
def build(
    path: str,
    file: str | None,
    tag: tuple[str, ...],
    build_arg: tuple[str, ...],
    target: str | None,
    platform: tuple[str, ...],
    label: tuple[str, ...],
    secret: tuple[str, ...],
    no_cache: bool,
    pull: bool,
    save: bool,
    save_tag: tuple[str, ...],
    load: bool,
    push: bool,
    builder: str | None,
    metadata_file: str | None,
    jobs: int,
    progress: str,
    registry: str | None,
    project: str | None,
    token: str | None,
    as_json: bool,
    **pass_through: Any,
) -> None:
    """Build an image with docker buildx, docker or buildah, and (--save) save it as a new build."""
    from pathlib import Path

    from cargohold.images.build import BuildOptions, build_and_save

    with handle_errors():
        connection = connect(registry, project, token, context_dir=Path(path), need_project=True) if save else None
        flags: dict[str, Any] = {
            name: list(value) if isinstance(value, tuple) else value for name, value in pass_through.items()
        }
        options = BuildOptions(
            context=path,
            file=file,
            tags=list(tag),
            build_args=list(build_arg),
            target=target,
            platforms=[p.strip() for item in platform for p in item.split(",") if p.strip()],
            labels=list(label),
            secrets=list(secret),
            no_cache=no_cache,
            pull=pull,
            **flags,
        )
        result = build_and_save(
            connection,
            options,
            builder=builder,
            save=save,
            save_tags=list(save_tag),
            load=load,
            push=push,
            metadata_file=_path(metadata_file),
            jobs=jobs,
            progress=_progress(progress, as_json),
        )
        if result.save is not None:
            _print_save(result.save, as_json)
        elif as_json:
            emit({"builder": result.builder, "imageid": result.imageid, "loaded": result.loaded}, as_json=True)
        else:
            stdout.print(
                f"Built with {result.builder}" + (f": {result.imageid}" if result.imageid else ""), markup=False
            )
        if result.push is not None and not as_json:
            _print_push(result.push, as_json=False)


@app.command(name="pull")
@argument("ref", help="BUILD_ID, a save-tag of the configured project, PROJECT:TAG or REGISTRY/PROJECT:TAG.")
@click.option(
    "--tag",
    "-t",
    multiple=True,
    show_default=False,
    help="Name in the local daemon (repeatable; default the build's reference).",
)
@platform_option
@click.option(
    "--output",
    "-o",
    help="oci:DIR, oci-archive:FILE or docker-archive:FILE instead of the Docker daemon.",
    show_default=False,
)
@click.option("--all-platforms", is_flag=True, help="Keep every platform (OCI outputs).")
@click.option(
    "--target",
    "targets",
    multiple=True,
    show_default=False,
    help="Bake target of a build saved with several (repeatable; with several, each -t gets -TARGET appended).",
)
@transfer_options
def pull_command(
    ref: str,
    tag: tuple[str, ...],
    platform: str | None,
    output: str | None,
    all_platforms: bool,
    targets: tuple[str, ...],
    jobs: int,
    progress: str,
    registry: str | None,
    project: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Pull a saved build into the local Docker daemon, or into an OCI layout or archive.

    REF is a build ID, a save-tag of the configured project (cargohold pull main), or PROJECT:TAG. A word
    shaped like a build ID (10 lower-case letters and digits, a letter first) is looked up as a build first.
    """
    from cargohold.images.progress import human_bytes
    from cargohold.images.pull import pull_image

    with handle_errors():
        if len(targets) > 1 and output:
            raise CliError("an --output holds one image; pull one --target at a time into a file or layout")
        connection = connect(registry, project, token)
        results = [
            pull_image(
                connection,
                ref,
                tags=target_tags(list(tag), target, len(targets)),
                platform=platform,
                output=output,
                all_platforms=all_platforms,
                jobs=jobs,
                progress=_progress(progress, as_json),
                target=target,
            )
            for target in (targets or (None,))
        ]
        if as_json:
            emit(asdict(results[0]) if len(results) == 1 else {"pulls": [asdict(r) for r in results]}, as_json=True)
            return
        for result in results:
            what = f"build {result.build_id}" + (f" target {result.target}" if result.target else "")
            stdout.print(f"Pulled {what} to {result.output}", markup=False)
            emit(
                {
                    "image": result.image,
                    "digest": result.digest,
                    "platform": result.platform or "all",
                    "size": human_bytes(result.size),
                },
                as_json=False,
            )


def target_tags(tags: list[str], target: str | None, count: int) -> list[str]:
    """Several targets into one set of names: each name gets ``-<target>`` appended (as Depot does)."""
    if target is None or count <= 1:
        return tags
    return [f"{tag}-{target}" for tag in tags]


def _print_push(result: Any, *, as_json: bool) -> None:
    from cargohold.images.progress import human_bytes

    if as_json:
        emit(asdict(result), as_json=True)
        return
    for item in result.results:
        by_server = (
            " by the Cargohold server"
            if item.server_pushed == item.uploaded and item.uploaded
            else (f", {item.server_pushed} of them by the Cargohold server" if item.server_pushed else "")
        )
        stdout.print(
            f"pushed {item.tag}@{item.digest} ({item.uploaded} uploaded "
            f"{human_bytes(item.uploaded_size)}{by_server}, {item.mounted} mounted, "
            f"{item.skipped} already there)",
            markup=False,
        )


@app.command(name="push")
@argument("build_id", help="BUILD_ID, a save-tag of the configured project, or PROJECT:TAG.")
@click.option(
    "--tag",
    "-t",
    multiple=True,
    required=True,
    help="REGISTRY/REPOSITORY:TAG destination (repeatable).",
    show_default=False,
)
@platform_option
@click.option(
    "--transfer",
    type=click.Choice(["auto", "server", "client"]),
    default="auto",
    envvar="CARGOHOLD_PUSH_TRANSFER",
    show_envvar=True,
    help="Who uploads the blobs: the Cargohold server (bytes skip this machine), this client, or auto "
    "(the server when it can).",
)
@click.option(
    "--insecure-registry",
    multiple=True,
    envvar="CARGOHOLD_INSECURE_REGISTRIES",
    show_envvar=True,
    help="Destination HOST[:PORT] to push to over plain HTTP (repeatable; env: comma-separated). "
    "Loopback hosts always use HTTP.",
    show_default=False,
)
@click.option("--target", show_default=False, help="Bake target to push, of a build saved with several.")
@transfer_options
def push_command(
    build_id: str,
    tag: tuple[str, ...],
    platform: str | None,
    transfer: str,
    insecure_registry: tuple[str, ...],
    target: str | None,
    jobs: int,
    progress: str,
    registry: str | None,
    project: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Copy a saved build to its final registry (credentials: CARGOHOLD_PUSH_REGISTRY_* or the Docker config)."""
    from cargohold.images.push import push_image

    with handle_errors():
        connection = connect(registry, project, token)
        result = push_image(
            connection,
            build_id,
            list(tag),
            platform=platform,
            jobs=jobs,
            progress=_progress(progress, as_json),
            transfer=transfer,
            insecure_registries=list(insecure_registry) or None,
            target=target,
        )
        _print_push(result, as_json=as_json)
