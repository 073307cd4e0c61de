"""Start-up cost: every ``cargohold`` command is a fresh process, so what it imports is time a CI step waits.

Parsing arguments and ``--help`` must not import the client library or anything heavy. The image commands
(save/pull/push) must not import the server stack (aiohttp, SQLAlchemy, Alembic), token crypto (PyJWT,
cryptography), rich (only needed when bars are drawn on a terminal), typer/pydantic, or httpx's own CLI.
A heavy import creeping back in shows up here as a named module, long before anyone notices a slow CI step.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("aiohttp", "sqlalchemy", "alembic", "jwt", "cryptography", "rich", "pygments", "pydantic", "typer")


def _imported_after(code: str) -> set[str]:
    """Every module name in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json as _j, sys as _s\nprint(_j.dumps(sorted(_s.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def _offending(loaded: set[str], prefixes: tuple[str, ...]) -> list[str]:
    # httpx._main is cargohold's own empty placeholder (see cargohold/__init__.py), not an import of httpx.
    loaded = loaded - {"httpx._main"}
    return sorted(m for m in loaded if m.split(".")[0] in prefixes or m.startswith(tuple(p + "." for p in prefixes)))


def test_parsing_and_help_import_neither_the_client_nor_the_server() -> None:
    loaded = _imported_after("from cargohold.cli import main\nmain._register_command_modules()")
    bad = _offending(
        loaded, (*HEAVY, "httpx", "cargohold.client", "cargohold.images", "cargohold.server", "cargohold.domain")
    )
    assert not bad, f"the CLI imports {bad} before any command runs"


def test_image_commands_import_no_heavy_packages() -> None:
    loaded = _imported_after(
        "from cargohold.cli import main\n"
        "main._register_command_modules()\n"
        "import cargohold.images.save, cargohold.images.pull, cargohold.images.push\n"
        "from cargohold.images.progress import make_progress\n"
        "make_progress('plain'); make_progress('quiet')"
    )
    bad = _offending(loaded, HEAVY)
    assert not bad, f"image commands import {bad}"
    assert "httpx" in loaded  # the probe did load the client


def test_httpx_still_works_without_its_command_line() -> None:
    loaded = _imported_after("import cargohold.client.registry\nimport httpx\nassert httpx.Client and httpx.main")
    assert not _offending(loaded, ("rich", "pygments"))
