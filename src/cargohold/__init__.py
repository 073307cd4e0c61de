"""Cargohold: a self-hostable ephemeral container registry for CI."""

import sys
import types

__version__ = "0.1.0"


def _skip_httpx_command_line() -> None:
    """Keep ``import httpx`` from importing httpx's own command-line tool.

    httpx's package ``__init__`` imports ``httpx._main`` (its ``httpx`` console script) whenever click,
    rich and pygments are installed — which they are for us — and that costs ~0.1 s on every ``cargohold``
    run: a tenth of the one-second budget for re-saving an unchanged image. Registering an empty
    placeholder first makes that import fail the way httpx already handles (it falls back to a ``main``
    that explains the CLI extras are missing). We never use httpx's CLI; the client API is untouched.
    """
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", types.ModuleType("httpx._main"))


_skip_httpx_command_line()
