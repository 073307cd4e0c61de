"""Keyword-only entry points in the shape the GitHub Actions code (``cargohold.actions``) calls.

The actions pass plain strings from workflow inputs (registry URL, token, build id or project + save-tag)
rather than a :class:`Connection`; these adapters build one and delegate, so the actions and the CLI run the
same code. Progress is plain lines: an Actions log is not a terminal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cargohold.client.retry import RetryPolicy
from cargohold.client.settings import Connection, normalize_registry_url
from cargohold.images.build import BuildOptions, BuildResult, build_and_save
from cargohold.images.common import ImageError
from cargohold.images.progress import PlainProgress
from cargohold.images.pull import PullResult, pull_image
from cargohold.images.push import PushResult, push_image
from cargohold.images.save import save_image

SOURCE_PREFIXES = ("oci:", "oci-archive:", "docker-archive:", "docker-daemon:")


def _connection(registry: str, token: str | None, project: str | None, retry: RetryPolicy | None) -> Connection:
    return Connection(normalize_registry_url(registry), token, "GitHub Actions", project, retry or RetryPolicy())


def _optional_connection(
    registry: str | None, token: str | None, project: str | None, retry: RetryPolicy | None
) -> Connection | None:
    """No connection without a registry: ``save: false`` (a fork pull request) never talks to Cargohold."""
    return _connection(registry, token, project, retry) if registry else None


def _ref(build_id: str | None, project: str | None, save_tag: str | None) -> str:
    if build_id:
        return build_id
    if project and save_tag:
        return f"{project}:{save_tag}"
    raise ImageError("name the build: pass build-id, or project and a save-tag")


def save_build(
    *,
    registry: str | None,
    token: str | None,
    project: str | None,
    image: str | None = None,
    context: str = ".",
    file: str | None = None,
    tags: Sequence[str] = (),
    labels: Sequence[str] = (),
    build_args: Sequence[str] = (),
    target: str | None = None,
    platforms: Sequence[str] = (),
    secrets: Mapping[str, str] | None = None,
    no_cache: bool = False,
    pull: bool = False,
    push: bool = False,
    load: bool = False,
    provenance: str | None = None,
    sbom: str | None = None,
    builder: str | None = None,
    save: bool = True,
    save_tags: Sequence[str] = (),
    metadata_file: str | None = None,
    retry: RetryPolicy | None = None,
    secret_specs: Sequence[str] = (),
    pass_through: Mapping[str, Any] | None = None,
) -> Any:
    """action-build: save ``image`` (a source string such as ``docker-daemon:app:ci``) or build ``context``.

    ``pass_through`` holds the further build flags by :class:`BuildOptions` field name (``cache_from``,
    ``ssh``, ...; see :data:`cargohold.images.build.PASS_THROUGH`); a builder that cannot apply one fails.
    """
    connection = _optional_connection(registry, token, project, retry) if save else None
    progress = PlainProgress()
    if image:
        if connection is None:
            raise ImageError("saving an existing image needs a Cargohold registry; set the 'registry' input")
        # A bare image name (app:ci) means an image an earlier step left in the local daemon.
        source = image if image.startswith(SOURCE_PREFIXES) else f"docker-daemon:{image}"
        return save_image(connection, source, save_tags=save_tags, metadata_file=metadata_file, progress=progress)
    options = BuildOptions(
        context=context,
        file=file,
        tags=list(tags),
        build_args=list(build_args),
        target=target,
        platforms=list(platforms),
        labels=list(labels),
        secret_values=dict(secrets or {}),
        secrets=list(secret_specs),
        no_cache=no_cache,
        pull=pull,
        provenance=provenance,
        sbom=sbom,
        **dict(pass_through or {}),
    )
    result: BuildResult = build_and_save(
        connection,
        options,
        builder=builder,
        save=save,
        save_tags=save_tags,
        load=load,
        push=push,
        metadata_file=metadata_file,
        progress=progress,
    )
    return result


def pull_build(
    *,
    registry: str,
    token: str | None,
    build_id: str | None = None,
    project: str | None = None,
    save_tag: str | None = None,
    platform: str | None = None,
    tags: Sequence[str] = (),
    output: str = "docker",
    output_path: str | None = None,
    retry: RetryPolicy | None = None,
    target: str | None = None,
) -> PullResult:
    """action-pull: ``output`` is ``docker``, ``oci`` or ``docker-archive`` with ``output_path``; ``build_id``
    may also be a bare save-tag of ``project``."""
    spec = None if output in ("", "docker") else f"{output}:{output_path}"
    return pull_image(
        _connection(registry, token, project, retry),
        _ref(build_id, project, save_tag),
        tags=tags,
        platform=platform,
        output=spec,
        progress=PlainProgress(),
        target=target,
    )


def push_build(
    *,
    registry: str,
    token: str | None,
    build_id: str | None = None,
    project: str | None = None,
    save_tag: str | None = None,
    tags: Sequence[str] = (),
    platform: str | None = None,
    username: str | None = None,
    password: str | None = None,
    transfer: str = "auto",
    retry: RetryPolicy | None = None,
    target: str | None = None,
) -> PushResult:
    """action-push: copy the build to ``tags`` with explicit credentials or the Docker config."""
    return push_image(
        _connection(registry, token, project, retry),
        _ref(build_id, project, save_tag),
        tags,
        platform=platform,
        username=username,
        password=password,
        progress=PlainProgress(),
        transfer=transfer,
        target=target,
    )
