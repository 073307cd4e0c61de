"""``cargohold build --save``: run the image build with a local builder, then save the result.

Builders, in order of preference (``builder=`` forces one):

* ``docker-buildx``: ``docker buildx build --output type=oci,dest=FILE``. The OCI export keeps
  multi-platform indexes and BuildKit's attestation manifests exactly as built, so it is the best input.
  Except on buildx's default ``docker`` driver, which refuses OCI export unless the daemon uses the
  containerd image store (the classic store is what Debian's docker.io and many CI hosts run): there a
  single-platform build goes into the daemon (``--load --iidfile``) and is exported from it as below;
* ``docker``: ``docker build``; the image is then exported from the daemon (``GET /images/{id}/get``);
* ``buildah``: ``buildah bud`` then ``buildah push ID oci-archive:FILE`` (honours ``STORAGE_DRIVER``,
  ``BUILDAH_ISOLATION`` and ``CONTAINERS_STORAGE_CONF`` from the environment, which is how rootless CI
  runners configure it).

The builder's output is relayed line by line to the progress stream and its tail is kept, so a failed
build's error message shows the lines that explain it.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cargohold.build_flags import BUILDERS, PASS_THROUGH, BuilderFlag
from cargohold.client.copy import DEFAULT_JOBS
from cargohold.client.settings import Connection
from cargohold.images.common import ImageError
from cargohold.images.docker import DockerEngine, host_platform_string, load_from_writer
from cargohold.images.progress import Progress
from cargohold.images.push import PushResult, push_image
from cargohold.images.save import SaveResult, save_opened
from cargohold.images.sources import OpenedSource, SourceSpec, open_source
from cargohold.oci.archive import write_docker_archive

TAIL_LINES = 20


@dataclass
class BuildOptions:
    """The build flags passed through to the builder (names as ``docker build``)."""

    context: str = "."
    file: str | None = None
    tags: list[str] = field(default_factory=list)
    build_args: list[str] = field(default_factory=list)
    target: str | None = None
    platforms: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    """Raw ``--secret`` specs (``id=x,src=path`` / ``id=x,env=VAR``)."""
    secret_values: dict[str, str] = field(default_factory=dict, repr=False)
    """``{id: value}``, passed to the builder through environment variables, never argv."""
    no_cache: bool = False
    pull: bool = False
    build_contexts: list[str] = field(default_factory=list)
    ssh: list[str] = field(default_factory=list)
    cache_from: list[str] = field(default_factory=list)
    cache_to: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    """Extra buildx exports, next to the one Cargohold reads the result from."""
    annotations: list[str] = field(default_factory=list)
    attests: list[str] = field(default_factory=list)
    add_hosts: list[str] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)
    no_cache_filters: list[str] = field(default_factory=list)
    network: str | None = None
    shm_size: str | None = None
    ulimits: list[str] = field(default_factory=list)
    cgroup_parent: str | None = None
    provenance: str | None = None
    sbom: str | None = None


def pass_through_flags(options: BuildOptions, builder: str) -> list[str]:
    """The pass-through flags for ``builder``; one that it cannot apply raises :class:`ImageError`."""
    flags: list[str] = []
    refused: list[BuilderFlag] = []
    for spec in PASS_THROUGH:
        value = getattr(options, spec.field)
        values = value if isinstance(value, list) else ([value] if value else [])
        if not values:
            continue
        if builder not in spec.builders:
            refused.append(spec)
            continue
        for item in values:
            flags += [spec.flag, item]
    if refused:
        names = ", ".join(f"{spec.flag} (input '{spec.input}')" for spec in refused)
        able = sorted({b for spec in refused for b in spec.builders} - {builder})
        raise ImageError(
            f"the {builder} builder cannot apply {names}; use --builder {' or '.join(able)} "
            "(the action's 'builder' input), or remove it"
        )
    return flags


@dataclass
class BuiltImage:
    builder: str
    source: SourceSpec
    image_id: str | None = None


@dataclass
class BuildResult:
    """A build and, when saved, everything :class:`SaveResult` reports (empty values when not saved)."""

    builder: str
    imageid: str | None
    save: SaveResult | None
    push: PushResult | None = None
    loaded: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        # build_id, digest, metadata, … of the save, so callers can treat a build like a save.
        if name in SaveResult.__dataclass_fields__ or name in ("pull_command", "push_command"):
            save = self.__dict__.get("save")
            if save is None:
                return {"metadata": {}, "platforms": [], "save_tags": []}.get(name)
            return getattr(save, name)
        raise AttributeError(name)


def _docker_available(docker_host: str | None) -> bool:
    if shutil.which("docker") is None:
        return False
    engine = DockerEngine(docker_host) if docker_host else DockerEngine.from_env()
    with engine:
        return engine.ping()


def _buildx_available() -> bool:
    try:
        probe = subprocess.run(["docker", "buildx", "version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _buildx_driver(env: Mapping[str, str], instance: str | None = None) -> str | None:
    """The driver of the buildx builder ``instance`` (default: the current one): ``docker``,
    ``docker-container``, ``kubernetes`` or ``remote``; ``None`` when buildx cannot inspect it."""
    try:
        probe = subprocess.run(
            ["docker", "buildx", "inspect", *([instance] if instance else [])],
            capture_output=True,
            text=True,
            env=dict(env),
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if probe.returncode != 0:
        return None
    for line in probe.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Driver":
            return value.strip()
    return None


def detect_builder(preferred: str | None = None, *, docker_host: str | None = None) -> str:
    """The builder to use; a missing one is one sentence naming what to install or start."""
    if preferred is not None and preferred not in BUILDERS:
        raise ImageError(f"--builder must be one of {', '.join(BUILDERS)}, not {preferred!r}")
    if preferred in ("docker-buildx", "docker"):
        if shutil.which("docker") is None:
            raise ImageError(
                "the docker CLI is not installed; install Docker (docker-ce or docker.io), or use --builder buildah"
            )
        if not _docker_available(docker_host):
            raise ImageError("the Docker daemon is not running or not reachable; start it or set DOCKER_HOST")
        if preferred == "docker-buildx" and not _buildx_available():
            raise ImageError(
                "docker buildx is not installed; install the docker-buildx plugin, or use --builder docker"
            )
        return preferred
    if preferred == "buildah":
        if shutil.which("buildah") is None:
            raise ImageError("buildah is not installed; install it (apt-get install buildah) or use another --builder")
        return preferred
    if _docker_available(docker_host):
        return "docker-buildx" if _buildx_available() else "docker"
    if shutil.which("buildah") is not None:
        return "buildah"
    raise ImageError(
        "no image builder found: install Docker with the buildx plugin and start the daemon, or install buildah"
    )


def _run(argv: list[str], what: str, progress: Progress, env: Mapping[str, str] | None = None) -> None:
    """Run a builder command, relaying its output; a failure carries the last lines of that output."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise ImageError(f"cannot run {argv[0]}: {exc}") from None
    assert proc.stdout is not None
    with proc.stdout:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            progress.step(line)
    code = proc.wait()
    if code != 0:
        details = " | ".join(line.strip() for line in tail if line.strip())[-1500:]
        raise ImageError(f"{what} failed (exit {code}): {details or 'no output'}")


def _common_flags(options: BuildOptions, env: dict[str, str], *, legacy: bool = False) -> list[str]:
    flags: list[str] = []
    if options.file:
        flags += ["--file", options.file]
    for arg in options.build_args:
        flags += ["--build-arg", arg]
    if options.target:
        flags += ["--target", options.target]
    for label in options.labels:
        flags += ["--label", label]
    for spec in options.secrets:
        flags += ["--secret", spec]
    for index, (key, value) in enumerate(sorted(options.secret_values.items())):
        variable = f"CARGOHOLD_BUILD_SECRET_{index}"
        env[variable] = value
        flags += ["--secret", f"id={key},env={variable}"]
    if options.no_cache:
        flags.append("--no-cache")
    if options.pull:
        flags.append("--pull" if not legacy else "--pull=true")
    return flags


def build_image(
    options: BuildOptions,
    workdir: Path,
    *,
    builder: str | None = None,
    progress: Progress | None = None,
    docker_host: str | None = None,
) -> BuiltImage:
    """Run the build; returns where the result can be read (an OCI archive or a daemon image).

    ``builder`` is ``docker-buildx``, ``docker`` or ``buildah``, or else the name of a buildx builder
    instance (what ``docker/setup-buildx-action`` outputs and ``docker/build-push-action`` takes as
    ``builder``), which means buildx with ``--builder NAME``.
    """
    progress = progress or Progress()
    instance = None
    if builder is not None and builder not in BUILDERS:
        if not builder.replace("-", "").replace("_", "").isalnum():
            raise ImageError(
                f"--builder {builder!r} is neither docker-buildx, docker, buildah nor a buildx builder name"
            )
        instance, builder = builder, "docker-buildx"
    chosen = detect_builder(builder, docker_host=docker_host)
    if not Path(options.context).is_dir():
        raise ImageError(f"the build context {options.context} is not a directory; pass the directory to build")
    env = dict(os.environ)
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    progress.step(f"building {options.context} with {chosen}")
    iidfile = workdir / "image.id"
    if chosen == "docker-buildx":
        driver = _buildx_driver(env, instance)
        if instance is not None and driver is None:
            raise ImageError(
                f"docker buildx has no builder named {instance!r} (docker buildx ls lists them); "
                "--builder also accepts docker-buildx, docker or buildah"
            )
        argv = ["docker", "buildx", "build", *(["--builder", instance] if instance else [])]
        argv += _common_flags(options, env)
        argv += pass_through_flags(options, chosen)
        for tag in options.tags:
            argv += ["--tag", tag]
        if options.platforms:
            argv += ["--platform", ",".join(options.platforms)]
        if len(options.platforms) <= 1 and driver == "docker":
            progress.step("buildx uses the docker driver: building into the daemon, then exporting from it")
            _run([*argv, "--load", "--iidfile", str(iidfile), options.context], "docker buildx build", progress, env)
            image_id = iidfile.read_text().strip()
            return BuiltImage(chosen, SourceSpec("docker-daemon", image_id), image_id)
        archive = workdir / "image.oci.tar"
        _run([*argv, "--output", f"type=oci,dest={archive}", options.context], "docker buildx build", progress, env)
        return BuiltImage(chosen, SourceSpec("oci-archive", str(archive)))
    if len(options.platforms) > 1:
        raise ImageError(
            f"{chosen} builds one platform at a time; install the docker-buildx plugin to build "
            f"{', '.join(options.platforms)} together, or pass one --platform"
        )
    if chosen == "docker":
        argv = ["docker", "build", "--iidfile", str(iidfile), *_common_flags(options, env, legacy=True)]
        argv += pass_through_flags(options, chosen)
        for tag in options.tags:
            argv += ["--tag", tag]
        if options.platforms:
            argv += ["--platform", options.platforms[0]]
        _run([*argv, options.context], "docker build", progress, env)
        image_id = iidfile.read_text().strip()
        return BuiltImage(chosen, SourceSpec("docker-daemon", image_id), image_id)
    argv = ["buildah", "bud", "--format", "oci", "--iidfile", str(iidfile), *_common_flags(options, env)]
    argv += pass_through_flags(options, chosen)
    for tag in options.tags:
        argv += ["--tag", tag]
    if options.platforms:
        argv += ["--platform", options.platforms[0]]
    _run([*argv, options.context], "buildah bud", progress, env)
    image_id = iidfile.read_text().strip()
    archive = workdir / "image.oci.tar"
    _run(["buildah", "push", image_id, f"oci-archive:{archive}"], "buildah push", progress, env)
    if not options.tags:
        # Untagged intermediate: keep the builder's storage from growing by one image per CI run.
        subprocess.run(["buildah", "rmi", image_id], capture_output=True, env=env, check=False)
    return BuiltImage(chosen, SourceSpec("oci-archive", str(archive)), image_id)


def load_into_docker(
    opened: OpenedSource, tags: Sequence[str], *, platform: str | None = None, docker_host: str | None = None
) -> list[str]:
    """``--load`` for builders that do not write to the daemon: stream a docker-archive into it."""
    from cargohold.oci.transfer import select_platform

    top = opened.source.get_manifest(opened.reference)
    digest = top.digest
    if top.is_index:
        digest = select_platform(top.json(), platform or host_platform_string()).digest
    engine = DockerEngine(docker_host) if docker_host else DockerEngine.from_env()
    with engine:
        return load_from_writer(engine, lambda sink: write_docker_archive(opened.source, digest, sink, repo_tags=tags))


def build_and_save(
    connection: Connection | None,
    options: BuildOptions,
    *,
    builder: str | None = None,
    save: bool = True,
    save_tags: Sequence[str] = (),
    load: bool = False,
    push: bool = False,
    metadata_file: Path | str | None = None,
    jobs: int = DEFAULT_JOBS,
    progress: Progress | None = None,
    provenance: Mapping[str, str] | None = None,
    docker_host: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> BuildResult:
    """Build, then (``save``) save as a new build, (``load``) load into Docker, (``push``) push to ``tags``."""
    progress = progress or Progress()
    if push and not save:
        raise ImageError("--push copies the saved build to the -t tags; add --save (or drop --push)")
    if push and not options.tags:
        raise ImageError("--push needs at least one -t REGISTRY/REPOSITORY:TAG")
    if save and connection is None:
        raise ImageError("saving needs a Cargohold connection; pass --registry and --project")
    with tempfile.TemporaryDirectory(prefix="cargohold-build-") as tmp:
        workdir = Path(tmp)
        built = build_image(options, workdir, builder=builder, progress=progress, docker_host=docker_host)
        result = BuildResult(built.builder, built.image_id, None)
        if not save and not load:
            return result
        with open_source(built.source, workdir / "source", docker_host=docker_host) as opened:
            if save:
                assert connection is not None
                result.save = save_opened(
                    connection,
                    opened,
                    save_tags=save_tags,
                    metadata_file=metadata_file,
                    jobs=jobs,
                    progress=progress,
                    provenance=provenance,
                )
            if load and built.source.kind != "docker-daemon":  # built into the daemon: it is there already
                result.loaded = load_into_docker(
                    opened,
                    options.tags or [_default_tag(result)],
                    platform=options.platforms[0] if options.platforms else None,
                    docker_host=docker_host,
                )
    if push:
        assert connection is not None and result.save is not None
        result.push = push_image(
            connection, result.save.build_id, options.tags, jobs=jobs, progress=progress, environ=environ
        )
    return result


def _default_tag(result: BuildResult) -> str:
    return result.save.reference if result.save is not None else "cargohold-build:latest"
