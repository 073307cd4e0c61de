"""``cargohold/action-pull``: fetch a saved build into the local Docker engine or to an OCI/docker archive.

Run as ``python -m cargohold.actions.pull`` by ``action-pull/action.yml``. ``build-id`` accepts what
Depot's pull does: a build id, or ``<project>:<save-tag>`` (optionally prefixed with the registry host),
and also a bare save-tag of the ``project`` input (``build-id: main``), so matrix jobs can pull "the newest
build of main" without passing ids around. ``targets`` picks bake targets of a build saved with several.

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
    trust_ca_cert,
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
    targets = rt.get_list("targets")
    if len(targets) > 1 and output.kind != "docker":
        raise ActionError(
            f"'output' {output} holds one image but 'targets' names {len(targets)}; pull them into the local "
            "Docker engine (no 'output') or one target per step",
            title="Conflicting inputs",
        )
    if tags and output.kind == "oci" and len(tags) > 1:
        rt.warning("an OCI layout records one reference per tag; all tags point at the same manifest")
    trust_ca_cert(rt)
    retry = retry_policy(rt)
    token = authenticate(rt, registry, retry=retry)

    from cargohold import images  # deferred: the input checks above should not wait for heavy imports

    results = []
    wanted: list[str | None] = list(targets) if targets else [None]
    for target in wanted:
        # Several targets into one set of names: each name gets -<target> appended, as Depot's pull does.
        names = [f"{tag}-{target}" for tag in tags] if target and len(targets) > 1 else tags
        what = f"{ref} target {target}" if target else str(ref)
        with rt.untrusted_output(f"Pulling {what}"), images_errors("Pull failed"):
            results.append(
                images.pull_build(
                    registry=registry.url,
                    token=token.token,
                    build_id=ref.build_id,
                    project=ref.project or project,
                    save_tag=ref.tag,
                    platform=platform,
                    tags=names,
                    output=output.kind,
                    output_path=output.path,
                    target=target,
                    retry=retry,
                )
            )
    write_results(rt, ref, output, tags, results)


def write_results(rt: ActionRuntime, ref: BuildRef, output: PullOutput, tags: list[str], results: list[Any]) -> None:
    """``digest`` and ``image`` (the first tag, or the reference the image was pulled as) of the first image
    pulled, plus a summary row per image (one per target)."""
    first = results[0]
    image = first.tags[0] if tags else (first.image or "")
    rt.set_output("digest", first.digest or "")
    rt.set_output("image", image)
    rows = [("Build", markdown_code(str(ref)))]
    for result in results:
        label = f" ({result.target})" if getattr(result, "target", None) else ""
        pulled_as = result.tags[0] if tags else (result.image or "")
        rows += [
            (f"Digest{label}", markdown_code(result.digest) if result.digest else "-"),
            (f"Image{label}", markdown_code(pulled_as) if pulled_as else "-"),
        ]
    rows.append(("Destination", markdown_code(str(output))))
    rt.append_summary("### :arrow_down: Cargohold pull\n\n" + markdown_table(["", ""], rows))


if __name__ == "__main__":
    sys.exit(run_action(main, name=ACTION_NAME))
