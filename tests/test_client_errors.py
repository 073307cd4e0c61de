"""One error root on the client side: every failure the client library reports to people is a
:class:`~cargohold.client.errors.CargoholdError`, and the CLI and the actions catch exactly that type."""

from __future__ import annotations

import importlib
import inspect
import io
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cargohold.actions.runtime import ActionError, ActionRuntime, run_action
from cargohold.cli.context import error_code, guarded, json_option
from cargohold.client.control import ControlError
from cargohold.client.errors import CargoholdError, RegistryError
from test_client_layering import client_modules

NOT_FOR_PEOPLE = {
    "cargohold.oci.digest.DigestError",
    "cargohold.oci.strictjson.JsonInvalid",
    "cargohold.oci.reference.ReferenceError_",
}
"""Exceptions of the client-side packages that are not failures to show people: input validation the server
uses, which the client turns into one of its own errors before it reaches anyone."""


def test_every_client_side_exception_derives_from_the_one_root() -> None:
    unrooted = []
    for name in client_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and f"{name}.{value.__qualname__}" not in NOT_FOR_PEOPLE
                and not issubclass(value, CargoholdError)
            ):
                unrooted.append(f"{name}.{value.__qualname__}")
    assert unrooted == []


class NewKindOfFailure(CargoholdError):
    """A failure the CLI has never heard of: the root alone makes it a sentence."""


@click.command()
@json_option
@guarded
def failing(as_json: bool) -> None:
    raise NewKindOfFailure("the widget is missing; add one with cargohold widgets add")


def test_the_cli_reports_any_client_failure_as_one_sentence() -> None:
    result = CliRunner().invoke(failing, [])
    assert result.exit_code == 1 and result.exception is not None  # click's Exit, not the error
    assert result.output.strip() == "error: the widget is missing; add one with cargohold widgets add."
    as_json = CliRunner().invoke(failing, ["--json"])
    assert json.loads(as_json.output) == {
        "error": {"code": "ERROR", "message": "the widget is missing; add one with cargohold widgets add."}
    }


def test_error_codes_for_json_readers() -> None:
    from cargohold.client.settings import SettingsError
    from cargohold.images.docker import DaemonPullError
    from cargohold.oci.archive import ArchiveError
    from cargohold.oci.imageref import ImageReferenceError

    assert error_code(ControlError("gone", status=404, code="NOT_FOUND")) == "NOT_FOUND"
    assert error_code(ControlError("down")) == "UNREACHABLE"
    assert error_code(RegistryError("pulling", status=401)) == "UNAUTHORIZED"
    assert error_code(SettingsError("no registry")) == "SETTINGS"
    assert error_code(ImageReferenceError("bad")) == "INVALID_REFERENCE"
    assert error_code(ArchiveError("bad")) == "IMAGE_ERROR"
    assert error_code(DaemonPullError("pull access denied")) == "DOCKER_ERROR"
    assert error_code(NewKindOfFailure("x")) == "ERROR"


def _runtime(tmp_path: Path) -> tuple[ActionRuntime, io.StringIO]:
    for name in ("output", "summary"):
        (tmp_path / name).write_text("")
    environ = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(tmp_path / "output"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
    }
    stream = io.StringIO()
    return ActionRuntime(environ, stream), stream


def test_an_action_reports_a_client_failure_as_an_annotation_not_a_bug(tmp_path: Path) -> None:
    rt, stream = _runtime(tmp_path)

    def main(_rt: ActionRuntime) -> None:
        raise ControlError("project p1 does not exist", status=404)

    assert run_action(main, name="Cargohold pull", runtime=rt) == 1
    log = stream.getvalue()
    assert "::error title=Cargohold pull failed::project p1 does not exist" in log
    assert "Traceback" not in log and "unexpected" not in log
    assert "project p1 does not exist" in (tmp_path / "summary").read_text()


def test_an_action_error_keeps_its_own_title(tmp_path: Path) -> None:
    rt, stream = _runtime(tmp_path)

    def main(_rt: ActionRuntime) -> None:
        raise ActionError("set the 'registry' input", title="Missing input")

    assert run_action(main, name="Cargohold pull", runtime=rt) == 1
    assert "::error title=Missing input::set the 'registry' input" in stream.getvalue()


@click.command()
@guarded
def buggy() -> None:
    raise KeyError("oops")


def test_anything_else_is_still_a_bug_with_its_traceback(tmp_path: Path) -> None:
    rt, stream = _runtime(tmp_path)

    def main(_rt: ActionRuntime) -> None:
        raise KeyError("oops")

    assert run_action(main, name="Cargohold pull", runtime=rt) == 1
    assert "Traceback" in stream.getvalue() and "unexpected KeyError" in stream.getvalue()
    with pytest.raises(KeyError):
        CliRunner().invoke(buggy, [], catch_exceptions=False)
