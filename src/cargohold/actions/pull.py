"""``cargohold/action-pull``: fetch a saved build into the local Docker engine or to an OCI/docker archive.

Run as ``python -m cargohold.actions.pull`` by ``action-pull/action.yml``. ``build-id`` accepts what
Depot's pull does: a build id, or ``<project>:<save-tag>`` (optionally prefixed with the registry host),
so matrix jobs can pull "the newest build of main" without passing ids around.

The transfer is the images layer's :func:`cargohold.images.pull_build`; this module validates,
authenticates, and reports.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from cargohold.actions.common import (
    BuildRef,
    authenticate,
    images_errors,
    parse_build_ref,
    project_input,
    registry_input,
    retry_policy,
)
from cargohold.actions.runtime import ActionError, ActionRuntime, markdown_code, markdown_table, run_action

ACTION_NAME = "Cargohold pull"
OUTPUT_KINDS = ("oci", "docker-archive")


@dataclass(frozen=True, slots=True)
class PullOutput:
    """Where the image goes: ``kind`` is ``docker`` (the local engine), ``oci`` or ``docker-archive``."""

    kind: str
    path: str | None = None

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


def parse_output(value: str) -> PullOutput:
    """``""``/``docker`` for the local engine, ``oci:<dir>`` or ``docker-archive:<file.tar>`` (skopeo syntax)."""
    text = value.strip()
    if text in ("", "docker"):
        return PullOutput("docker")
    kind, sep, path = text.partition(":")
    if sep and kind in OUTPUT_KINDS and path.strip():
        return PullOutput(kind, path.strip())
    raise ActionError(
        f"'output' is {value!r}; leave it empty for the local Docker engine or use oci:<directory> or "
        "docker-archive:<file.tar>",
        title="Invalid input",
    )


def main(rt: ActionRuntime) -> None:
    build_id = rt.get_input("build-id", required=True)
    registry = registry_input(rt)
    ref: BuildRef = parse_build_ref(build_id, registry)
    project = project_input(rt)
    if ref.project and project and ref.project != project:
        raise ActionError(
            f"'build-id' names project {ref.project} but 'project' is {project}; remove one of them",
            title="Conflicting inputs",
        )
    platform = rt.get_optional("platform")
    tags = rt.get_list("tags")
    output = parse_output(rt.get_input("output"))
    if tags and output.kind == "oci" and len(tags) > 1:
        rt.warning("an OCI layout records one reference per tag; all tags point at the same manifest")
    retry = retry_policy(rt)
    token = authenticate(rt, registry, retry=retry)

    from cargohold import images  # deferred: the input checks above should not wait for heavy imports

    with rt.untrusted_output(f"Pulling {ref}"), images_errors("Pull failed"):
        result = images.pull_build(
            registry=registry.url,
            token=token.token,
            build_id=ref.build_id,
            project=ref.project or project,
            save_tag=ref.tag,
            platform=platform,
            tags=tags,
            output=output.kind,
            output_path=output.path,
            retry=retry,
        )
    write_results(rt, ref, output, tags, result)


def write_results(rt: ActionRuntime, ref: BuildRef, output: PullOutput, tags: list[str], result: Any) -> None:
    """``digest`` and ``image`` (the first tag, or the reference the image was pulled as) plus a summary."""
    image = tags[0] if tags else (result.image or "")
    rt.set_output("digest", result.digest or "")
    rt.set_output("image", image)
    rows = [
        ("Build", markdown_code(str(ref))),
        ("Digest", markdown_code(result.digest) if result.digest else "-"),
        ("Image", markdown_code(image) if image else "-"),
        ("Destination", markdown_code(str(output))),
    ]
    rt.append_summary("### :arrow_down: Cargohold pull\n\n" + markdown_table(["", ""], rows))


if __name__ == "__main__":
    sys.exit(run_action(main, name=ACTION_NAME))
