"""``cargohold/action-build``: build an image (or take one an earlier step built) and save it to Cargohold.

Run as ``python -m cargohold.actions.build`` by ``action-build/action.yml``, which passes every input as an
``INPUT_<NAME>`` environment variable. Input names and list syntax follow docker/build-push-action and
Depot's build-push-action, so a workflow can switch to this action by changing ``uses:`` and adding
``registry``.

The work itself (running BuildKit, uploading layers, recording the build) is the images layer's
:func:`cargohold.images.save_build`; this module only turns inputs into its arguments, authenticates,
and turns its result into outputs and a job summary.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from cargohold.actions.common import (
    authenticate,
    human_size,
    images_errors,
    project_for_saving,
    project_input,
    registry_input,
)
from cargohold.actions.runtime import (
    ActionError,
    ActionRuntime,
    markdown_code,
    markdown_escape,
    markdown_table,
    run_action,
)

ACTION_NAME = "Cargohold build"
BUILD_ONLY_INPUTS = ("file", "build-args", "target", "platforms", "secrets", "builder")
"""Inputs that only make sense when we build; combined with ``image`` they would be silently ignored."""


@dataclass(frozen=True, slots=True)
class BuildInputs:
    """The validated inputs of one build step (names match the action's inputs)."""

    context: str
    file: str | None
    tags: list[str]
    labels: list[str]
    build_args: list[str]
    target: str | None
    platforms: list[str]
    secrets: dict[str, str] = field(repr=False)
    no_cache: bool
    pull: bool
    push: bool
    load: bool
    provenance: str | None
    sbom: str | None
    builder: str | None
    save: bool
    save_tags: list[str]
    image: str | None


def _key_values(rt: ActionRuntime, name: str, items: list[str], *, value_required: bool) -> dict[str, str]:
    """``KEY=VALUE`` lines (``build-args``, ``secrets``); a bare ``KEY`` is allowed where Docker allows it."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not key or (value_required and not sep):
            raise ActionError(
                f"an entry of '{name}' is not KEY=VALUE (got {key or '(empty)'!r}); write one KEY=VALUE per line",
                title="Invalid input",
            )
        pairs[key] = value
    return pairs


def read_inputs(rt: ActionRuntime) -> BuildInputs:
    """Parse and validate every input before any work, so a typo fails in a second instead of after a build."""
    image = rt.get_optional("image")
    if image:
        clashing = [name for name in BUILD_ONLY_INPUTS if rt.get_input(name)]
        if clashing:
            raise ActionError(
                f"'image' saves an existing image, so {', '.join(repr(n) for n in clashing)} would be ignored; "
                "remove them, or remove 'image' to build here",
                title="Conflicting inputs",
            )
    # Secret values are masked first thing: a later error message or build log could otherwise echo them.
    secret_lines = rt.get_list("secrets", comma=False)
    secrets = _key_values(rt, "secrets", secret_lines, value_required=True)
    for value in secrets.values():
        rt.add_mask(value)
    build_args = rt.get_list("build-args", comma=False)
    _key_values(rt, "build-args", build_args, value_required=False)
    inputs = BuildInputs(
        context=rt.get_input("context") or ".",
        file=rt.get_optional("file"),
        tags=rt.get_list("tags"),
        labels=rt.get_list("labels", comma=False),
        build_args=build_args,
        target=rt.get_optional("target"),
        platforms=rt.get_list("platforms"),
        secrets=secrets,
        no_cache=rt.get_bool("no-cache"),
        pull=rt.get_bool("pull"),
        push=rt.get_bool("push"),
        load=rt.get_bool("load"),
        provenance=rt.get_optional("provenance"),
        sbom=rt.get_optional("sbom"),
        builder=rt.get_optional("builder"),
        save=rt.get_bool("save", default=True),
        save_tags=rt.get_list("save-tags"),
        image=image,
    )
    if inputs.push and not inputs.tags:
        raise ActionError(
            "'push: true' needs at least one entry in 'tags'; add tags or set push to false", title="Invalid input"
        )
    if inputs.save_tags and not inputs.save:
        raise ActionError(
            "'save-tags' only apply when saving; remove them or set 'save: true'", title="Conflicting inputs"
        )
    if inputs.image and not inputs.save:
        raise ActionError(
            "with 'image' the only job is saving it; set 'save: true' or remove 'image'", title="Conflicting inputs"
        )
    return inputs


def main(rt: ActionRuntime) -> None:
    inputs = read_inputs(rt)
    # Without saving, Cargohold is not involved: a fork pull request (no OIDC, no secrets) can still build,
    # load and test in one job.
    registry = registry_input(rt) if inputs.save else None
    project = project_input(rt) if inputs.save else None
    token = authenticate(rt, registry) if registry is not None else None
    if registry is not None and token is not None:
        project = project_for_saving(registry, token, project)

    # Imported here so the input checks above fail fast even on a partial install.
    from cargohold import images

    title = f"Saving {inputs.image}" if inputs.image else f"Building {inputs.context}"
    # Build logs are untrusted (a pull request controls the Dockerfile): no workflow commands inside.
    with rt.untrusted_output(title), images_errors("Build failed"):
        result = images.save_build(
            registry=registry.url if registry else None,
            token=token.token if token else None,
            project=project,
            image=inputs.image,
            context=inputs.context,
            file=inputs.file,
            tags=inputs.tags,
            labels=inputs.labels,
            build_args=inputs.build_args,
            target=inputs.target,
            platforms=inputs.platforms,
            secrets=inputs.secrets,
            no_cache=inputs.no_cache,
            pull=inputs.pull,
            push=inputs.push,
            load=inputs.load,
            provenance=inputs.provenance,
            sbom=inputs.sbom,
            builder=inputs.builder,
            save=inputs.save,
            save_tags=inputs.save_tags,
        )
    write_results(rt, inputs, result)


def write_results(rt: ActionRuntime, inputs: BuildInputs, result: Any) -> None:
    """Outputs (names as Depot's build-push-action) and a summary table; absent values become empty outputs."""
    metadata: dict[str, Any] = dict(result.metadata or {})
    outputs = {
        "build-id": result.build_id or "",
        "project-id": result.project_id or "",
        "reference": result.reference or "",
        "digest": result.digest or "",
        "imageid": getattr(result, "imageid", None) or "",
        "metadata": json.dumps(metadata, sort_keys=True),
    }
    for name, value in outputs.items():
        rt.set_output(name, value)
    rows = [
        ("Build ID", markdown_code(outputs["build-id"]) if outputs["build-id"] else "-"),
        ("Project", markdown_code(outputs["project-id"]) if outputs["project-id"] else "-"),
        ("Reference", markdown_code(outputs["reference"]) if outputs["reference"] else "-"),
        ("Digest", markdown_code(outputs["digest"]) if outputs["digest"] else "-"),
        ("Platforms", markdown_escape(", ".join(result.platforms or [])) or "-"),
        ("Size", human_size(result.total_size)),
        ("Uploaded", human_size(result.uploaded_size)),
    ]
    if inputs.save_tags:
        rows.append(("Save-tags", ", ".join(markdown_code(tag) for tag in inputs.save_tags)))
    if inputs.tags:
        rows.append(("Tags", ", ".join(markdown_code(tag) for tag in inputs.tags)))
    heading = "### :package: Cargohold build saved" if inputs.save else "### :hammer: Cargohold build finished"
    pull_hint = ""
    if outputs["build-id"]:
        pull_hint = f"\nPull it in later jobs with `cargohold/action-pull` and `build-id: {outputs['build-id']}`.\n"
    rt.append_summary(f"{heading}\n\n" + markdown_table(["", ""], rows) + pull_hint)


if __name__ == "__main__":
    sys.exit(run_action(main, name=ACTION_NAME))
