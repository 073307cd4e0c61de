"""Which value of a setting wins: flags, then the environment, then the configuration file, then the defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Layered:
    """A setting's effective value and where it came from: ``flag``, ``env``, ``file`` or ``default``."""

    value: Any
    source: str


def effective_values(
    given: Mapping[str, Any],
    sources: Mapping[str, str],
    from_file: Mapping[str, Any],
) -> dict[str, Layered]:
    """Merge ``given`` (what the command line parser resolved from flags, environment and defaults, with
    ``sources`` saying which) with the file's values: a file value replaces only a default."""
    merged: dict[str, Layered] = {}
    for name, value in given.items():
        source = sources.get(name, "default")
        if source == "default" and name in from_file:
            merged[name] = Layered(from_file[name], "file")
        else:
            merged[name] = Layered(value, source)
    return merged
