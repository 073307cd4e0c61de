"""The GitHub Actions runtime our composite actions need, written against the runner's documented protocol.

Why our own module instead of a toolkit from PyPI: the maintained ones either lack job summaries, fall back
silently to the disabled ``::set-output``/``::set-env`` stdout commands when a file variable is missing
(hiding a broken runner), or pull in large dependency trees. This module is stdlib-only and small enough to
audit, and every behaviour the actions rely on is tested in ``tests/test_actions_runtime.py``.

What it covers:

* inputs: ``INPUT_<NAME>`` with GitHub's name mangling (upper case, spaces become underscores, hyphens are
  kept). Composite actions get no ``INPUT_*`` variables from the runner, so our ``action.yml`` files pass
  every input through ``env:`` under exactly these names. The runner does not enforce ``required: true``
  either, so :meth:`ActionRuntime.get_input` does;
* outputs and job summaries through the ``$GITHUB_OUTPUT``/``$GITHUB_STEP_SUMMARY`` files, with random
  heredoc delimiters; a value that contains the delimiter is refused rather than allowed to forge outputs;
* workflow commands on stdout: ``::add-mask::`` (each line of a multi-line secret too, because the runner
  masks log lines one at a time), ``::group::``, ``::stop-commands::`` around untrusted tool output, and
  ``::error``/``::warning``/``::notice`` annotations with escaped properties.
"""

from __future__ import annotations

import csv
import os
import re
import secrets
import sys
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TextIO

from cargohold.oci.errors import CargoholdError

TRUE_VALUES = frozenset({"true", "True", "TRUE"})
FALSE_VALUES = frozenset({"false", "False", "FALSE"})
"""The YAML 1.2 core-schema booleans, the same strict sets ``@actions/core`` accepts."""

OUTPUT_FILE = "GITHUB_OUTPUT"
SUMMARY_FILE = "GITHUB_STEP_SUMMARY"
_OUTPUT_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
SUMMARY_LIMIT = 1024 * 1024
"""GitHub drops a step summary larger than 1 MiB (with an annotation); we truncate before that happens."""


class ActionError(CargoholdError):
    """A failure the user can fix: the message is one sentence that says how; the title heads the annotation."""

    def __init__(self, message: str, *, title: str = "Cargohold") -> None:
        super().__init__(message)
        self.message = message
        self.title = title


# --- escaping ---------------------------------------------------------------------------------------------


def escape_data(value: str) -> str:
    """Escape a workflow command's message so a newline cannot end the command and start another one."""
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(value: str) -> str:
    """Escape a workflow command property, where ``:`` ends the property list and ``,`` separates entries."""
    return escape_data(value).replace(":", "%3A").replace(",", "%2C")


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~-])")


def markdown_escape(text: str) -> str:
    """Make user-controlled text inert inside a Markdown table cell.

    Why: tags, build arguments and error messages come from the workflow author or the registry, and an
    unescaped ``|`` splits a table cell, ``<`` opens HTML (so it becomes an entity), and ``[..](..)`` forges
    a link in the summary.
    Newlines would end the table row, so they become ``<br>`` (the only HTML we emit ourselves).
    """
    entities = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", entities)
    return escaped.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")


def markdown_code(text: str) -> str:
    """Inline code for a table cell: the content is shown literally, only ``|`` and newlines need care."""
    cleaned = text.replace("\r", " ").replace("\n", " ").replace("|", "\\|")
    fence = "``" if "`" in cleaned else "`"
    return f"{fence} {cleaned} {fence}" if fence == "``" else f"`{cleaned}`"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; cells must already be escaped (see :func:`markdown_escape`)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines) + "\n"


# --- list parsing -----------------------------------------------------------------------------------------


def parse_list(value: str, *, comma: bool = True) -> list[str]:
    """Split a list input the way docker/build-push-action does, so workflows can switch actions unchanged.

    Items are separated by newlines and, unless ``comma`` is false, by commas; a comma inside double quotes
    does not split (CSV quoting). Items are trimmed and empty ones dropped. ``build-args`` and ``secrets``
    use ``comma=False`` because their values may legitimately contain commas.
    """
    items: list[str] = []
    for line in value.splitlines():
        if not line.strip():
            continue
        if not comma:
            items.append(line.strip())
            continue
        for row in csv.reader([line], skipinitialspace=True, strict=False):
            items.extend(cell.strip() for cell in row)
    return [item for item in items if item]


# --- the runtime ------------------------------------------------------------------------------------------


class ActionRuntime:
    """One step's view of the runner: its environment and its stdout command channel.

    The environment and stream are injectable so tests observe exactly what the runner would see.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        stream: TextIO | None = None,
        *,
        delimiter_factory: Callable[[], str] | None = None,
    ) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.stream: TextIO = sys.stdout if stream is None else stream
        self._delimiter_factory = delimiter_factory or (lambda: f"ghadelimiter_{uuid.uuid4()}")
        self._masked: set[str] = set()

    # -- environment ------------------------------------------------------------------------------------

    @property
    def in_actions(self) -> bool:
        """True on a real runner, where missing runner files are a hard error rather than a local run."""
        return self.environ.get("GITHUB_ACTIONS") == "true"

    def check_environment(self) -> None:
        """Fail before doing any work if the runner's files are unusable, instead of after a long build."""
        if not self.in_actions:
            return
        for variable in (OUTPUT_FILE, SUMMARY_FILE):
            self._file_for(variable)

    def _file_for(self, variable: str) -> Path | None:
        """The runner file named by ``variable``; None only outside Actions when it is unset."""
        value = self.environ.get(variable, "")
        if not value:
            if self.in_actions:
                raise ActionError(
                    f"${variable} is not set although GITHUB_ACTIONS=true; run this action as a step of a "
                    "GitHub Actions job (runner 2.297 or newer), not with a hand-made environment",
                    title="Runner file missing",
                )
            return None
        path = Path(value)
        if self.in_actions and not path.is_file():
            raise ActionError(
                f"${variable} names {value}, which does not exist; the runner creates this file for every "
                "step, so run the action as a normal step (not inside a container that hides the runner's "
                "temp directory)",
                title="Runner file missing",
            )
        return path

    # -- inputs -----------------------------------------------------------------------------------------

    @staticmethod
    def input_variable(name: str) -> str:
        """``INPUT_<NAME>``: upper-cased, spaces to underscores, hyphens kept (GitHub's own mangling)."""
        return "INPUT_" + name.replace(" ", "_").upper()

    def get_input(self, name: str, *, required: bool = False, trim: bool = True) -> str:
        """An input's value, or ``""`` when unset; the runner does not enforce ``required``, so we do."""
        value = self.environ.get(self.input_variable(name), "")
        if trim:
            value = value.strip()
        if required and not value.strip():
            raise ActionError(
                f"the input '{name}' is required; add it under 'with:' in the step that uses this action",
                title="Missing input",
            )
        return value

    def get_optional(self, name: str) -> str | None:
        """An input's trimmed value, or None when empty: lets callers tell "not given" from a value."""
        return self.get_input(name) or None

    def get_bool(self, name: str, *, default: bool = False) -> bool:
        """A strict boolean: only ``true``/``false`` (any of three casings), so ``yes``/``1`` typos fail loudly."""
        value = self.get_input(name)
        if not value:
            return default
        if value in TRUE_VALUES:
            return True
        if value in FALSE_VALUES:
            return False
        raise ActionError(f"the input '{name}' is {value!r}; set it to true or false", title="Invalid input")

    def get_list(self, name: str, *, comma: bool = True, required: bool = False) -> list[str]:
        """A list input: one item per line, or comma-separated (see :func:`parse_list`)."""
        items = parse_list(self.get_input(name, trim=False), comma=comma)
        if required and not items:
            raise ActionError(
                f"the input '{name}' is required; list one or more values under 'with:' (one per line)",
                title="Missing input",
            )
        return items

    # -- workflow commands ------------------------------------------------------------------------------

    def command(self, name: str, message: str = "", properties: Mapping[str, object | None] | None = None) -> None:
        """Print one workflow command; properties that are None or empty are left out, as the runner expects."""
        text = f"::{name}"
        props = [
            f"{key}={escape_property(str(value))}"
            for key, value in (properties or {}).items()
            if value is not None and str(value) != ""
        ]
        if props:
            text += " " + ",".join(props)
        self.stream.write(f"{text}::{escape_data(message)}\n")
        self.stream.flush()

    def add_mask(self, secret: str | None) -> None:
        """Hide ``secret`` in all later log output, including each line of a multi-line value.

        The runner matches masks per log line, so a multi-line secret (a PEM key, a JSON credential) would
        leak line by line unless every line is registered separately.
        """
        if not secret or not secret.strip():
            return
        candidates = [secret, *(line.strip() for line in secret.splitlines())]
        for value in candidates:
            if value and value.strip() and value not in self._masked:
                self._masked.add(value)
                self.command("add-mask", value)

    def debug(self, message: str) -> None:
        self.command("debug", message)

    def info(self, message: str) -> None:
        """Plain log text; a line that happens to start with ``::`` is neutralised so it cannot act."""
        for line in message.splitlines() or [""]:
            self.stream.write(("\u200b" + line if line.startswith("::") else line) + "\n")
        self.stream.flush()

    def annotate(
        self,
        level: str,
        message: str,
        *,
        title: str | None = None,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        """An ``error``/``warning``/``notice`` annotation; it appears on the run's summary page."""
        if level not in ("error", "warning", "notice"):
            raise ValueError(f"annotation level must be error, warning or notice, not {level!r}")
        self.command(level, message, {"title": title, "file": file, "line": line})

    def error(self, message: str, *, title: str | None = None) -> None:
        self.annotate("error", message, title=title)

    def warning(self, message: str, *, title: str | None = None) -> None:
        self.annotate("warning", message, title=title)

    @contextmanager
    def group(self, title: str) -> Iterator[None]:
        """A collapsible log section; always closed, even when the body raises."""
        self.command("group", title)
        try:
            yield
        finally:
            self.command("endgroup")

    @contextmanager
    def stop_commands(self) -> Iterator[str]:
        """Treat everything printed inside as plain text, so tool output cannot issue workflow commands.

        Why: a Dockerfile ``RUN echo "::add-mask::..."`` or ``::error::`` from a pull request's build would
        otherwise be obeyed by the runner. The resume token is random per use, so the untrusted output
        cannot guess it to switch commands back on early.
        """
        token = secrets.token_hex(16)
        self.stream.write(f"::stop-commands::{token}\n")
        self.stream.flush()
        try:
            yield token
        finally:
            self.stream.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            self.stream.write(f"::{token}::\n")
            self.stream.flush()

    @contextmanager
    def untrusted_output(self, title: str) -> Iterator[None]:
        """A log group whose content cannot issue workflow commands: how build and tool logs are shown."""
        with self.group(title), self.stop_commands():
            yield

    # -- files ------------------------------------------------------------------------------------------

    def set_output(self, name: str, value: str) -> None:
        """Append ``name`` to ``$GITHUB_OUTPUT`` as a heredoc record with a fresh random delimiter."""
        if not _OUTPUT_NAME_RE.match(name):
            raise ValueError(f"output name {name!r} must be letters, digits, '_' or '-'")
        path = self._file_for(OUTPUT_FILE)
        if path is None:  # a local run outside Actions: show the value instead of losing it
            self.info(f"output {name}={value}")
            return
        delimiter = self._delimiter_factory()
        if delimiter in value or delimiter in name:
            raise ActionError(
                f"the value of output '{name}' contains its heredoc delimiter; this looks like an injection "
                "attempt, so check where the value came from",
                title="Unsafe output",
            )
        with path.open("a", encoding="utf-8", newline="\n") as handle:
            handle.write(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")

    def append_summary(self, markdown: str) -> None:
        """Append Markdown to the job summary (``$GITHUB_STEP_SUMMARY``), truncated below GitHub's 1 MiB cap."""
        path = self._file_for(SUMMARY_FILE)
        if path is None:
            return
        data = markdown if markdown.endswith("\n") else markdown + "\n"
        existing = path.stat().st_size if path.exists() else 0
        room = SUMMARY_LIMIT - existing
        encoded = data.encode("utf-8")
        if len(encoded) > room:
            note = b"\n\n*(summary truncated)*\n"
            encoded = encoded[: max(0, room - len(note))] + note
            data = encoded.decode("utf-8", errors="ignore")
        with path.open("a", encoding="utf-8", newline="\n") as handle:
            handle.write(data)


def run_action(
    main: Callable[[ActionRuntime], None],
    *,
    name: str,
    runtime: ActionRuntime | None = None,
) -> int:
    """Run an action's body and turn failures into annotations and a summary section; returns the exit code.

    Known failures print one annotation with the fix: an :class:`ActionError` with its own title, any other
    failure of the client library (a :class:`CargoholdError`: its message is already that sentence) under the
    action's name. Anything else is a bug in Cargohold: the traceback goes to the log (secrets were masked
    before use) and the annotation says so.
    """
    rt = runtime or ActionRuntime()
    try:
        rt.check_environment()
        main(rt)
    except CargoholdError as exc:
        message, title = (exc.message, exc.title) if isinstance(exc, ActionError) else (str(exc), f"{name} failed")
        rt.error(message, title=title)
        _failure_summary(rt, name, message)
        return 1
    except KeyboardInterrupt:
        rt.error("the step was interrupted; re-run the job", title=f"{name} cancelled")
        return 130
    except Exception as exc:
        traceback.print_exc(file=rt.stream)
        message = (
            f"unexpected {type(exc).__name__} in {name}: {exc}; re-run with debug logging "
            "(ACTIONS_STEP_DEBUG=true) and report it with the log"
        )
        rt.error(message, title=f"{name} failed")
        _failure_summary(rt, name, message)
        return 1
    return 0


def _failure_summary(rt: ActionRuntime, name: str, message: str) -> None:
    """Failures go in the summary too; a broken summary file must not hide the original error."""
    with suppress(ActionError, OSError):
        rt.append_summary(f"### :x: {markdown_escape(name)} failed\n\n{markdown_escape(message)}\n")
