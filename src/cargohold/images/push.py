"""``cargohold push``: copy a saved build to its final registry, without rebuilding and without disk.

Registry to registry with :func:`~cargohold.client.copy.copy_image`: HEAD first (blobs the destination
has are skipped), a cross-repo mount when both are the same registry, else the Cargohold server uploads
the blob to the destination itself (``transfer="server"``/``"auto"``: the bytes never pass through this
machine; see cargohold.server.control.blob_copies) or, when the server will not (``"auto"`` falls back with a
note) or must not (``"client"``), a GET from Cargohold piped into an upload at the destination. Then
child manifests by digest, the top manifest under each tag, and referrers. The manifests move as the
exact bytes Cargohold stored, so the pushed digest is the saved digest. Tags are grouped by destination
repository, so five tags of one repository cost one copy.

Destination credentials, first hit wins: explicit ``username``/``password`` (the action's inputs),
``CARGOHOLD_PUSH_REGISTRY_USERNAME``/``_PASSWORD`` (or ``_AUTH``), the Docker config, else anonymous. The
Cargohold token is never sent to the destination; for a server-side push the server receives an
``Authorization`` value for the destination repository (a token scoped to it where the registry issues
tokens, else the Basic credentials) for the duration of the copy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cargohold.client.copy import DEFAULT_JOBS, RegistryRepo, ServerPush, copy_image
from cargohold.client.credentials import PUSH_ENV_PREFIX, resolve_credentials
from cargohold.client.registry import RegistryClient
from cargohold.client.retry import tls_problem
from cargohold.client.settings import Connection
from cargohold.client.tls import CA_CERT_HINT
from cargohold.images.common import ImageError, NamingTarget, cargohold_client
from cargohold.images.progress import Progress
from cargohold.images.pull import choose_manifest, pull_info, target_digest
from cargohold.images.sources import summarize
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.imageref import ImageReference, ImageReferenceError, normalize_registry

TRANSFERS = ("auto", "server", "client")
INSECURE_ENV = "CARGOHOLD_INSECURE_REGISTRIES"


@dataclass
class TagPush:
    """One destination tag and what landed there."""

    tag: str
    digest: str
    uploaded: int = 0
    mounted: int = 0
    skipped: int = 0
    uploaded_size: int = 0
    server_pushed: int = 0
    """How many of the uploaded blobs the Cargohold server uploaded itself (the rest streamed through us)."""


@dataclass
class PushResult:
    """``digests`` maps every requested tag to the digest the destination stored under it."""

    build_id: str
    digest: str
    digests: dict[str, str]
    results: list[TagPush] = field(default_factory=list)
    platform: str | None = None
    total_size: int = 0


def parse_destination(tag: str) -> ImageReference:
    """A full ``REGISTRY/REPO:TAG``: a bare name would silently mean Docker Hub, which is never intended here."""
    try:
        parsed = ImageReference.parse(tag)
    except ImageReferenceError as exc:
        raise ImageError(f"-t {tag!r} is not an image reference ({exc}); write e.g. ghcr.io/owner/app:1.2.3") from None
    if parsed.tag is None or parsed.digest is not None:
        raise ImageError(f"-t {tag!r} needs a tag and no digest; write e.g. ghcr.io/owner/app:1.2.3")
    return parsed


def push_image(
    connection: Connection,
    build_id: str,
    tags: Sequence[str],
    *,
    platform: str | None = None,
    username: str | None = None,
    password: str | None = None,
    jobs: int = DEFAULT_JOBS,
    progress: Progress | None = None,
    environ: Mapping[str, str] | None = None,
    transfer: str = "auto",
    insecure_registries: Sequence[str] | None = None,
    target: str | None = None,
) -> PushResult:
    """Copy build ``build_id`` (or ``PROJECT:TAG``, or a save-tag of ``connection.project``) to every
    ``REGISTRY/REPO:TAG`` in ``tags``; ``target`` picks one bake target of a build saved with several.

    ``transfer``: ``"auto"`` (the server uploads blobs itself when it can, else they stream through this
    process), ``"server"`` (the server must) or ``"client"`` (always stream through this process).
    ``insecure_registries``: destination hosts (``host[:port]``; an item may list several, comma-separated)
    spoken to over plain HTTP, like Docker's ``insecure-registries`` (default:
    ``CARGOHOLD_INSECURE_REGISTRIES``); loopback hosts always are.
    """
    progress = progress or Progress()
    if transfer not in TRANSFERS:
        raise ImageError(f"transfer {transfer!r} is not one of {', '.join(TRANSFERS)}")
    if not tags:
        raise ImageError("no destination given; add -t REGISTRY/REPOSITORY:TAG (repeatable)")
    destinations = [(tag, parse_destination(tag)) for tag in tags]
    if insecure_registries is None:
        insecure_registries = [(environ if environ is not None else os.environ).get(INSECURE_ENV, "")]
    insecure = {normalize_registry(h.strip()) for item in insecure_registries for h in item.split(",") if h.strip()}
    groups: dict[tuple[str, str], list[tuple[str, ImageReference]]] = {}
    for tag, parsed in destinations:
        groups.setdefault((parsed.registry, parsed.repository), []).append((tag, parsed))
    with connection.control() as control:
        info = pull_info(control, build_id, connection.project)
    result = PushResult(build_id=info.build_id, digest="", digests={}, platform=platform)
    with cargohold_client(connection, info.registry, info.token) as source_client:
        server_push = None
        if transfer != "client":
            server_push = ServerPush(
                required=transfer == "server",
                on_fallback=lambda reason: progress.step(f"note: blobs stream through this machine ({reason})"),
            )
        source = RegistryRepo(source_client, info.repository, server_push)
        top = source.get_manifest(Digest.parse(target_digest(info, target)))
        chosen = choose_manifest(source, top, platform, default=None)
        summary = summarize(source, chosen.digest, top=chosen)
        result.total_size = summary.total_size
        for (registry, repository), members in groups.items():
            names = [parsed.tag for _, parsed in members if parsed.tag]
            where = f"{members[0][1].repository_path}:{','.join(names)}"
            credentials = resolve_credentials(
                registry, username=username, password=password, env_prefix=PUSH_ENV_PREFIX, environ=environ
            )
            progress.step(
                f"pushing {chosen.digest} to {where}"
                + (f" as {credentials.username}" if credentials and credentials.username else "")
            )
            sizes: dict[str, list[int]] = {"uploaded": [], "mounted": [], "skipped": []}

            def on_blob(descriptor: Descriptor, how: str, sizes: dict[str, list[int]] = sizes) -> None:
                sizes[how].append(descriptor.size)
                progress.blob(descriptor, how)

            pushed_before = server_push.pushed if server_push else 0
            plain_http = True if normalize_registry(registry) in insecure else None
            with RegistryClient(
                members[0][1].api_host, credentials=credentials, insecure=plain_http, retry=connection.retry
            ) as client:
                destination = NamingTarget(RegistryRepo(client, repository))
                counter = progress.transfer(f"pushing to {members[0][1].repository_path}", summary.total_size)
                try:
                    copied = copy_image(
                        source, chosen.digest, destination, names, jobs=jobs, progress=counter, on_blob=on_blob
                    )
                except ImageError as exc:
                    progress.abort()
                    raise ImageError(f"pushing to {where} failed: {exc}{_tls_hint(exc, registry)}") from exc
                except BaseException:
                    progress.abort()
                    raise
                progress.done()
            by_server = (server_push.pushed if server_push else 0) - pushed_before
            for tag, _ in members:
                result.digests[tag] = str(copied.digest)
                result.results.append(
                    TagPush(
                        tag,
                        str(copied.digest),
                        len(sizes["uploaded"]),
                        len(sizes["mounted"]),
                        len(sizes["skipped"]),
                        sum(sizes["uploaded"]),
                        by_server,
                    )
                )
        result.digest = str(chosen.digest)
    return result


def _tls_hint(exc: BaseException, registry: str) -> str:
    """What to do about a TLS mismatch with the destination, as a clause to append (else nothing)."""
    problem = tls_problem(exc)
    if problem == "plain-http":
        return (
            f"; {registry} answers in plain HTTP, not HTTPS: if that is intended, add --insecure-registry "
            f"{registry} (or CARGOHOLD_INSECURE_REGISTRIES)"
        )
    if problem == "untrusted":
        return f"; {registry}'s certificate is not trusted here: {CA_CERT_HINT}"
    return ""
