"""The README's demo command must keep working: run scripts/demo.py exactly as scripts/demo.sh does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_images import require_tools

DEMO = Path(__file__).resolve().parent.parent / "scripts" / "demo.py"


@pytest.mark.slow
def test_demo_runs_end_to_end() -> None:
    require_tools("skopeo", "umoci", "docker-registry")
    proc = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout}\n{proc.stderr}"
    assert "DEMO OK" in proc.stdout
    for step in ("cargohold save", "cargohold pull", "cargohold push", "0 layer bytes uploaded"):
        assert step in proc.stdout, f"the demo no longer shows {step!r}"
    # It ends with the dashboard's URL and a token to sign in with (a project token, not the admin's).
    last = proc.stdout.strip().splitlines()
    dashboard = next(line for line in last if line.startswith("Dashboard: "))
    assert "/ui/" in dashboard and "sign in with: chp_" in dashboard
