"""The GitHub Actions runtime (cargohold.actions.runtime): files, workflow commands, inputs, failures."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from cargohold.actions.runtime import (
    ActionError,
    ActionRuntime,
    escape_data,
    escape_property,
    markdown_escape,
    markdown_table,
    parse_list,
    run_action,
)


def make(
    tmp_path: Path, env: dict[str, str] | None = None, *, actions: bool = True, **kwargs: object
) -> tuple[ActionRuntime, io.StringIO, dict[str, str]]:
    """A runtime as a runner step sees it: both runner files exist and are empty."""
    (tmp_path / "output").write_text("")
    (tmp_path / "summary").write_text("")
    environ = {"GITHUB_OUTPUT": str(tmp_path / "output"), "GITHUB_STEP_SUMMARY": str(tmp_path / "summary")}
    if actions:
        environ["GITHUB_ACTIONS"] = "true"
    environ.update(env or {})
    stream = io.StringIO()
    return ActionRuntime(environ, stream, **kwargs), stream, environ  # type: ignore[arg-type]


def parse_outputs(text: str) -> dict[str, str]:
    """Read $GITHUB_OUTPUT the way the runner does (heredoc records), asserting the format on the way."""
    outputs: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines) and lines[i]:
        name, sep, delimiter = lines[i].partition("<<")
        assert sep, f"not a heredoc record: {lines[i]!r}"
        end = lines.index(delimiter, i + 1)
        outputs[name] = "\n".join(lines[i + 1 : end])
        i = end + 1
    return outputs


# --- outputs ------------------------------------------------------------------------------------------------


def test_outputs_are_heredoc_records_that_round_trip(tmp_path: Path) -> None:
    rt, _, _ = make(tmp_path)
    rt.set_output("build-id", "abc123")
    rt.set_output("metadata", '{"a": 1}\nsecond line\n')
    rt.set_output("empty", "")
    text = (tmp_path / "output").read_text()
    assert parse_outputs(text) == {"build-id": "abc123", "metadata": '{"a": 1}\nsecond line\n', "empty": ""}


def test_each_output_gets_a_fresh_random_delimiter(tmp_path: Path) -> None:
    rt, _, _ = make(tmp_path)
    for i in range(5):
        rt.set_output(f"o{i}", "x")
    delimiters = re.findall(r"^o\d<<(.+)$", (tmp_path / "output").read_text(), re.M)
    assert len(delimiters) == 5 and len(set(delimiters)) == 5
    assert all(re.fullmatch(r"ghadelimiter_[0-9a-f-]{36}", d) for d in delimiters)


def test_a_value_containing_the_delimiter_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    rt, _, _ = make(tmp_path, delimiter_factory=lambda: "EOF_FIXED")
    forged = "harmless\nEOF_FIXED\ninjected<<X\nevil\nX"
    with pytest.raises(ActionError, match="contains its heredoc delimiter"):
        rt.set_output("digest", forged)
    assert (tmp_path / "output").read_text() == ""


@pytest.mark.parametrize("name", ["", "a b", "x<<y", "a=b", "line\nbreak", "1abc"])
def test_bad_output_names_are_refused(tmp_path: Path, name: str) -> None:
    rt, _, _ = make(tmp_path)
    with pytest.raises(ValueError, match="output name"):
        rt.set_output(name, "v")


@pytest.mark.parametrize("variable", ["GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY"])
def test_missing_runner_file_variable_fails_hard_in_actions(tmp_path: Path, variable: str) -> None:
    rt, stream, environ = make(tmp_path)
    del environ[variable]
    with pytest.raises(ActionError, match=rf"\${variable} is not set"):
        rt.check_environment()
    assert "::set-output" not in stream.getvalue()


def test_runner_file_that_does_not_exist_fails_hard_in_actions(tmp_path: Path) -> None:
    rt, _, environ = make(tmp_path)
    environ["GITHUB_OUTPUT"] = str(tmp_path / "gone" / "output")
    with pytest.raises(ActionError, match="does not exist"):
        rt.set_output("digest", "sha256:x")


def test_run_action_checks_the_runner_files_before_doing_any_work(tmp_path: Path) -> None:
    rt, stream, environ = make(tmp_path)
    del environ["GITHUB_STEP_SUMMARY"]
    ran: list[bool] = []
    assert run_action(lambda _: ran.append(True), name="Test", runtime=rt) == 1
    assert ran == []
    assert re.search(r"^::error title=Runner file missing::\$GITHUB_STEP_SUMMARY is not set", stream.getvalue(), re.M)


def test_outside_actions_outputs_are_printed_not_lost(tmp_path: Path) -> None:
    rt = ActionRuntime({}, stream := io.StringIO())
    rt.check_environment()
    rt.set_output("digest", "sha256:abc")
    rt.append_summary("# ignored")
    assert "output digest=sha256:abc" in stream.getvalue()


# --- summary ------------------------------------------------------------------------------------------------


def test_summary_is_appended_not_overwritten(tmp_path: Path) -> None:
    rt, _, _ = make(tmp_path)
    (tmp_path / "summary").write_text("earlier step\n")
    rt.append_summary("### first")
    rt.append_summary("second\n")
    assert (tmp_path / "summary").read_text() == "earlier step\n### first\nsecond\n"


def test_summary_is_truncated_below_githubs_limit(tmp_path: Path) -> None:
    rt, _, _ = make(tmp_path)
    rt.append_summary("x" * (2 * 1024 * 1024))
    data = (tmp_path / "summary").read_bytes()
    assert len(data) <= 1024 * 1024 and data.endswith(b"*(summary truncated)*\n")


def test_markdown_escape_neutralises_tables_html_and_links() -> None:
    hostile = "a|b <img src=x> [click](https://evil) `code` *bold*\nnext row"
    escaped = markdown_escape(hostile)
    assert "|" not in escaped.replace("\\|", "")
    assert "<img" not in escaped and "&lt;img" in escaped
    assert "\\[click\\]\\(https://evil\\)" in escaped
    assert "\n" not in escaped and "<br>" in escaped
    table = markdown_table(["k", "v"], [("tag", escaped)])
    assert table.count("\n") == 3  # header, separator, exactly one row


# --- workflow commands ----------------------------------------------------------------------------------------


def test_escaping_of_data_and_properties() -> None:
    assert escape_data("50%\r\nnext") == "50%25%0D%0Anext"
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"


def test_annotation_escapes_message_and_properties_and_skips_empty_ones(tmp_path: Path) -> None:
    rt, stream, _ = make(tmp_path)
    rt.annotate("error", "line1\nline2 100%", title="Bad: input, really", file="", line=None)
    assert stream.getvalue() == "::error title=Bad%3A input%2C really::line1%0Aline2 100%25\n"
    with pytest.raises(ValueError):
        rt.annotate("fatal", "x")


def test_add_mask_masks_the_value_and_every_line_of_a_multiline_secret(tmp_path: Path) -> None:
    rt, stream, _ = make(tmp_path)
    rt.add_mask("-----BEGIN KEY-----\nAAAA1234\n\n  BBBB5678  \n-----END KEY-----")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "::add-mask::-----BEGIN KEY-----%0AAAAA1234%0A%0A  BBBB5678  %0A-----END KEY-----"
    assert lines[1:] == [
        "::add-mask::-----BEGIN KEY-----",
        "::add-mask::AAAA1234",
        "::add-mask::BBBB5678",
        "::add-mask::-----END KEY-----",
    ]


def test_add_mask_ignores_empty_and_repeated_values(tmp_path: Path) -> None:
    rt, stream, _ = make(tmp_path)
    rt.add_mask("")
    rt.add_mask(None)
    rt.add_mask("   ")
    rt.add_mask("s3cret")
    rt.add_mask("s3cret")
    assert stream.getvalue() == "::add-mask::s3cret\n"


def test_group_is_closed_even_when_the_body_fails(tmp_path: Path) -> None:
    rt, stream, _ = make(tmp_path)
    with pytest.raises(RuntimeError), rt.group("Build: step 1%"):
        raise RuntimeError("boom")
    assert stream.getvalue() == "::group::Build: step 1%25\n::endgroup::\n"


def test_stop_commands_wraps_untrusted_output_with_a_random_token(tmp_path: Path) -> None:
    rt, stream, _ = make(tmp_path)
    tokens = []
    for _ in range(2):
        with rt.untrusted_output("docker build") as _, rt.stop_commands() as token:
            tokens.append(token)
            stream.write("::add-mask::not-obeyed\n")
    assert tokens[0] != tokens[1] and re.fullmatch(r"[0-9a-f]{32}", tokens[0])
    text = stream.getvalue()
    start = text.index(f"::stop-commands::{tokens[0]}\n")
    injected = text.index("::add-mask::not-obeyed")
    resume = text.index(f"::{tokens[0]}::\n")
    assert start < injected < resume


def test_stop_commands_resumes_even_when_the_tool_fails(tmp_path: Path) -> None:
    rt, stream, _ = make(tmp_path)
    with pytest.raises(OSError), rt.untrusted_output("tool") as _:
        raise OSError("tool crashed")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "::group::tool"
    assert lines[1].startswith("::stop-commands::")
    token = lines[1].removeprefix("::stop-commands::")
    assert lines[2:] == [f"::{token}::", "::endgroup::"]


def test_info_neutralises_lines_that_look_like_commands(tmp_path: Path) -> None:
    rt, stream, _ = make(tmp_path)
    rt.info("fine\n::error::forged")
    assert not any(line.startswith("::") for line in stream.getvalue().splitlines())


# --- inputs -------------------------------------------------------------------------------------------------


def test_input_names_are_mangled_like_github_does() -> None:
    assert ActionRuntime.input_variable("build-args") == "INPUT_BUILD-ARGS"
    assert ActionRuntime.input_variable("my input") == "INPUT_MY_INPUT"


def test_inputs_are_trimmed_and_optional_ones_default_to_empty(tmp_path: Path) -> None:
    rt, _, _ = make(tmp_path, {"INPUT_TARGET": "  release \n", "INPUT_FILE": "   "})
    assert rt.get_input("target") == "release"
    assert rt.get_optional("file") is None
    assert rt.get_input("context") == ""


def test_required_input_missing_or_blank_is_an_error_naming_it(tmp_path: Path) -> None:
    rt, _, _ = make(tmp_path, {"INPUT_BUILD-ID": "  "})
    with pytest.raises(ActionError, match="the input 'build-id' is required; add it under 'with:'"):
        rt.get_input("build-id", required=True)
    with pytest.raises(ActionError, match="'tags' is required"):
        rt.get_list("tags", required=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("True", True), ("TRUE", True), ("false", False), ("False", False), ("FALSE", False), ("", None)],
)
def test_booleans_accept_only_the_yaml_core_spellings(tmp_path: Path, value: str, expected: bool | None) -> None:
    rt, _, _ = make(tmp_path, {"INPUT_PUSH": value})
    assert rt.get_bool("push", default=True) is (True if expected is None else expected)


@pytest.mark.parametrize("value", ["yes", "1", "on", "tru", "treu", "no", "0"])
def test_booleans_refuse_anything_else(tmp_path: Path, value: str) -> None:
    rt, _, _ = make(tmp_path, {"INPUT_PUSH": value})
    with pytest.raises(ActionError, match=r"the input 'push' is .*; set it to true or false"):
        rt.get_bool("push")


def test_lists_split_on_newlines_and_commas_with_csv_quoting() -> None:
    assert parse_list("a, b\n\n  c  \nd,e,,") == ["a", "b", "c", "d", "e"]
    assert parse_list('"x,y",z') == ["x,y", "z"]
    assert parse_list("") == []


def test_lists_without_comma_splitting_keep_commas_for_build_args() -> None:
    assert parse_list("A=1,2\n B = x \n\n", comma=False) == ["A=1,2", "B = x"]


# --- failures -----------------------------------------------------------------------------------------------


def test_action_error_becomes_one_annotation_and_a_summary_section(tmp_path: Path) -> None:
    rt, stream, _ = make(tmp_path)

    def body(_: ActionRuntime) -> None:
        raise ActionError("the input 'x' is wrong; fix it", title="Invalid input")

    assert run_action(body, name="Cargohold test", runtime=rt) == 1
    assert stream.getvalue() == "::error title=Invalid input::the input 'x' is wrong; fix it\n"
    assert "Cargohold test failed" in (tmp_path / "summary").read_text()


def test_unexpected_exception_is_reported_as_a_bug_with_a_traceback(tmp_path: Path) -> None:
    rt, stream, _ = make(tmp_path)

    def body(_: ActionRuntime) -> None:
        raise KeyError("surprise")

    assert run_action(body, name="Cargohold test", runtime=rt) == 1
    out = stream.getvalue()
    assert "Traceback" in out
    assert re.search(r"^::error title=Cargohold test failed::unexpected KeyError in Cargohold test", out, re.M)


def test_success_returns_zero(tmp_path: Path) -> None:
    rt, _, _ = make(tmp_path)
    assert run_action(lambda r: r.set_output("ok", "1"), name="t", runtime=rt) == 0
    assert parse_outputs((tmp_path / "output").read_text()) == {"ok": "1"}
