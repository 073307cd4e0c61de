"""``cargohold save``, ``build``, ``pull`` and ``push``: thin typer wrappers over :mod:`cargohold.images`.

Everything that moves bytes lives in the images package (the GitHub Actions call the same functions);
this module parses flags, picks the progress style, prints the summary (or ``--json``) and turns failures
into one sentence via :func:`~cargohold.cli.context.handle_errors`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
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
    handle_errors,
    stdout,
)
from cargohold.cli.main import app
from cargohold.client.copy import DEFAULT_JOBS
from cargohold.images.progress import MODES, Progress, human_bytes, make_progress

ProgressOption = Annotated[
    str,
    typer.Option("--progress", help="auto (bars on a terminal, plain lines in CI), tty, plain or quiet.",
                 envvar="CARGOHOLD_PROGRESS"),
]
JobsOption = Annotated[int, typer.Option("--jobs", "-j", min=1, max=64, help="Blobs transferred in parallel.")]
MetadataOption = Annotated[
    Path | None,
    typer.Option("--metadata-file", help="Write buildx-style JSON metadata (digest, descriptor, build ID) here.",
                 show_default=False),
]
SaveTagOption = Annotated[
    list[str] | None, typer.Option("--save-tag", help="Also name the build PROJECT:TAG (repeatable).",
                                   show_default=False)
]
PlatformOption = Annotated[
    str | None, typer.Option("--platform", help="os/arch[/variant] to pick from a multi-platform image.",
                             show_default=False)
]


@contextmanager
def _errors() -> Iterator[None]:
    """Image-layer failures are already one sentence; hand them to the shared error printer."""
    from cargohold.images.common import ImageError
    from cargohold.oci.archive import ArchiveError
    from cargohold.oci.imageref import ImageReferenceError
    from cargohold.oci.layout import LayoutError

    with handle_errors():
        try:
            yield
        except (ImageError, ArchiveError, LayoutError, ImageReferenceError) as exc:
            raise CliError(str(exc)) from None


def _progress(mode: str, as_json: bool) -> Progress:
    if mode not in MODES:
        raise CliError(f"--progress must be one of {', '.join(MODES)}; got {mode!r}")
    # With --json, stdout is for the document only; progress still goes to stderr unless asked otherwise.
    return make_progress(mode)


def _print_save(result: Any, as_json: bool) -> None:
    save = result
    data = {k: v for k, v in asdict(save).items() if k != "build"}
    data["pull_command"] = save.pull_command
    data["push_command"] = save.push_command
    if as_json:
        emit(data, as_json=True)
        return
    stdout.print(f"Saved build {save.build_id}", markup=False)
    emit({
        "reference": save.reference,
        "digest": save.digest,
        "platforms": save.platforms,
        "size": f"{human_bytes(save.total_size)} total, {human_bytes(save.uploaded_size)} newly uploaded "
                f"({save.uploaded_blobs} blobs uploaded, {save.skipped_blobs} already present)",
        "save tags": save.save_tags,
    }, as_json=False)
    stdout.print("Next:", markup=False)
    stdout.print(f"  pull:  {save.pull_command}", markup=False)
    stdout.print(f"  push:  {save.push_command}", markup=False)


@app.command(rich_help_panel="Images")
def save(
    source: Annotated[str, typer.Argument(help="oci:DIR[:REF], oci-archive:FILE, docker-archive:FILE or "
                                               "docker-daemon:IMAGE.", show_default=False)],
    save_tag: SaveTagOption = None,
    metadata_file: MetadataOption = None,
    jobs: JobsOption = DEFAULT_JOBS,
    progress: ProgressOption = "auto",
    registry: RegistryOption = None,
    project: ProjectOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Save an image (layout, archive or local Docker image) as a new build."""
    from cargohold.images.save import save_image

    with _errors():
        connection = connect(registry, project, token, need_project=True)
        result = save_image(connection, source, save_tags=save_tag or [], metadata_file=metadata_file, jobs=jobs,
                            progress=_progress(progress, as_json))
        _print_save(result, as_json)


@app.command(rich_help_panel="Images")
def build(
    path: Annotated[str, typer.Argument(help="Build context directory.")] = ".",
    file: Annotated[str | None, typer.Option("--file", "-f", help="Dockerfile path.", show_default=False)] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="Image name (repeatable); --push pushes "
                                                  "to these.", show_default=False)] = None,
    build_arg: Annotated[list[str] | None, typer.Option("--build-arg", help="KEY=VALUE (repeatable).",
                                                        show_default=False)] = None,
    target: Annotated[str | None, typer.Option("--target", help="Stage to build.", show_default=False)] = None,
    platform: Annotated[list[str] | None, typer.Option("--platform", help="os/arch (repeatable or "
                                                       "comma-separated; several need buildx).",
                                                       show_default=False)] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE (repeatable).",
                                                    show_default=False)] = None,
    secret: Annotated[list[str] | None, typer.Option("--secret", help="id=ID,src=FILE or id=ID,env=VAR "
                                                     "(repeatable).", show_default=False)] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not use the build cache.")] = False,
    pull: Annotated[bool, typer.Option("--pull", help="Always pull base images.")] = False,
    save: Annotated[bool, typer.Option("--save", help="Save the result to Cargohold as a new build.")] = False,
    save_tag: SaveTagOption = None,
    load: Annotated[bool, typer.Option("--load", help="Also leave the image in the local Docker daemon.")] = False,
    push: Annotated[bool, typer.Option("--push", help="Also push the saved build to the -t tags.")] = False,
    builder: Annotated[str | None, typer.Option("--builder", help="docker-buildx, docker or buildah "
                                                "(default: the first available).", show_default=False)] = None,
    metadata_file: MetadataOption = None,
    jobs: JobsOption = DEFAULT_JOBS,
    progress: ProgressOption = "auto",
    registry: RegistryOption = None,
    project: ProjectOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Build an image with docker buildx, docker or buildah, and (--save) save it as a new build."""
    from cargohold.images.build import BuildOptions, build_and_save

    with _errors():
        connection = connect(registry, project, token, context_dir=Path(path), need_project=True) if save else None
        options = BuildOptions(
            context=path, file=file, tags=tag or [], build_args=build_arg or [], target=target,
            platforms=[p.strip() for item in platform or [] for p in item.split(",") if p.strip()],
            labels=label or [], secrets=secret or [], no_cache=no_cache, pull=pull,
        )
        result = build_and_save(
            connection, options, builder=builder, save=save, save_tags=save_tag or [], load=load, push=push,
            metadata_file=metadata_file, jobs=jobs, progress=_progress(progress, as_json),
        )
        if result.save is not None:
            _print_save(result.save, as_json)
        elif as_json:
            emit({"builder": result.builder, "imageid": result.imageid, "loaded": result.loaded}, as_json=True)
        else:
            stdout.print(f"Built with {result.builder}" + (f": {result.imageid}" if result.imageid else ""),
                         markup=False)
        if result.push is not None and not as_json:
            _print_push(result.push, as_json=False)


@app.command(name="pull", rich_help_panel="Images")
def pull_command(
    ref: Annotated[str, typer.Argument(help="BUILD_ID, PROJECT:TAG or REGISTRY/PROJECT:TAG.", show_default=False)],
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="Name in the local daemon (repeatable; "
                                                  "default the build's reference).", show_default=False)] = None,
    platform: PlatformOption = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="oci:DIR, oci-archive:FILE or "
                                               "docker-archive:FILE instead of the Docker daemon.",
                                               show_default=False)] = None,
    all_platforms: Annotated[bool, typer.Option("--all-platforms", help="Keep every platform (OCI outputs).")] = False,
    jobs: JobsOption = DEFAULT_JOBS,
    progress: ProgressOption = "auto",
    registry: RegistryOption = None,
    project: ProjectOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pull a saved build into the local Docker daemon, or into an OCI layout or archive."""
    from cargohold.images.pull import pull_image

    with _errors():
        connection = connect(registry, project, token)
        result = pull_image(connection, ref, tags=tag or [], platform=platform, output=output,
                            all_platforms=all_platforms, jobs=jobs, progress=_progress(progress, as_json))
        if as_json:
            emit(asdict(result), as_json=True)
            return
        stdout.print(f"Pulled build {result.build_id} to {result.output}", markup=False)
        emit({"image": result.image, "digest": result.digest, "platform": result.platform or "all",
              "size": human_bytes(result.size)}, as_json=False)


def _print_push(result: Any, *, as_json: bool) -> None:
    if as_json:
        emit(asdict(result), as_json=True)
        return
    for item in result.results:
        stdout.print(f"pushed {item.tag}@{item.digest} ({item.uploaded} uploaded "
                     f"{human_bytes(item.uploaded_size)}, {item.mounted} mounted, {item.skipped} already there)",
                     markup=False)


@app.command(name="push", rich_help_panel="Images")
def push_command(
    build_id: Annotated[str, typer.Argument(help="BUILD_ID or PROJECT:TAG.", show_default=False)],
    tag: Annotated[list[str], typer.Option("--tag", "-t", help="REGISTRY/REPOSITORY:TAG destination (repeatable).",
                                           show_default=False)],
    platform: PlatformOption = None,
    jobs: JobsOption = DEFAULT_JOBS,
    progress: ProgressOption = "auto",
    registry: RegistryOption = None,
    project: ProjectOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Copy a saved build to its final registry (credentials: CARGOHOLD_PUSH_REGISTRY_* or the Docker config)."""
    from cargohold.images.push import push_image

    with _errors():
        connection = connect(registry, project, token)
        result = push_image(connection, build_id, tag, platform=platform, jobs=jobs,
                            progress=_progress(progress, as_json))
        _print_push(result, as_json=as_json)
