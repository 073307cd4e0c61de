"""The ``cargohold`` command.

Built on plain click. Start-up time is part of the interface (CI runs ``cargohold`` many times per job), so
the command modules import only click and the standard library at top level; rich, httpx, the client and
images packages, SQLAlchemy and aiohttp are imported inside the commands that need them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from cargohold import __version__
from cargohold.cli.context import ca_cert_option, retry_for_option
from cargohold.cli.serve import SERVER_PACKAGES, serve

F = TypeVar("F", bound=Callable[..., Any])


class HelpArgument(click.Argument):
    """A positional argument with a help text (built into click only from 8.5), shown under "Arguments:"."""

    def __init__(self, param_decls: list[str], *, help: str | None = None, **attrs: Any) -> None:
        super().__init__(param_decls, **attrs)
        self.help = help
        # As declared: newer clicks keep a sentinel, not None, in .default when there is none.
        self.declared_default = attrs.get("default")

    def help_row(self) -> tuple[str, str]:
        extra = []
        if self.declared_default is not None:
            extra.append(f"default: {self.declared_default}")
        if self.required:
            extra.append("required")
        text = self.help or ""
        if extra:
            text = f"{text}  [{'; '.join(extra)}]".lstrip()
        return self.human_readable_name, text


def argument(name: str, *, help: str, **attrs: Any) -> Callable[[F], F]:
    """``click.argument`` with a help text."""
    return click.argument(name, cls=HelpArgument, help=help, **attrs)


class Command(click.Command):
    """A command whose help lists its arguments, with their help texts, before its options."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Spelled out because click before 8.5 has no format_arguments step.
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        self.format_arguments(ctx, formatter)
        self.format_options(ctx, formatter)
        self.format_epilog(ctx, formatter)

    def format_arguments(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [param.help_row() for param in self.get_params(ctx) if isinstance(param, HelpArgument)]
        if rows:
            with formatter.section("Arguments"):
                formatter.write_dl(rows)


class Group(click.Group):
    """Lists plain commands before sub-groups, each in help order (click would sort them by name).

    Help order is the order of :data:`COMMAND_MODULES`, then registration order within a module. It is not
    simply registration order because a module registers its commands when first imported, and whoever imports
    ``cargohold.cli.images`` first (a test, a plugin) would otherwise move its commands to the front.
    """

    command_class = Command
    group_class = type  # sub-groups are Groups too

    def list_commands(self, ctx: click.Context) -> list[str]:
        registered = list(self.commands)

        def help_position(name: str) -> tuple[bool, int, int]:
            command = self.commands[name]
            return (isinstance(command, click.Group), _module_rank(command), registered.index(name))

        return sorted(registered, key=help_position)


def _module_rank(command: click.Command) -> int:
    """Where the module defining ``command`` stands in :data:`COMMAND_MODULES` (-1: ``serve`` and the root's own)."""
    module = getattr(command.callback, "__module__", "") or ""
    prefix = "cargohold.cli."
    name = module[len(prefix) :] if module.startswith(prefix) else module
    return COMMAND_MODULES.index(name) if name in COMMAND_MODULES else -1


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"cargohold {__version__}")
        ctx.exit()


@click.group(
    cls=Group,
    name="cargohold",
    help="Cargohold: an ephemeral container registry for CI. Build once, pull anywhere, push when green.",
    no_args_is_help=True,
    context_settings={"show_default": True},
)
@click.option(
    "--version", is_flag=True, expose_value=False, is_eager=True, callback=_version, help="Print the version and exit."
)
@retry_for_option
@ca_cert_option
def app() -> None:
    """Cargohold command-line interface."""


app.add_command(serve)  # first in the help, as the registration order makes it


def _register_command_modules() -> None:
    """Each command module adds its commands and groups to ``app`` when imported."""
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(f"cargohold.cli.{module}")


COMMAND_MODULES: tuple[str, ...] = ("admin", "images", "lifecycle", "operations")
"""Command modules, in help order (admin: projects/trust/tokens/login; images: save/build/pull/push; lifecycle;
operations: db/backup/restore and break-glass admin recovery on the server's host)."""


def main() -> None:
    _register_command_modules()
    app()


__all__ = ["SERVER_PACKAGES", "app", "main"]
