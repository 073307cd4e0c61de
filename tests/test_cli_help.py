"""Every command's --help renders: a help text is user-facing output too, and a markup slip crashes it."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from cargohold.cli import main as cli_main


def _commands() -> list[list[str]]:
    cli_main._register_command_modules()
    root = typer.main.get_command(cli_main.app)
    paths: list[list[str]] = [[]]

    def walk(command: object, prefix: list[str]) -> None:
        # Typer vendors its own click, so look for subcommands by shape rather than by class.
        for name, sub in getattr(command, "commands", {}).items():
            paths.append([*prefix, name])
            walk(sub, [*prefix, name])

    walk(root, [])
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
    ):
        assert expected in names, f"cargohold {expected} is missing"
