"""One rule for third-party tools the tests need: fail in CI, skip with the fix elsewhere.

``scripts/test.sh`` sets ``CARGOHOLD_REQUIRE_TOOLS=1`` after the bootstrap installed every tool, so a missing
tool there is a broken set-up that a quiet skip would hide. On a developer's machine without the tool the
test is skipped with one sentence saying how to get it.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def tools_required() -> bool:
    return os.environ.get("CARGOHOLD_REQUIRE_TOOLS") == "1"


def tool_missing(message: str) -> NoReturn:
    """Fail (CI) or skip (elsewhere) the current test or fixture with ``message``."""
    if tools_required():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
