"""What the three actions share: the registry and project inputs, authentication, and build references.

Kept apart from :mod:`cargohold.actions.runtime` because that module speaks only the runner's protocol,
while this one knows Cargohold's concepts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from cargohold.actions.oidc import RegistryToken, registry_base, resolve_token
from cargohold.actions.runtime import ActionError, ActionRuntime
from cargohold.client.errors import CargoholdError
from cargohold.client.retry import RetryPolicy

REGISTRY_ENV = "CARGOHOLD_REGISTRY"
PROJECT_ENV = "CARGOHOLD_PROJECT_ID"
RETRY_FOR_ENV = "CARGOHOLD_RETRY_FOR"
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Registry:
    """Where Cargohold lives: ``url`` for HTTP calls, ``host`` for image references (``host[:port][/prefix]``)."""

    url: str
    host: str


@dataclass(frozen=True, slots=True)
class BuildRef:
    """What ``build-id`` named: a build id or a bare save-tag (``build_id``), or ``project:tag``."""

    build_id: str | None
    project: str | None
    tag: str | None

    def __str__(self) -> str:
        return self.build_id if self.build_id else f"{self.project}:{self.tag}"


def registry_input(rt: ActionRuntime) -> Registry:
    """The ``registry`` input, else ``$CARGOHOLD_REGISTRY`` (so an organisation can set it once as a variable)."""
    value = rt.get_input("registry") or rt.environ.get(REGISTRY_ENV, "").strip()
    if not value:
        raise ActionError(
            "no registry given; set the 'registry' input (or a CARGOHOLD_REGISTRY environment variable) to your "
            "Cargohold URL, e.g. https://cargohold.example.com",
            title="Missing input",
        )
    url = registry_base(value)
    parts = urlsplit(url)
    return Registry(url=url, host=(parts.netloc + parts.path).rstrip("/"))


def project_input(rt: ActionRuntime) -> str | None:
    """The ``project`` input, else ``$CARGOHOLD_PROJECT_ID``; None lets the registry pick the token's only project."""
    value = rt.get_input("project") or rt.environ.get(PROJECT_ENV, "").strip()
    if value and not _ID_RE.match(value):
        raise ActionError(
            f"the project {value!r} is not a project id; copy the id from 'cargohold projects list' "
            "(lower-case letters and digits)",
            title="Invalid input",
        )
    return value or None


def parse_build_ref(value: str, registry: Registry | None = None) -> BuildRef:
    """``<build-id>``, ``<project>:<tag>`` or ``<registry host>/<project>:<tag>``, as Depot's pull accepts."""
    text = value.strip()
    if registry is not None and text.startswith(registry.host + "/"):
        text = text[len(registry.host) + 1 :]
    if ":" in text:
        project, _, tag = text.rpartition(":")
        if _ID_RE.match(project) and _TAG_RE.match(tag):
            return BuildRef(build_id=None, project=project, tag=tag)
    elif _ID_RE.match(text) or _TAG_RE.match(text):
        # A build ID or a bare save-tag of the 'project' input: the images layer tells them apart (build IDs
        # have one known shape, cargohold.images.pull.BUILD_ID_PATTERN).
        return BuildRef(build_id=text, project=None, tag=None)
    raise ActionError(
        f"'build-id' is {value!r}; use the build-id output of cargohold/action-build, a save-tag of the "
        "'project' input, or <project>:<save-tag>",
        title="Invalid input",
    )


def trust_ca_cert(rt: ActionRuntime) -> None:
    """The ``ca-cert`` input (else ``$CARGOHOLD_CA_CERT``): a private CA's certificate to trust, for a Cargohold
    with a certificate the runner's system bundle does not know."""
    from cargohold.client.tls import CA_CERT_ENV, trust_ca_file

    value = rt.get_input("ca-cert") or rt.environ.get(CA_CERT_ENV, "").strip()
    if not value:
        return
    try:
        trust_ca_file(value)
    except ValueError as exc:
        raise ActionError(
            f"'ca-cert': {exc}; give the path of a PEM CA certificate file", title="Invalid input"
        ) from None


def retry_policy(rt: ActionRuntime) -> RetryPolicy:
    """The ``retry-for`` input (else ``$CARGOHOLD_RETRY_FOR``, else the default): how long every request of
    the step keeps retrying an unavailable registry. Each outage is logged once, as a warning."""
    from cargohold.cli.durations import parse_duration

    value = rt.get_input("retry-for") or rt.environ.get(RETRY_FOR_ENV, "").strip()
    policy = RetryPolicy(notify=lambda message: rt.warning(message, title="Registry unavailable"))
    if not value:
        return policy
    try:
        seconds = parse_duration(value).total_seconds()
    except ValueError:
        raise ActionError(
            f"'retry-for' is {value!r}; use a duration such as 60s or 2m (0 turns retries off)", title="Invalid input"
        ) from None
    return policy.with_budget(seconds)


def authenticate(
    rt: ActionRuntime,
    registry: Registry,
    *,
    client: httpx.Client | None = None,
    retry: RetryPolicy | None = None,
) -> RegistryToken:
    """Resolve and mask the registry token, and say in the log where it came from (never what it is)."""
    with rt.group("Authenticating to Cargohold"):
        token = resolve_token(rt, registry.url, client=client, retry=retry)
        if token.source == "oidc":
            projects = ", ".join(token.projects) or "none"
            rt.info(f"exchanged the job's OIDC token; projects: {projects}; expires {token.expires_at or 'unknown'}")
        else:
            rt.info("using the token from the 'token' input" if token.source == "input" else "using $CARGOHOLD_TOKEN")
    return token


def project_for_saving(registry: Registry, token: RegistryToken, project: str | None) -> str:
    """The project a build is saved into: the input, else the only project the credential reaches.

    An OIDC exchange already says which projects the token covers; any other token is asked through the
    control API. Inside an action the fix is always the ``project`` input, never a CLI flag.
    """
    if project:
        return project
    reachable = list(token.projects)
    if not reachable:
        from cargohold.client.control import ControlClient, ControlError

        try:
            with ControlClient(registry.url, token.token) as control:
                reachable = [project.id for project in control.list_projects()]
        except ControlError as exc:
            raise ActionError(
                f"could not list the projects this token reaches ({exc}); set the 'project' input",
                title="Missing input",
            ) from None
    if len(reachable) == 1:
        return reachable[0]
    if not reachable:
        raise ActionError(
            "this token reaches no project; set the 'project' input and make sure the project trusts this "
            "repository (cargohold trust add) or the token belongs to it",
            title="Missing input",
        )
    raise ActionError(
        f"this token reaches several projects ({', '.join(sorted(reachable))}); set the 'project' input to one of them",
        title="Missing input",
    )


@contextmanager
def images_errors(title: str) -> Iterator[None]:
    """Turn the client library's failures (every :class:`CargoholdError`) into one annotation titled ``title``.

    Those exceptions already carry a message meant for people; only anything else is treated as a bug by
    :func:`cargohold.actions.runtime.run_action` (traceback and a request to report it).
    """
    from cargohold.client.errors import is_storage_full

    try:
        yield
    except ActionError:
        raise
    except CargoholdError as exc:
        if is_storage_full(exc):
            title = "Cargohold's storage is full"
        raise ActionError(str(exc).strip() or type(exc).__name__, title=title) from None


def human_size(size: int | None) -> str:
    """Bytes as the summary shows them; ``-`` when the images layer did not report a size."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
