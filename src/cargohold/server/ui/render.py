"""Rendering dashboard pages: one Jinja2 environment (autoescaping on for every template), the filters the
templates share, and the security headers every dashboard response carries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jinja2
from aiohttp import web

from cargohold.isotime import iso

SECURITY_HEADERS = {
    # Nothing inline, nothing from elsewhere: the stylesheet and the one script come from /ui/static/.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
"""On every dashboard page (static files get long caching instead of ``no-store``)."""


def human_size(value: int | float | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover - the loop always returns


def relative(moment: datetime | None, now: datetime | None = None) -> str:
    """``in 3 d 4 h`` / ``2 h ago``: what a person wants to know about an expiry."""
    if moment is None:
        return "never"
    delta = moment - (now or datetime.now(UTC))
    seconds = abs(int(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        text = f"{days} d {hours} h"
    elif hours:
        text = f"{hours} h {minutes} min"
    else:
        text = f"{minutes} min"
    return f"in {text}" if delta.total_seconds() >= 0 else f"{text} ago"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cargohold.server.ui", "templates"),
        autoescape=True,  # every template, whatever its name: hostile tags and labels are text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["size"] = human_size
    env.filters["iso"] = iso
    env.filters["relative"] = relative
    return env


ENVIRONMENT = _environment()


def page(template: str, status: int = 200, **context: Any) -> web.Response:
    text = ENVIRONMENT.get_template(template).render(**context)
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS)


def redirect(location: str, status: int = 303) -> web.Response:
    return web.Response(status=status, headers={"Location": location, **SECURITY_HEADERS})
