"""The client side's import layering, read from the source (every import, including those inside functions
and under ``TYPE_CHECKING``), so that a lazy import cannot hide a dependency pointing the wrong way.

Layers, bottom up: ``oci/`` and the pure helpers (``clock``, ``isotime``) know only the standard library;
``schemas/`` (the control API's wire format, shared with the server) knows only those; ``client/`` builds on
them; ``images/`` on ``client/``; the front ends ``cli/`` and ``actions/`` on everything below. No layer imports
one above it. (Server-side contracts live in their own test file.)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "cargohold"

PURE = ("cargohold.clock", "cargohold.isotime")
ALLOWED: dict[str, tuple[str, ...]] = {
    "oci": ("cargohold.oci",),
    "clock": (),
    "isotime": (),
    "schemas": ("cargohold.schemas", *PURE),
    "client": ("cargohold.client", "cargohold.oci", "cargohold.schemas", *PURE, "cargohold"),
    "images": (
        "cargohold.images",
        "cargohold.client",
        "cargohold.oci",
        "cargohold.schemas",
        "cargohold.build_flags",
        *PURE,
        "cargohold",
    ),
}
"""For each client-side module or package: the cargohold modules it may import (``"cargohold"`` alone is the
package itself, for ``__version__``). Anything else it imports must be the standard library or, outside
``oci/``, ``schemas/`` and the pure helpers, a declared client dependency."""
CLIENT_DEPENDENCIES = {"httpx", "jwt", "tenacity", "click", "rich", "httpcore"}


def _files(part: str) -> list[Path]:
    path = SRC / part
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, src: Path = SRC) -> set[str]:
    """Every module ``path`` (a file under ``src``) imports anywhere, absolute (relative imports resolved)."""
    module = _module_name(path, src)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}", src))
    return found


def _is_module(name: str, src: Path = SRC) -> bool:
    base = src.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _violations(part: str) -> list[str]:
    allowed = ALLOWED[part]
    pure = part in ("oci", "clock", "isotime", "schemas")
    bad = []
    for path in _files(part):
        for name in sorted(imports_of(path)):
            top = name.partition(".")[0]
            if top == "cargohold":
                if not any(name == a or name.startswith(f"{a}.") for a in allowed if a != "cargohold") and not (
                    "cargohold" in allowed and name == "cargohold"
                ):
                    bad.append(f"{_module_name(path)} imports {name}")
            elif top == "__future__" or top in sys.stdlib_module_names:
                continue
            elif pure or top not in CLIENT_DEPENDENCIES:
                bad.append(f"{_module_name(path)} imports {name}")
    return bad


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_no_client_side_layer_imports_upward_or_outside_its_dependencies(part: str) -> None:
    assert _violations(part) == []


def test_the_check_sees_deferred_and_relative_imports(tmp_path: Path) -> None:
    """Imports inside functions and under TYPE_CHECKING count: that is how oci/archive used to reach the client."""
    src = tmp_path / "cargohold"
    (src / "oci").mkdir(parents=True)
    (src / "oci" / "__init__.py").write_text("")
    (src / "oci" / "sibling.py").write_text("")
    module = src / "oci" / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n    from cargohold.client.copy import ImageSource\n"
        "def f():\n    from cargohold.client.registry import Manifest\n"
    )
    assert imports_of(module, src) >= {
        "cargohold.client.copy",
        "cargohold.client.registry",
        "cargohold.oci",
        "cargohold.oci.sibling",
        "typing",
    }
