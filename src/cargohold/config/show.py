"""``cargohold serve --print-config``: the effective settings as a TOML file, secrets redacted.

The output is itself a valid configuration file (each line says where its value came from in a comment), so
"print, edit, use as --config" works.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Set

from cargohold.config.layers import Layered
from cargohold.config.settings import ServerSettings

REDACTED = "<redacted>"


_URL_PASSWORD = re.compile(r"^(?P<head>[a-z0-9+.-]+://[^/@:]*:)(?P<password>[^/@]*)(?P<tail>@.*)$", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:<redacted>@host/db`` (the rest is useful)."""
    match = _URL_PASSWORD.match(url)
    return f"{match['head']}{REDACTED}{match['tail']}" if match else url


def with_derived_defaults(layered: Mapping[str, Layered], settings: ServerSettings) -> dict[str, Layered]:
    """Unset settings whose default is derived from others (the data directory, the public URL) shown with
    the value the server would use."""
    derived: dict[str, object] = {
        "data_dir": str(settings.data_dir),
        "database_url": settings.resolved_database_url(),
        "public_url": settings.resolved_public_url(),
        "oidc_audience": settings.resolved_oidc_audience(),
        "oidc_issuers": list(settings.oidc_issuers),
    }
    shown = dict(layered)
    for name, value in derived.items():
        if name in shown and shown[name].value in (None, ()):
            shown[name] = Layered(value, f"{shown[name].source}, derived")
    return shown


def render(layered: Mapping[str, Layered], *, secrets: Set[str], urls: Set[str] = frozenset()) -> str:
    lines = ["# cargohold serve: effective settings (flag > env > file > default)"]
    for name in layered:
        layer = layered[name]
        if layer.value is None or layer.value == ():
            lines.append(f"# {name} is not set ({layer.source})")
            continue
        value = REDACTED if name in secrets else layer.value
        if name in urls and isinstance(value, str):
            value = redact_url(value)
        lines.append(f"{name} = {_toml(value)}  # {layer.source}")
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is a JSON string for anything printable
