"""``cargohold/action-push``: copy a saved build to its final registry (GHCR, Docker Hub, ECR ...).

Run as ``python -m cargohold.actions.push`` by ``action-push/action.yml``. The copy goes registry to
registry, without the local Docker engine, so the job that pushes needs neither Docker nor the image's
layers on disk.

Destination credentials: ``username``/``password`` if given (masked at once), else whatever
``docker/login-action`` (or ``docker login``) wrote to the Docker config. They are handed to the images
layer in memory and never written anywhere, because composite actions have no post step to clean up.

The copy is the images layer's :func:`cargohold.images.push_build`. By default (``transfer: auto``) the
Cargohold server uploads the blobs to the destination itself, so the layers never cross the runner's
network; the job hands it a credential for the destination repository only (see cargohold.images.push).
"""

from __future__ import annotations

import sys

from cargohold.actions.common import (
    authenticate,
    images_errors,
    parse_build_ref,
    project_input,
    registry_input,
    retry_policy,
    trust_ca_cert,
)
from cargohold.actions.runtime import ActionError, ActionRuntime, markdown_code, markdown_table, run_action
from cargohold.oci.imageref import ImageReference, ImageReferenceError, is_registry_host

ACTION_NAME = "Cargohold push"


def parse_tags(rt: ActionRuntime) -> list[str]:
    """Full destination references (``ghcr.io/org/app:1.2``); a bare name would silently mean Docker Hub."""
    tags = rt.get_list("tags", required=True)
    for tag in tags:
        try:
            parsed = ImageReference.parse(tag)
        except ImageReferenceError as exc:
            raise ActionError(
                f"'tags' entry {tag!r} is not an image reference ({exc}); write e.g. ghcr.io/owner/app:1.2.3",
                title="Invalid input",
            ) from None
        if parsed.digest is not None or parsed.tag is None:
            raise ActionError(
                f"'tags' entry {tag!r} needs a tag and no digest; write e.g. ghcr.io/owner/app:1.2.3",
                title="Invalid input",
            )
        first, slash, _ = tag.partition("/")
        if not slash or not is_registry_host(first):
            raise ActionError(
                f"'tags' entry {tag!r} names no registry, which means Docker Hub; write the registry "
                "out, e.g. docker.io/owner/app:1.2.3 or ghcr.io/owner/app:1.2.3",
                title="Invalid input",
            )
    return tags


def main(rt: ActionRuntime) -> None:
    build_id = rt.get_input("build-id", required=True)
    registry = registry_input(rt)
    ref = parse_build_ref(build_id, registry)
    project = project_input(rt)
    tags = parse_tags(rt)
    platform = rt.get_optional("platform")
    transfer = rt.get_optional("transfer") or "auto"
    if transfer not in ("auto", "server", "client"):
        raise ActionError(f"'transfer' is {transfer!r}; use auto, server or client", title="Invalid input")
    username = rt.get_optional("username")
    password = rt.get_input("password")
    rt.add_mask(password)
    if bool(username) != bool(password):
        raise ActionError(
            "set both 'username' and 'password' for the destination, or neither to use the Docker "
            "config that docker/login-action wrote",
            title="Invalid input",
        )
    targets = rt.get_list("targets")
    trust_ca_cert(rt)
    retry = retry_policy(rt)
    token = authenticate(rt, registry, retry=retry)

    from cargohold import images  # deferred: the input checks above should not wait for heavy imports

    pushed: list[str] = []
    digests: dict[str, str] = {}
    wanted: list[str | None] = list(targets) if targets else [None]
    for target in wanted:
        # Several targets to one set of tags: each tag gets -<target> appended, as Depot's pull names them.
        names = [f"{tag}-{target}" for tag in tags] if target and len(targets) > 1 else tags
        what = f"{ref} target {target}" if target else str(ref)
        with rt.untrusted_output(f"Pushing {what} to {len(names)} tag(s)"), images_errors("Push failed"):
            result = images.push_build(
                registry=registry.url,
                token=token.token,
                build_id=ref.build_id,
                project=ref.project or project,
                save_tag=ref.tag,
                tags=names,
                platform=platform,
                username=username,
                password=password or None,
                transfer=transfer,
                target=target,
                retry=retry,
            )
        pushed += names
        digests.update(result.digests)
    write_results(rt, pushed, digests)


def write_results(rt: ActionRuntime, tags: list[str], digests: dict[str, str]) -> None:
    """``digest`` (of the first tag: the tags of one target share its manifest) and ``tags`` (one per line)."""
    missing = [tag for tag in tags if not digests.get(tag)]
    if missing:
        raise ActionError(
            f"the registry did not confirm {', '.join(missing)}; re-run the job to push them again",
            title="Push incomplete",
        )
    rt.set_output("digest", digests[tags[0]])
    rt.set_output("tags", "\n".join(tags))
    rows = [(markdown_code(tag), markdown_code(digests[tag])) for tag in tags]
    rt.append_summary("### :rocket: Cargohold push\n\n" + markdown_table(["Tag", "Digest"], rows))


if __name__ == "__main__":
    sys.exit(run_action(main, name=ACTION_NAME))
