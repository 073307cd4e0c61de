"""Every command's --help renders: a help text is user-facing output too, and a markup slip crashes it."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from cargohold.cli import main as cli_main


def _commands() -> list[list[str]]:
    cli_main._register_command_modules()
    paths: list[list[str]] = [[]]

    def walk(command: click.Command, prefix: list[str]) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                paths.append([*prefix, name])
                walk(sub, [*prefix, name])

    walk(cli_main.app, [])
    return paths


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "cargohold")
def test_help_renders(path: list[str]) -> None:
    result = CliRunner().invoke(cli_main.app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_every_documented_command_exists() -> None:
    names = {" ".join(path) for path in _commands()}
    for expected in (
        "serve",
        "save",
        "build",
        "pull",
        "push",
        "login",
        "projects create",
        "trust add",
        "tokens create",
        "pull-token",
        "tags list",
        "tags pin",
        "db check",
        "db upgrade",
        "backup",
        "restore",
        "admin reset-token",
    ):
        assert expected in names, f"cargohold {expected} is missing"


ROOT_HELP_ORDER = [
    *["serve", "pull-token", "login", "logout", "whoami", "save", "build", "pull", "push"],
    *["gc", "expire", "usage", "backup", "restore"],
    *["projects", "trust", "tokens", "builds", "tags", "db", "admin"],
]


def test_root_lists_commands_before_groups_in_module_order() -> None:
    cli_main._register_command_modules()
    names = cli_main.app.list_commands(click.Context(cli_main.app))
    assert names == ROOT_HELP_ORDER


def test_root_help_order_does_not_depend_on_which_module_was_imported_first() -> None:
    """Another test importing ``cargohold.cli.lifecycle`` first used to move gc/expire/usage to the front."""
    cli_main._register_command_modules()
    by_module: dict[str, list[str]] = {}
    for name, command in cli_main.app.commands.items():
        by_module.setdefault(getattr(command.callback, "__module__", ""), []).append(name)
    scrambled = cli_main.Group(name="cargohold")
    for names in reversed(list(by_module.values())):  # modules imported in reverse help order
        for name in names:
            scrambled.add_command(cli_main.app.commands[name], name)
    assert scrambled.list_commands(click.Context(scrambled)) == ROOT_HELP_ORDER


def test_jobs_default_matches_the_client() -> None:
    from cargohold.cli.images import DEFAULT_JOBS
    from cargohold.client.copy import DEFAULT_JOBS as CLIENT_DEFAULT_JOBS

    assert DEFAULT_JOBS == CLIENT_DEFAULT_JOBS


def test_version_and_no_arguments() -> None:
    cli_main._register_command_modules()
    version = CliRunner().invoke(cli_main.app, ["--version"])
    assert version.exit_code == 0 and version.stdout.startswith("cargohold ")
    bare = CliRunner().invoke(cli_main.app, [])
    assert bare.exit_code == 2 and "Usage" in bare.stderr and "serve" in bare.stderr
