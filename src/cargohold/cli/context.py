"""What every client command shares: connection options, output modes, and turning errors into one sentence.

Commands take the common options through the ``Annotated`` aliases below, build a :class:`Connection` with
:func:`connect`, print with :func:`emit` (a rich table for people, ``--json`` for scripts), and let
:func:`handle_errors` turn any known failure into ``error: <one sentence>`` and exit status 1.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cargohold.client.control import ControlError
from cargohold.client.credentials import CredentialsError
from cargohold.client.errors import DigestMismatchError, PlatformNotFoundError, RegistryError
from cargohold.client.settings import Connection, SettingsError, resolve

RegistryOption = Annotated[
    str | None, typer.Option("--registry", help="Cargohold URL (env CARGOHOLD_REGISTRY).", show_default=False)
]
ProjectOption = Annotated[
    str | None, typer.Option("--project", help="Project ID (env CARGOHOLD_PROJECT_ID).", show_default=False)
]
TokenOption = Annotated[
    str | None, typer.Option("--token", help="Cargohold token (env CARGOHOLD_TOKEN).", show_default=False)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)


class CliError(Exception):
    """A failure to report as one sentence (already phrased for people)."""


def connect(
    registry: str | None,
    project: str | None,
    token: str | None,
    *,
    context_dir: Path | None = None,
    need_project: bool = False,
) -> Connection:
    connection = resolve(registry=registry, project=project, token=token, context_dir=context_dir)
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


KNOWN_ERRORS: tuple[type[BaseException], ...] = (
    CliError,
    SettingsError,
    ControlError,
    RegistryError,
    CredentialsError,
    DigestMismatchError,
    PlatformNotFoundError,
)


@contextmanager
def handle_errors() -> Iterator[None]:
    """Print known failures as ``error: …`` and exit 1; a bug still shows its traceback."""
    try:
        yield
    except KNOWN_ERRORS as exc:
        stderr.print(f"[bold red]error:[/] {_sentence(str(exc))}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        stderr.print("[bold red]error:[/] interrupted")
        raise typer.Exit(130) from None


def _sentence(message: str) -> str:
    message = message.strip() or "the command failed"
    return message if message.endswith((".", "?", "!")) else message + "."


def guarded(func: Callable[..., None]) -> Callable[..., None]:
    """Decorator form of :func:`handle_errors` for command functions (keeps typer's signature)."""

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
