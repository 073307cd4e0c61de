"""The web dashboard under ``/ui/``: server-rendered pages over the same domain calls and access checks the
control API uses (no second source of truth). Nothing imports this package but the app factory
(an import-linter contract); see ``docs/dashboard.md``."""

from cargohold.server.ui.routes import install

__all__ = ["install"]
