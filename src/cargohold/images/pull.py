"""``cargohold pull``: fetch a saved build into the local Docker daemon or onto disk, verifying every blob.

Into Docker, the daemon pulls the build itself (``POST /images/create`` with ``X-Registry-Auth`` built from
the build-scoped pull token that ``GET /api/v1/pull-info`` hands out), exactly as ``docker pull`` would:
layers download in parallel, are extracted as they arrive, and layers the daemon already has are skipped.
No ``docker login`` is involved and nothing touches the disk on our side. The daemon verifies every blob
against its digest; we check afterwards that the image it holds has the build's manifest and config.

Only when the daemon cannot reach Cargohold (plain HTTP that is not one of its insecure registries, a
registry under a path prefix, or a pull that fails on the network: a daemon in another network namespace,
a CA it does not trust) do we stream the image to it instead, and say so once: a docker-archive written
into one end of a pipe while the other end is the body of ``POST /images/load``, every blob hashed as it
streams and the load aborted on a mismatch.

On disk: ``oci:DIR[:REF]`` (blobs land atomically, verified), ``oci-archive:FILE`` (an OCI layout tar) and
``docker-archive:FILE`` (``docker load``-able).
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cargohold.client.control import ControlClient, ControlError
from cargohold.client.copy import DEFAULT_JOBS, LayoutStore, RegistryRepo, copy_image
from cargohold.client.errors import PlatformNotFoundError
from cargohold.client.settings import Connection, normalize_registry_url
from cargohold.images.common import CARGOHOLD_USER, ImageError, cargohold_client
from cargohold.images.docker import (
    DaemonPullError,
    DockerEngine,
    DockerError,
    host_platform_string,
    load_from_writer,
    registry_reach,
    unreachable_reason,
)
from cargohold.images.progress import Progress
from cargohold.images.sources import summarize
from cargohold.oci.archive import write_docker_archive
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.imageref import ImageReference, ImageReferenceError
from cargohold.oci.layout import OCILayout
from cargohold.oci.manifest import Manifest
from cargohold.oci.transfer import BlobSource, platform_label, select_platform
from cargohold.schemas import PullInfo

OUTPUT_KINDS = ("oci", "oci-archive", "docker-archive")


@dataclass(frozen=True)
class OutputSpec:
    """``None`` kind means the local Docker daemon."""

    kind: str | None
    path: str | None = None
    ref: str | None = None

    def __str__(self) -> str:
        if self.kind is None:
            return "docker daemon"
        return f"{self.kind}:{self.path}" + (f":{self.ref}" if self.ref else "")


def parse_output(text: str | None) -> OutputSpec:
    """``oci:DIR[:REF]``, ``oci-archive:FILE``, ``docker-archive:FILE``; empty or ``docker`` is the daemon."""
    if text is None or text.strip() in ("", "docker", "docker-daemon"):
        return OutputSpec(None)
    kind, sep, rest = text.strip().partition(":")
    if not sep or kind not in OUTPUT_KINDS or not rest:
        raise ImageError(f"--output {text!r} is not understood; use oci:DIR, oci-archive:FILE or docker-archive:FILE")
    ref = None
    if kind == "oci" and ":" in rest and not Path(rest).exists():
        rest, _, ref = rest.rpartition(":")
    return OutputSpec(kind, rest, ref)


@dataclass
class PullResult:
    """``digest`` is what landed: the image manifest for one platform, the index with ``--all-platforms``."""

    digest: str
    image: str
    """The first tag (what to ``docker run``), or the output path for file outputs."""
    tags: list[str]
    build_id: str
    project_id: str
    reference: str
    output: str
    platform: str | None
    size: int
    build_digest: str
    """The saved build's top manifest (an index for multi-platform builds)."""
    loaded: list[str] = field(default_factory=list)
    via: str | None = None
    """Into Docker: ``daemon-pull`` (the daemon pulled from Cargohold) or ``load`` (we streamed it in)."""
    target: str | None = None


BUILD_ID_PATTERN = re.compile(r"[a-z][a-z0-9]{9}")
"""The shape of every build ID the server hands out (10 lower-case letters and digits, a letter first; see
``cargohold.metadata.control.new_id``). Only such a word can name a build; any other bare word is a save-tag."""


def pull_info(control: ControlClient, ref: str, project: str | None = None) -> PullInfo:
    """Resolve ``BUILD_ID``, ``SAVE_TAG`` (with ``project``), ``PROJECT:TAG`` or ``HOST/PROJECT:TAG``.

    A bare word is resolved deterministically: shaped like a build ID, it is looked up as a build first and,
    when there is no such build and a project is configured, as that project's save-tag; any other word is a
    save-tag of the configured project (``cargohold pull main``). A full reference's tag can be a save-tag or
    the build ID itself (``<host>/<project>:<build>`` is the reference ``cargohold save`` prints), which the
    server's ``PROJECT:TAG`` lookup already tries in that order.
    """
    text = ref.strip()
    if "@" in text:
        raise ImageError(f"{ref} pins a digest; pull by build ID or PROJECT:TAG instead")
    if ":" not in text and "/" not in text:
        return _bare_word(control, text, project)
    try:
        return control.pull_info(text)
    except ControlError as exc:
        if exc.status == 404 and "/" in text:
            try:
                parsed = ImageReference.parse(text)
            except ImageReferenceError:
                raise exc from None
            if parsed.tag:
                try:
                    return control.pull_info(parsed.tag)
                except ControlError:
                    pass
        raise


def _bare_word(control: ControlClient, word: str, project: str | None) -> PullInfo:
    if BUILD_ID_PATTERN.fullmatch(word):
        try:
            return control.pull_info(word)
        except ControlError as exc:
            if exc.status != 404 or not project:
                raise
    if not project:
        raise ImageError(
            f"{word!r} is not a build ID; to pull the save-tag {word}, configure the project (--project or "
            f"CARGOHOLD_PROJECT_ID; the 'project' input in an action) or write PROJECT:{word}"
        )
    return control.pull_info(f"{project}:{word}")


def target_digest(info: PullInfo, target: str | None) -> str:
    """The manifest to fetch: the build's own, or a bake target's (saved as ``<build>-<target>``)."""
    if target is None:
        return info.digest
    if target not in info.targets:
        available = ", ".join(sorted(info.targets)) or "none (it was saved as one image)"
        raise ImageError(f"build {info.build_id} has no target {target!r}; its targets: {available}")
    return info.targets[target]


class CountingSource:
    """An image source that reports the bytes read through it (for writers that take no callback)."""

    def __init__(self, inner: RegistryRepo, progress: Callable[[int], object]) -> None:
        self.inner = inner
        self.name = inner.name
        self.progress = progress

    def get_manifest(self, reference: str | Digest | None) -> Manifest:
        return self.inner.get_manifest(reference)

    def referrers(self, digest: Digest) -> list[Descriptor]:
        return self.inner.referrers(digest)

    def blob_source(self, descriptor: Descriptor) -> BlobSource:
        opener = self.inner.blob_source(descriptor)

        def open_at(offset: int) -> Iterator[bytes]:
            for chunk in opener(offset):
                self.progress(len(chunk))
                yield chunk

        return open_at


def _image_platform(repo: RegistryRepo, manifest: Manifest) -> str | None:
    found = summarize(repo, manifest.digest, top=manifest).platforms
    return found[0] if found else None


def choose_manifest(repo: RegistryRepo, top: Manifest, platform: str | None, *, default: str | None) -> Manifest:
    """One image manifest: ``platform`` (or ``default``) from an index; a single image is checked."""
    if top.is_index:
        wanted = platform or default
        if wanted is None:
            return top
        try:
            entry = select_platform(top.json(), wanted)
        except PlatformNotFoundError as exc:
            if platform:
                raise
            raise PlatformNotFoundError(
                f"{exc} (the default is this machine's platform); pass --platform with one of them"
            ) from None
        except ValueError as exc:  # a malformed --platform
            raise ImageError(str(exc)) from None
        return repo.get_manifest(entry.digest)
    if platform is not None:
        actual = _image_platform(repo, top)
        if actual is not None and not _platform_matches(actual, platform):
            raise PlatformNotFoundError(f"the image has no {platform} variant; available platforms: {actual}")
    return top


def _platform_matches(actual: str, wanted: str) -> bool:
    have, want = actual.split("/"), wanted.split("/")
    return have[:2] == want[:2] and (len(want) < 3 or have[2:3] == want[2:3])


def pull_image(
    connection: Connection,
    ref: str,
    *,
    tags: Sequence[str] = (),
    platform: str | None = None,
    output: str | OutputSpec | None = None,
    all_platforms: bool = False,
    jobs: int = DEFAULT_JOBS,
    progress: Progress | None = None,
    docker_host: str | None = None,
    target: str | None = None,
) -> PullResult:
    """Pull build ``ref`` to ``output`` (default: the local Docker daemon, tagged ``tags`` or its reference).

    ``target``: one bake target of a build saved with several (its default name is ``<reference>-<target>``).
    """
    progress = progress or Progress()
    spec = output if isinstance(output, OutputSpec) else parse_output(output)
    if all_platforms and spec.kind not in ("oci", "oci-archive"):
        raise ImageError("--all-platforms only applies to oci: and oci-archive: outputs; pick one with --platform")
    if all_platforms and platform:
        raise ImageError("give either --platform or --all-platforms, not both")
    with connection.control() as control:
        info = pull_info(control, ref, connection.project)
    build_id, reference = info.build_id, info.reference
    digest = target_digest(info, target)
    if target is not None:
        reference = f"{reference}-{target}"
    tag_list = list(tags) or [reference]
    for tag in tag_list:
        try:
            ImageReference.parse(tag)
        except ImageReferenceError as exc:
            raise ImageError(f"-t {tag!r} is not an image name ({exc}); write e.g. myapp:ci") from None
    what = f"build {build_id}" + (f" target {target}" if target else "")
    progress.step(f"pulling {what} ({digest}) to {spec}")
    with cargohold_client(connection, info.registry, info.token) as client:
        repo = RegistryRepo(client, info.repository)
        top = repo.get_manifest(Digest.parse(digest))
        host_default = None if all_platforms else host_platform_string()
        chosen = choose_manifest(repo, top, platform, default=host_default)
        chosen_platform = (
            None if chosen.is_index else (platform or (host_default if top.is_index else _image_platform(repo, chosen)))
        )
        summary = summarize(repo, chosen.digest, top=chosen)
        loaded: list[str] = []
        via: str | None = None
        if spec.kind is None:
            daemon = DaemonTarget(
                # As cargohold_client reaches it: the URL we were given, else the scheme the host implies.
                address=(
                    connection.registry if info.registry == connection.host else normalize_registry_url(info.registry)
                ),
                host=info.registry,
                repository=info.repository,
                token=info.token,
                platform=platform,
            )
            loaded, via = _to_daemon(
                repo, chosen, tag_list, daemon, build_id, summary.total_size, progress, docker_host
            )
            image = tag_list[0]
        else:
            image = _to_files(repo, chosen, spec, tag_list, build_id, jobs, summary.total_size, progress)
    progress.step(f"pulled {chosen.digest} as {', '.join(tag_list) if spec.kind is None else image}")
    return PullResult(
        digest=str(chosen.digest),
        image=image,
        tags=tag_list,
        build_id=build_id,
        project_id=info.project_id,
        reference=reference,
        output=str(spec),
        platform=chosen_platform,
        size=summary.total_size,
        build_digest=str(top.digest),
        loaded=loaded,
        via=via,
        target=target,
    )


def _to_files(
    repo: RegistryRepo,
    chosen: Manifest,
    spec: OutputSpec,
    tags: list[str],
    build_id: str,
    jobs: int,
    total: int,
    progress: Progress,
) -> str:
    """Write the image to ``spec`` (a layout, an OCI archive or a docker-archive); returns what to call it."""
    assert spec.path is not None
    counter = progress.transfer(f"pulling {build_id}", total)
    try:
        if spec.kind == "docker-archive":
            write_docker_archive(CountingSource(repo, counter), chosen.digest, spec.path, repo_tags=tags)
            image = f"docker-archive:{spec.path}"
        else:
            ref_name = spec.ref or _tag_part(tags[0]) or build_id
            if spec.kind == "oci":
                _to_layout(repo, chosen, Path(spec.path), ref_name, jobs, counter, progress)
            else:
                _to_oci_archive(repo, chosen, Path(spec.path), ref_name, jobs, counter, progress)
            image = f"{spec}" if spec.ref else f"{spec}:{ref_name}"
    except BaseException:
        progress.abort()
        raise
    progress.done()
    return image


def _tag_part(name: str) -> str | None:
    try:
        return ImageReference.parse(name).tag
    except ImageReferenceError:
        return None


@dataclass(frozen=True)
class DaemonTarget:
    """What the Docker daemon needs to pull a build itself: where, which repository, and as whom."""

    address: str
    """Cargohold's base URL as this client reaches it (decides HTTP vs HTTPS for the reachability check)."""
    host: str
    """``host[:port]`` as it appears in the build's image reference."""
    repository: str
    token: str = field(repr=False)
    platform: str | None


def _to_daemon(
    repo: RegistryRepo,
    manifest: Manifest,
    tags: list[str],
    target: DaemonTarget,
    build_id: str,
    total: int,
    progress: Progress,
    docker_host: str | None,
) -> tuple[list[str], str]:
    """Have the daemon pull the build; stream a load only when it cannot reach Cargohold. Returns
    (what the daemon reported, ``daemon-pull`` or ``load``)."""
    engine = DockerEngine(docker_host) if docker_host else DockerEngine.from_env()
    with engine:
        # Fails with "cannot reach the Docker daemon" before any blob moves.
        reason = registry_reach(target.address, engine.info().get("RegistryConfig"))
        if reason is None:
            try:
                return _daemon_pull(engine, manifest, tags, target, build_id, progress), "daemon-pull"
            except DaemonPullError as exc:
                reason = unreachable_reason(exc)
                if reason is None:
                    raise DockerError(f"the Docker daemon could not pull build {build_id}: {exc}") from None
        progress.step(f"the Docker daemon cannot pull from Cargohold ({reason}); streaming the image into it instead")
        counter = progress.transfer(f"loading {build_id}", total)
        try:
            source = CountingSource(repo, counter)
            loaded = load_from_writer(
                engine, lambda sink: write_docker_archive(source, manifest.digest, sink, repo_tags=tags)
            )
        except BaseException:
            progress.abort()
            raise
        progress.done()
        return loaded, "load"


def _daemon_pull(
    engine: DockerEngine, manifest: Manifest, tags: list[str], target: DaemonTarget, build_id: str, progress: Progress
) -> list[str]:
    """``POST /images/create`` by digest, progress from the daemon's stream, then verify and tag."""
    name = f"{target.host}/{target.repository}"
    body = manifest.json()
    layers = [Descriptor.from_json(entry, f"layers[{i}]") for i, entry in enumerate(body.get("layers") or [])]
    config_digest = str((body.get("config") or {}).get("digest") or "")
    tracker = DaemonProgress(layers, progress)
    counter = progress.transfer(f"pulling {build_id}", sum(layer.size for layer in layers))
    tracker.counter = counter
    auth = {"username": CARGOHOLD_USER, "password": target.token, "serveraddress": target.host}
    try:
        for event in engine.pull(name, str(manifest.digest), auth=auth, platform=target.platform):
            tracker.event(event)
    except BaseException:
        progress.abort()
        raise
    progress.done()
    pinned = f"{name}@{manifest.digest}"
    inspected = engine.inspect_image(pinned)
    if inspected is None:
        raise DockerError(f"the Docker daemon reported pulling {pinned} but does not have it; pull again")
    # The daemon verified every blob against the digests it asked for; check it asked for ours. With the
    # classic image store the image ID is the config digest, with the containerd store the manifest's.
    repo_digests = [str(d) for d in inspected.get("RepoDigests") or []]
    if pinned not in repo_digests or str(inspected.get("Id")) not in (config_digest, str(manifest.digest)):
        raise DockerError(
            f"the image the Docker daemon pulled ({inspected.get('Id')}, {', '.join(repo_digests) or 'no digest'}) "
            f"is not build {build_id} ({manifest.digest}); pull again"
        )
    for tag in tags:
        engine.tag_image(pinned, tag)
    return [pinned]


class DaemonProgress:
    """Turns the daemon's per-layer JSON events into our byte counter and per-blob lines.

    The daemon names layers by the first 12 hex digits of their digest and reports ``Downloading`` with a
    running ``current`` per layer; small layers may only ever say ``Download complete``. Bytes are counted
    once per layer (the largest ``current`` seen, then the full size when complete); ``Already exists``
    is a blob that did not move.
    """

    DONE = ("Download complete", "Verifying Checksum", "Extracting", "Pull complete")

    def __init__(self, layers: Sequence[Descriptor], progress: Progress) -> None:
        self.layers = {layer.digest.hex[:12]: layer for layer in layers}
        self.progress = progress
        self.counter: Callable[[int], object] = lambda _delta: None
        self.seen: dict[str, int] = {}
        self.reported: set[str] = set()

    def event(self, event: dict[str, Any]) -> None:
        layer = self.layers.get(str(event.get("id") or ""))
        if layer is None:
            return
        key = layer.digest.hex[:12]
        status = str(event.get("status") or "")
        if status == "Already exists":
            self._report(key, layer, "skipped")
            return
        current = self.seen.get(key, 0)
        if status == "Downloading":
            detail = event.get("progressDetail") or {}
            value = detail.get("current") if isinstance(detail, dict) else None
            if isinstance(value, int) and value > current:
                self._advance(key, min(value, layer.size))
        elif status in self.DONE:
            self._advance(key, layer.size)
            if status == "Pull complete":
                self._report(key, layer, "downloaded")

    def _advance(self, key: str, value: int) -> None:
        before = self.seen.get(key, 0)
        if value > before:
            self.seen[key] = value
            self.counter(value - before)

    def _report(self, key: str, layer: Descriptor, how: str) -> None:
        if key not in self.reported:
            self.reported.add(key)
            self.progress.blob(layer, how)


def _to_layout(
    repo: RegistryRepo,
    manifest: Manifest,
    directory: Path,
    ref_name: str,
    jobs: int,
    counter: Callable[[int], object],
    progress: Progress,
) -> None:
    target = LayoutStore(OCILayout.create(directory))

    def on_blob(descriptor: Descriptor, how: str) -> None:
        # The copy names it from the target's side ("uploaded" into the layout); for a pull it came down.
        progress.blob(descriptor, "downloaded" if how == "uploaded" else how)

    copy_image(repo, manifest.digest, target, [ref_name], jobs=jobs, progress=counter, on_blob=on_blob)


def _to_oci_archive(
    repo: RegistryRepo,
    manifest: Manifest,
    path: Path,
    ref_name: str,
    jobs: int,
    counter: Callable[[int], object],
    progress: Progress,
) -> None:
    """Pull into a layout next to ``path``, then tar it; the archive appears only when complete."""
    staging = path.with_name(f".{path.name}.layout")
    partial = path.with_name(f".{path.name}.partial")
    try:
        _to_layout(repo, manifest, staging, ref_name, jobs, counter, progress)
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            for root, dirs, files in os.walk(staging):
                dirs.sort()
                for name in sorted(files):
                    full = Path(root) / name
                    tar.add(full, arcname=str(full.relative_to(staging)), recursive=False)
        partial.replace(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        partial.unlink(missing_ok=True)


def platforms_of(index: dict[str, Any]) -> list[str]:
    """Platform labels of an index's real images (attestation ``unknown/unknown`` entries excluded)."""
    return [
        platform_label(m.get("platform"))
        for m in index.get("manifests", [])
        if (m.get("platform") or {}).get("os") not in (None, "unknown")
    ]
