"""``cargohold save``: put a local image into Cargohold as a new build.

The order matters for what a failure leaves behind:

1. open and read the source *before* creating a build, so a typo in a path costs nothing;
2. create the build (the server mints a push token scoped to the project);
3. copy with :func:`~cargohold.client.copy.copy_image` to ``<project>:<build-id>``: blobs the registry has
   are skipped after a HEAD, so re-saving an unchanged image moves no layer bytes; children are pushed
   before the index that lists them, and manifests keep their exact bytes, so digests are preserved;
4. mark the build saved with its save-tags.

Anything failing after step 2 marks the build failed with a reason naming the step (and blob), so the
build list explains itself instead of showing a build stuck in "building".
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cargohold.client.control import ControlClient, ControlError
from cargohold.client.copy import DEFAULT_JOBS, RegistryRepo, copy_image
from cargohold.client.errors import CargoholdError, DigestMismatchError, storage_full_reason
from cargohold.client.settings import Connection
from cargohold.images.common import ImageError, NamingTarget, StepError, cargohold_client, describe
from cargohold.images.progress import Progress
from cargohold.images.sources import ImageSummary, OpenedSource, SourceSpec, open_source, summarize
from cargohold.oci.archive import ArchiveError
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.layout import LayoutError
from cargohold.schemas import Build, BuildCreated

TARGET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
"""A bake target's name: it becomes part of a tag (``<build>-<target>``), so tag characters only."""
_REPORTABLE = (CargoholdError, OSError)
"""Failures worth rewording as "saving build X failed: …" (the client library's, and the disk's); anything else
is a bug and keeps its traceback."""


@dataclass
class SaveResult:
    """What a save produced. ``metadata`` is what ``--metadata-file`` writes (buildx-compatible keys)."""

    build_id: str
    project_id: str
    reference: str
    digest: str
    media_type: str
    platforms: list[str]
    total_size: int
    uploaded_size: int
    metadata: dict[str, Any]
    save_tags: list[str] = field(default_factory=list)
    uploaded_blobs: int = 0
    skipped_blobs: int = 0
    build: Build | None = None
    """The saved build as the server answered it."""

    @property
    def pull_command(self) -> str:
        return f"cargohold pull {self.build_id}"

    @property
    def push_command(self) -> str:
        return f"cargohold push {self.build_id} -t REGISTRY/REPOSITORY:TAG"


def require_project(connection: Connection) -> str:
    if not connection.project:
        raise ImageError(
            "no project given: pass --project ID, set CARGOHOLD_PROJECT_ID, or add a cargohold.json "
            '({"id": "<project>"}) next to the build context'
        )
    return connection.project


def build_metadata(build_id: str, project_id: str, reference: str, descriptor: Descriptor) -> dict[str, Any]:
    """The ``--metadata-file`` document: the keys ``docker buildx --metadata-file`` writes, plus ours."""
    return {
        "containerimage.digest": str(descriptor.digest),
        "containerimage.descriptor": {
            "mediaType": descriptor.media_type,
            "digest": str(descriptor.digest),
            "size": descriptor.size,
        },
        "image.name": reference,
        "cargohold.build": {"buildID": build_id, "projectID": project_id, "reference": reference},
    }


def save_image(
    connection: Connection,
    source: str | SourceSpec,
    *,
    save_tags: Sequence[str] = (),
    metadata_file: Path | str | None = None,
    jobs: int = DEFAULT_JOBS,
    progress: Progress | None = None,
    provenance: Mapping[str, str] | None = None,
    docker_host: str | None = None,
    targets: Mapping[str, str | SourceSpec] | None = None,
) -> SaveResult:
    """Save the image at ``source`` (``oci:DIR[:REF]``, ``oci-archive:FILE``, ``docker-archive:FILE``,
    ``docker-daemon:IMAGE``) as a new build of ``connection.project``.

    ``targets`` (``{name: source}``) saves further images in the same build, as bake does for its targets:
    each is stored as ``<build>-<name>`` and pulled or pushed with ``--target NAME``.
    """
    require_project(connection)
    for name in targets or {}:
        if not TARGET_NAME.fullmatch(name):
            raise ImageError(f"target name {name!r} is invalid; use letters, digits, '_', '.' and '-' (up to 100)")
    with tempfile.TemporaryDirectory(prefix="cargohold-save-") as tmp, contextlib.ExitStack() as stack:
        current: str | SourceSpec = source
        try:
            opened = stack.enter_context(open_source(source, Path(tmp) / "main", docker_host=docker_host))
            opened_targets = []
            for index, (name, target_source) in enumerate((targets or {}).items()):
                current = target_source
                where = Path(tmp) / f"target-{index}"
                opened_targets.append(
                    (name, stack.enter_context(open_source(target_source, where, docker_host=docker_host)))
                )
            return save_opened(
                connection,
                opened,
                save_tags=save_tags,
                metadata_file=metadata_file,
                jobs=jobs,
                progress=progress,
                provenance=provenance,
                targets=opened_targets,
            )
        except (ArchiveError, LayoutError) as exc:
            raise ImageError(f"cannot read {current}: {describe(exc)}") from None


def save_opened(
    connection: Connection,
    opened: OpenedSource,
    *,
    save_tags: Sequence[str] = (),
    metadata_file: Path | str | None = None,
    jobs: int = DEFAULT_JOBS,
    progress: Progress | None = None,
    provenance: Mapping[str, str] | None = None,
    targets: Sequence[tuple[str, OpenedSource]] = (),
) -> SaveResult:
    """:func:`save_image` for a source that is already open (``cargohold build`` hands over its output)."""
    project = require_project(connection)
    progress = progress or Progress()
    summaries = []
    for name, source in [("", opened), *targets]:
        progress.step(f"reading {source.description}" + (f" (target {name})" if name else ""))
        try:
            summaries.append((name, source, summarize(source.source, source.reference)))
        except (ArchiveError, LayoutError, DigestMismatchError, ValueError, KeyError) as exc:
            raise ImageError(f"cannot read the image in {source.description}: {describe(exc)}") from None
    with connection.control() as control:
        build = control.create_build(project, provenance)
        build_id = build.build_id
        progress.step(f"created build {build_id} in project {project}")
        try:
            return _upload_and_record(connection, control, build, summaries, save_tags, metadata_file, jobs, progress)
        except BaseException as exc:
            progress.abort()
            reason = describe(exc) if not isinstance(exc, KeyboardInterrupt) else "interrupted"
            # The original error matters more than a failed fail_build; the build then expires on its own.
            outcome = "the build is marked failed"
            try:
                control.fail_build(build_id, reason[:1000])
            except ControlError:  # the server is unreachable too (an outage outlasting the retry budget)
                outcome = "the build stays pending until it expires"
            if (full := storage_full_reason(exc)) is not None:
                raise ImageError(
                    f"Cargohold's storage is full, so build {build_id} was not saved ({outcome}): {full}"
                ) from exc
            if isinstance(exc, _REPORTABLE):
                raise ImageError(f"saving build {build_id} failed: {reason}; {outcome}") from exc
            raise


def _upload_and_record(
    connection: Connection,
    control: ControlClient,
    build: BuildCreated,
    images: list[tuple[str, OpenedSource, ImageSummary]],
    save_tags: Sequence[str],
    metadata_file: Path | str | None,
    jobs: int,
    progress: Progress,
) -> SaveResult:
    """Copy the build's image (``<build>``) and each target's (``<build>-<target>``), then record the save."""
    build_id = build.build_id
    project = build.project_id
    uploaded: list[int] = []
    skipped: list[int] = []
    summary = images[0][2]

    def on_blob(descriptor: Descriptor, how: str) -> None:
        (uploaded if how == "uploaded" else skipped).append(descriptor.size)
        progress.blob(descriptor, how)

    with cargohold_client(connection, build.registry, build.token) as client:
        target = NamingTarget(RegistryRepo(client, build.repository))
        copies = {}
        for name, opened, image_summary in images:
            tag = f"{build_id}-{name}" if name else build_id
            counter = progress.transfer(f"saving {tag}", image_summary.total_size)
            try:
                copied = copy_image(
                    opened.source,
                    image_summary.manifest.digest,
                    target,
                    [tag],
                    jobs=jobs,
                    progress=counter,
                    on_blob=on_blob,
                )
            except BaseException:
                progress.abort()
                raise
            progress.done()
            copies[name] = copied
    result = copies[""]
    target_names = [name for name, _, _ in images if name]
    try:
        saved = control.save_build(build_id, save_tags=list(save_tags), targets=target_names)
    except ControlError as exc:
        raise StepError("recording the build as saved", exc) from exc
    reference = saved.reference or build.reference
    descriptor = summary.manifest.descriptor()
    metadata = build_metadata(build_id, project, reference, descriptor)
    if target_names:
        metadata["cargohold.build"]["targets"] = target_names
    if metadata_file is not None:
        try:
            Path(metadata_file).write_text(json.dumps(metadata, indent=2) + "\n")
        except OSError as exc:
            raise StepError(f"writing the metadata file {metadata_file}", exc) from exc
    progress.step(f"saved {reference} ({result.digest})")
    return SaveResult(
        build_id=build_id,
        project_id=project,
        reference=reference,
        digest=str(result.digest),
        media_type=result.media_type,
        platforms=list(saved.platforms or summary.platforms),
        total_size=summary.total_size,
        uploaded_size=sum(uploaded),
        metadata=metadata,
        save_tags=list(saved.save_tags or save_tags),
        uploaded_blobs=len(uploaded),
        skipped_blobs=len(skipped),
        build=saved,
    )
