"""What every client command shares: connection options, output modes, and turning errors into one sentence.

Commands take the common options through the decorators below, build a :class:`Connection` with
:func:`connect`, print with :func:`emit` (a rich table for people, ``--json`` for scripts), and let
:func:`handle_errors` turn any failure of the client library (a
:class:`~cargohold.client.errors.CargoholdError`) into ``error: <one sentence>`` and exit status 1.

Importing this module stays cheap (click and the standard library): the rich consoles are created on first
use, and the client library (httpx) is imported only by the functions that talk to a registry.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cargohold.oci.errors import CargoholdError

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console

    from cargohold.client.retry import RetryPolicy
    from cargohold.client.settings import Connection

F = TypeVar("F", bound=Callable[..., Any])

RETRY_FOR_META = "cargohold.retry_for"
"""Where ``--retry-for`` keeps its value (seconds) in the click context, for :func:`retry_policy`."""


def _remember_retry_for(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is None or ctx.resilient_parsing:
        return
    from cargohold.cli.durations import parse_duration

    try:
        ctx.meta[RETRY_FOR_META] = parse_duration(value).total_seconds()
    except ValueError as exc:
        raise click.BadParameter(f"{exc}; 0 turns retries off", param_hint="--retry-for") from None


retry_for_option = click.option(
    "--retry-for",
    envvar="CARGOHOLD_RETRY_FOR",
    show_envvar=True,
    expose_value=False,
    callback=_remember_retry_for,
    show_default="60s",
    help="How long to keep retrying a server that is unavailable (restarting, overloaded), e.g. 60s or 2m; "
    "0 turns retries off.",
)


def _remember_ca_cert(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is None or ctx.resilient_parsing:
        return
    from cargohold.client.tls import CA_CERT_ENV, trust_ca_file

    try:
        trust_ca_file(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=f"--ca-cert ({CA_CERT_ENV})") from None


ca_cert_option = click.option(
    "--ca-cert",
    envvar="CARGOHOLD_CA_CERT",
    show_envvar=True,
    expose_value=False,
    callback=_remember_ca_cert,
    type=click.Path(dir_okay=False),
    help="PEM file with the CA certificate(s) that signed the server's certificate (a private CA), trusted on top "
    "of the system's.",
)


def registry_option(command: F) -> F:
    """``--registry``, ``--retry-for`` and ``--ca-cert``: every command that talks to a server takes them."""
    command = click.option("--registry", help="Cargohold URL (env CARGOHOLD_REGISTRY).", show_default=False)(command)
    return ca_cert_option(retry_for_option(command))


def retry_policy() -> RetryPolicy:
    """The retry policy for this command: ``--retry-for`` (after the command or before it) or its
    environment variable, else the default budget; outage notices go to stderr, one line per outage."""
    from cargohold.client.retry import RetryPolicy

    ctx = click.get_current_context(silent=True)
    budget = ctx.meta.get(RETRY_FOR_META) if ctx is not None else None
    policy = RetryPolicy(notify=_notice)
    return policy if budget is None else policy.with_budget(budget)


def _notice(message: str) -> None:
    from rich.markup import escape

    stderr.print(f"[yellow]note:[/] {escape(message)}")


project_option = click.option("--project", help="Project ID (env CARGOHOLD_PROJECT_ID).", show_default=False)
token_option = click.option("--token", help="Cargohold token (env CARGOHOLD_TOKEN).", show_default=False)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


class _LazyConsole:
    """A rich ``Console`` created on first use, so that importing the CLI does not import rich."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


stderr: Any = _LazyConsole(stderr=True, highlight=False, soft_wrap=True)
stdout: Any = _LazyConsole(highlight=False, soft_wrap=True)


class CliError(CargoholdError):
    """A failure to report as one sentence (already phrased for people); ``code`` is for ``--json`` readers."""

    def __init__(self, message: str, *, code: str = "ERROR") -> None:
        super().__init__(message)
        self.code = code


def connect(
    registry: str | None,
    project: str | None,
    token: str | None,
    *,
    context_dir: Path | None = None,
    need_project: bool = False,
) -> Connection:
    from cargohold.client.settings import resolve

    connection = resolve(registry=registry, project=project, token=token, context_dir=context_dir, retry=retry_policy())
    if need_project and not connection.project:
        raise CliError(
            "no project given: pass --project ID, set CARGOHOLD_PROJECT_ID, or add a cargohold.json "
            '({"id": "<project>"}) next to the build context'
        )
    return connection


def require_project(connection: Connection) -> str:
    if not connection.project:
        raise CliError("no project given: pass --project ID or set CARGOHOLD_PROJECT_ID")
    return connection.project


def emit(
    data: Any,
    *,
    as_json: bool,
    columns: Sequence[tuple[str, str]] | None = None,
    rows: Sequence[dict[str, Any]] | None = None,
    title: str | None = None,
    text: str | None = None,
) -> None:
    """Print ``data`` as JSON, or as a table of ``rows`` with ``columns`` ((key, header) pairs), or ``text``."""
    if as_json:
        stdout.print_json(json.dumps(data, default=str))
        return
    if columns is not None and rows is not None:
        from rich.table import Table

        table = Table(title=title, show_lines=False, header_style="bold")
        for _key, header in columns:
            table.add_column(header)
        for row in rows:
            table.add_row(*(_cell(row.get(key)) for key, _header in columns))
        stdout.print(table)
        return
    if text is not None:
        stdout.print(text, markup=False)
        return
    if isinstance(data, dict):
        width = max((len(str(key)) for key in data), default=0)
        for key, value in data.items():
            stdout.print(f"{key:<{width}}  {_cell(value)}", markup=False)
        return
    stdout.print(str(data), markup=False)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


_HTTP_CODES = {400: "INVALID", 401: "UNAUTHORIZED", 403: "DENIED", 404: "NOT_FOUND", 409: "CONFLICT", 429: "TOO_MANY"}


def _kind_codes() -> list[tuple[type[BaseException], str]]:
    """``--json`` codes by kind of failure, most specific first (imported when needed: the client library is not
    cheap to import)."""
    from cargohold.client.credentials import CredentialsError
    from cargohold.client.settings import SettingsError
    from cargohold.images.common import ImageError
    from cargohold.images.docker import DockerError
    from cargohold.oci.archive import ArchiveError
    from cargohold.oci.descriptor import DescriptorError
    from cargohold.oci.errors import DigestMismatchError, PlatformNotFoundError
    from cargohold.oci.imageref import ImageReferenceError
    from cargohold.oci.layout import LayoutError

    return [
        (SettingsError, "SETTINGS"),
        (CredentialsError, "CREDENTIALS"),
        (DigestMismatchError, "DIGEST_MISMATCH"),
        (PlatformNotFoundError, "PLATFORM_NOT_FOUND"),
        (ImageReferenceError, "INVALID_REFERENCE"),
        (DockerError, "DOCKER_ERROR"),
        (ImageError, "IMAGE_ERROR"),
        (ArchiveError, "IMAGE_ERROR"),
        (LayoutError, "IMAGE_ERROR"),
        (DescriptorError, "IMAGE_ERROR"),
    ]


def error_code(exc: BaseException) -> str:
    """A stable upper-case code for ``--json`` readers: the server's own code when it sent one."""
    from cargohold.client.control import ControlError
    from cargohold.client.errors import RegistryError

    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, ControlError):
        return exc.code or _HTTP_CODES.get(exc.status or 0, "CONTROL_API_ERROR" if exc.status else "UNREACHABLE")
    if isinstance(exc, RegistryError):
        return exc.codes[0] if exc.codes else _HTTP_CODES.get(exc.status or 0, "REGISTRY_ERROR")
    return next((code for kind, code in _kind_codes() if isinstance(exc, kind)), "ERROR")


def _wants_json() -> bool:
    """Whether the running command was given ``--json`` (every command names that flag ``as_json``)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.params.get("as_json"))


def report_error(message: str, code: str) -> None:
    """``error: <sentence>`` on stderr for people; with ``--json``, ``{"error": {"code", "message"}}`` on stdout."""
    sentence = _sentence(message)
    if _wants_json():
        click.echo(json.dumps({"error": {"code": code, "message": sentence}}))
        return
    from rich.markup import escape

    stderr.print(f"[bold red]error:[/] {escape(sentence)}")


@contextmanager
def handle_errors() -> Iterator[None]:
    """Print the client library's failures (every :class:`CargoholdError`) as one sentence (JSON with ``--json``)
    and exit 1; anything else is a bug and still shows its traceback."""
    try:
        yield
    except CargoholdError as exc:
        report_error(str(exc), error_code(exc))
        raise click.exceptions.Exit(1) from None
    except KeyboardInterrupt:
        report_error("interrupted", "INTERRUPTED")
        raise click.exceptions.Exit(130) from None


def _sentence(message: str) -> str:
    message = message.strip() or "the command failed"
    return message if message.endswith((".", "?", "!")) else message + "."


def guarded(func: Callable[..., None]) -> Callable[..., None]:
    """Decorator form of :func:`handle_errors` for command functions (keeps the signature and docstring)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        with handle_errors():
            func(*args, **kwargs)

    return wrapper


def read_secret_stdin() -> str:
    value = sys.stdin.readline().strip()
    if not value:
        raise CliError("nothing was read from standard input; pipe the token in, e.g. echo $TOKEN | cargohold …")
    return value
