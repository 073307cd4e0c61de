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
import os
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
    retry_policy,
    trust_ca_cert,
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
LIST_INPUTS = {
    # input -> BuildOptions field; one item per line, or comma-separated where the value cannot contain commas
    "build-contexts": ("build_contexts", False),
    "ssh": ("ssh", False),
    "cache-from": ("cache_from", False),
    "cache-to": ("cache_to", False),
    "outputs": ("outputs", False),
    "annotations": ("annotations", False),
    "attests": ("attests", False),
    "add-hosts": ("add_hosts", True),
    "allow": ("allow", True),
    "no-cache-filters": ("no_cache_filters", True),
    "ulimit": ("ulimits", False),
}
"""docker/build-push-action's list inputs that Cargohold passes to the builder (see images.build.PASS_THROUGH).
Their values contain commas (``type=registry,ref=...``), so only ``add-hosts``, ``allow`` and
``no-cache-filters`` are also split on commas, as build-push-action does."""
VALUE_INPUTS = {"network": "network", "shm-size": "shm_size", "cgroup-parent": "cgroup_parent"}
BUILD_ONLY_INPUTS = (
    "file",
    "build-args",
    "target",
    "platforms",
    "secrets",
    "secret-files",
    "builder",
    "provenance",
    "sbom",
    *LIST_INPUTS,
    *VALUE_INPUTS,
)
"""Inputs that only make sense when we build; combined with ``image`` they would be silently ignored."""
UNSUPPORTED_INPUTS = {
    "build-platform": "Cargohold builds on this runner, so its architecture is the runner's; use a runner of that "
    "architecture or 'platforms' with QEMU",
    "buildx-fallback": "Cargohold always builds with this runner's builder; there is no remote builder to fall back "
    "from",
    "lint": "run the Dockerfile checks in a step of their own (docker buildx build --check)",
    "lint-fail-on": "run the Dockerfile checks in a step of their own (docker buildx build --check)",
    "sbom-dir": "use 'sbom' to attach the SBOM to the image, or 'outputs' to write it locally",
    "github-token": "Cargohold builds the checked-out directory ('context'), never a git URL",
}
"""Inputs of Depot's build-push-action that cannot apply here: each one set fails with its own reason, instead
of being ignored. ``false`` counts as unset for the boolean ones (Depot's defaults)."""


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
    secret_files: list[str] = field(default_factory=list)
    pass_through: dict[str, Any] = field(default_factory=dict)
    """Further builder flags by BuildOptions field (cache_from, ssh, network, ...)."""


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


def refuse_unsupported(rt: ActionRuntime) -> None:
    """One error naming every Depot input that cannot apply (all of them at once, so one run shows them all)."""
    given = [name for name in UNSUPPORTED_INPUTS if rt.get_input(name) and rt.get_input(name).lower() != "false"]
    if given:
        reasons = "; ".join(f"'{name}': {UNSUPPORTED_INPUTS[name]}" for name in given)
        raise ActionError(
            f"{', '.join(repr(n) for n in given)} cannot apply to a Cargohold build, remove "
            f"{'it' if len(given) == 1 else 'them'} ({reasons})",
            title="Unsupported input",
        )


def _secret_files(rt: ActionRuntime) -> list[str]:
    """``secret-files``: ``KEY=PATH`` lines, each a ``--secret id=KEY,src=PATH`` (the file holds the secret)."""
    specs = []
    for key, path in _key_values(
        rt, "secret-files", rt.get_list("secret-files", comma=False), value_required=True
    ).items():
        if not path.strip() or not os.path.isfile(path.strip()):
            raise ActionError(
                f"'secret-files' entry {key} names {path.strip() or '(nothing)'}, which is not a file; write KEY=PATH "
                "with the path of a file holding the secret",
                title="Invalid input",
            )
        specs.append(f"id={key},src={path.strip()}")
    return specs


def read_inputs(rt: ActionRuntime) -> BuildInputs:
    """Parse and validate every input before any work, so a typo fails in a second instead of after a build."""
    refuse_unsupported(rt)
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
        save_tags=list(dict.fromkeys(rt.get_list("save-tag") + rt.get_list("save-tags"))),
        image=image,
        secret_files=_secret_files(rt),
        pass_through={
            **{field_name: rt.get_list(name, comma=comma) for name, (field_name, comma) in LIST_INPUTS.items()},
            **{field_name: rt.get_optional(name) for name, field_name in VALUE_INPUTS.items()},
        },
    )
    if inputs.push and not inputs.tags:
        raise ActionError(
            "'push: true' needs at least one entry in 'tags'; add tags or set push to false", title="Invalid input"
        )
    if inputs.save_tags and not inputs.save:
        raise ActionError(
            "'save-tags' (and 'save-tag') only apply when saving; remove them or set 'save: true'",
            title="Conflicting inputs",
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
    trust_ca_cert(rt)
    retry = retry_policy(rt)
    token = authenticate(rt, registry, retry=retry) if registry is not None else None
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
            retry=retry,
            secret_specs=inputs.secret_files,
            pass_through=inputs.pass_through,
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
