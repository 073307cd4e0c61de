"""The ``--config`` file: TOML, one key per ``serve`` setting, checked before anything starts.

Why so strict: a misspelt key in a file that is silently ignored is a setting that silently is not applied
(``trusted_proxy`` instead of ``trusted_proxies`` and every CI job shares one rate limit). So an unknown key
is an error naming it, with the closest known key as a suggestion, and a value of the wrong type is one
sentence saying what the key takes.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

KINDS = {
    "str": "a string",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "list": "a list of strings",
    "str-or-number": 'a string such as "24h" or "64GiB", or a number (seconds or bytes)',
}
"""What each kind of setting accepts, as said in error messages."""


class ConfigFileError(ValueError):
    """The file cannot be used; the message is one sentence naming the file and what to fix."""


def load_config_file(path: str | Path, kinds: Mapping[str, str]) -> dict[str, Any]:
    """The file's settings, as click would have received them from the command line.

    ``kinds`` maps every known key to one of :data:`KINDS`. Lists become tuples (like a repeated flag),
    numbers given for durations and sizes become strings (``90`` is ``"90"``: seconds or bytes).
    """
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigFileError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"the config file {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        kind = kinds.get(key)
        if kind is None:
            raise ConfigFileError(_unknown_key(path, key, value, kinds))
        values[key] = _checked(path, key, value, kind)
    return values


def _unknown_key(path: str | Path, key: str, value: object, kinds: Mapping[str, str]) -> str:
    if isinstance(value, dict):
        return (
            f"{path}: [{key}] is a table, but the settings are plain keys at the top of the file "
            '(e.g. port = 5000, data_dir = "/var/lib/cargohold")'
        )
    candidates = {name: name for name in kinds}
    candidates.update({name.replace("_", "-"): name for name in kinds})  # someone wrote the flag's spelling
    guess = difflib.get_close_matches(key.lower(), list(candidates), n=1, cutoff=0.6)
    hint = f"; did you mean {candidates[guess[0]]}?" if guess else f"; the settings are {', '.join(sorted(kinds))}"
    return f"{path}: unknown setting {key!r}{hint}"


def _checked(path: str | Path, key: str, value: object, kind: str) -> Any:
    ok: bool
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind == "list":
        if isinstance(value, str):  # one entry; a list is what several look like
            value = [value]
        ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
        value = tuple(value) if ok else value  # type: ignore[arg-type]
    elif kind == "str-or-number":
        ok = isinstance(value, str | int | float) and not isinstance(value, bool)
        value = str(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigFileError(f"{path}: {key} must be {KINDS[kind]}, not {_describe(value)}")
    return value


def _describe(value: object) -> str:
    names = {bool: "a boolean", int: "a whole number", float: "a number", str: "a string", list: "a list"}
    for python_type, name in names.items():
        if type(value) is python_type:
            return f"{name} ({value!r})" if not isinstance(value, list) else name
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"
