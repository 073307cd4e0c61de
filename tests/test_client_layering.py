"""The client install (``pip install cargohold``, no ``[server]`` extra) really is enough for the client.

Every check runs in a subprocess whose ``sys.meta_path`` refuses the server's packages (aiohttp, SQLAlchemy,
Alembic, cryptography, prometheus-client, Mako), so an import that would need them fails exactly as it would
in the actions' client-only virtualenv. Three layers of evidence:

1. every module of the client side (cli, images, client, actions, oci, sample) imports;
2. every module any of them imports *anywhere*, including the imports deferred into functions (found by
   reading their source), imports too, so a command's lazy import cannot hide a server dependency;
3. real commands work: ``save`` and ``pull`` against a real server, and ``serve`` says in one sentence how
   to install what it needs.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from cargohold.cli.serve import SERVER_PACKAGES
from cargohold.client.settings import Connection
from cargohold.sample import write_sample_image
from servers import InProcessServer
from test_images_support import conn_fixture

__all__ = ["conn_fixture"]

SRC = Path(__file__).resolve().parent.parent / "src" / "cargohold"
CLIENT_PACKAGES = ("cli", "images", "client", "actions", "oci")
CLIENT_MODULES = ("cargohold", "cargohold.sample")
"""Plus ``cargohold.__main__``, which runs the CLI when imported: the command tests below run it."""

BLOCKER = f"""
import importlib.abc, sys

class ServerPackagesMissing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {sorted(SERVER_PACKAGES)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (the server extra is not installed)", name=name)
        return None

sys.meta_path.insert(0, ServerPackagesMissing())
"""


def client_modules() -> list[str]:
    names = list(CLIENT_MODULES)
    for package in CLIENT_PACKAGES:
        for path in sorted((SRC / package).rglob("*.py")):
            relative = path.relative_to(SRC.parent).with_suffix("")
            parts = list(relative.parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join(parts))
    return names


def _module_file(name: str) -> Path | None:
    base = SRC.parent.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


SERVER_COMMAND_MODULES = frozenset({"cargohold.cli.serve", "cargohold.cli.operations"})
"""CLI modules whose commands run on the server's host (``serve``, ``db``, ``backup``, ``restore``, ``admin``)
and need the server extra: their top-level imports stay client-only (registering them is part of every
command's start-up), the imports inside their functions are the server's."""


def imported_anywhere(modules: list[str]) -> set[str]:
    """Every cargohold module named by an import statement in ``modules`` (at any depth), transitively,
    except inside the functions of the server's commands (:data:`SERVER_COMMAND_MODULES`)."""
    seen: set[str] = set()
    queue = list(modules)
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        tree = ast.parse(path.read_text())
        skip: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and name in SERVER_COMMAND_MODULES:
                skip.update(id(child) for child in ast.walk(node))
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                skip.update(id(child) for child in ast.walk(node))  # never executed: annotations only
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                queue.extend(alias.name for alias in node.names if alias.name.startswith("cargohold"))
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("cargohold"):
                assert node.module is not None
                queue.append(node.module)
                queue.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in seen if _module_file(name) is not None}


def run_blocked(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_the_blocker_blocks() -> None:
    result = run_blocked("import cargohold.server.app")
    assert result.returncode != 0 and "the server extra is not installed" in result.stderr


def test_every_client_module_imports_without_the_server_packages() -> None:
    modules = sorted((set(client_modules()) | imported_anywhere(client_modules())) - {"cargohold.__main__"})
    assert "cargohold.images.pull" in modules and "cargohold.isotime" in modules
    server_side = ("cargohold.server", "cargohold.domain", "cargohold.metadata", "cargohold.storage")
    assert not any(m.startswith(server_side) for m in modules), "a client module imports the server"
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\nprint('ok')"
    result = run_blocked(code, *modules)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_client_commands_work_and_serve_explains_without_the_server_packages(
    server: InProcessServer, conn: Connection, tmp_path: Path
) -> None:
    cli = "import runpy, sys\nsys.argv[0] = 'cargohold'\nrunpy.run_module('cargohold', run_name='__main__')"
    env = {
        "CARGOHOLD_REGISTRY": conn.registry,
        "CARGOHOLD_TOKEN": str(conn.token),
        "CARGOHOLD_PROJECT_ID": str(conn.project),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
    }
    image = write_sample_image(tmp_path / "img", layers=1, layer_size=4096, seed=3, ref="v1")
    saved = run_blocked(cli, "save", f"oci:{tmp_path / 'img'}:v1", "--json", "--progress", "quiet", env=env)
    assert saved.returncode == 0, saved.stderr
    build_id = json.loads(saved.stdout)["build_id"]
    pulled = run_blocked(
        cli, "pull", build_id, "--output", f"oci:{tmp_path / 'out'}", "--json", "--progress", "quiet", env=env
    )
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["digest"] == str(image.manifest.digest)
    listed = run_blocked(cli, "builds", "list", "--json", env=env)
    assert listed.returncode == 0 and build_id in listed.stdout, listed.stderr

    serve = run_blocked(cli, "serve", "--port", "0", env=env)
    assert serve.returncode == 1
    assert serve.stderr.strip().splitlines() == [
        "Error: cargohold serve needs the server's dependencies (aiohttp is missing); install them with "
        "pip install 'cargohold[server]'"
    ], serve.stderr
