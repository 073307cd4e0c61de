"""The import layering of ``src/cargohold`` holds: ``lint-imports`` checks the contracts in pyproject.toml.

What they say (``[tool.importlinter]`` has the list and DEVELOPERS.md the why): ``oci`` imports nothing of ours;
the stores import only ``oci``; ``lifecycle`` only the stores; the domain layer never the server, the client
side or aiohttp; the data plane never the control plane; only the control plane uses the client library; no
ORM row reaches the server or the domain. A new import that breaks one fails here with the chain that breaks it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    lint_imports = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    result = subprocess.run(
        [lint_imports, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "KEPT" in result.stdout


DIALECT_MODULE = ROOT / "src" / "cargohold" / "metadata" / "db.py"
"""The one module that may name a database dialect's SQLAlchemy constructs (``upsert``, ``hold_lock``)."""


def test_dialect_specific_sqlalchemy_imports_live_in_one_module() -> None:
    """Every store and lifecycle module runs on SQLite and PostgreSQL alike; a dialect's ``insert`` imported
    elsewhere (as ``lease.py`` and ``metering.py`` once did) is a 500 on the other database."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "src").rglob("*.py"))
        if path != DIALECT_MODULE
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "sqlalchemy.dialects" in line
    ]
    assert offenders == [], "dialect-specific imports outside metadata/db.py:\n" + "\n".join(offenders)
