"""One structured line per request (logfmt), for people and for log pipelines alike."""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import BaseRequest, StreamResponse

from cargohold.edge.logs import ACCESS_FIELDS
from cargohold.edge.proxies import client_address, client_scheme
from cargohold.edge.requestid import request_id_of
from cargohold.logformat import escape_control, has_control
from cargohold.server.http.request_keys import ROUTE_KEY, USER_KEY

access_log = logging.getLogger("cargohold.access")


def _quote(value: str) -> str:
    """A logfmt value: bare when safe, else quoted with backslash escapes (control characters included)."""
    if value and not any(c in value for c in ' "=\\') and not has_control(value):
        return value
    return '"' + escape_control(value.replace("\\", "\\\\").replace('"', '\\"')) + '"'


class AccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        fields = {
            "method": request.method,
            "path": request.path_qs,
            "status": str(response.status),
            "bytes": str(response.body_length),
            "ms": f"{time * 1000:.1f}",
            "route": request.get(ROUTE_KEY, "-"),
            "user": request.get(USER_KEY, "-"),
            "remote": client_address(request) if request.remote else "-",
            "ua": request.headers.get("User-Agent", "-"),
            "proto": client_scheme(request),
            "id": request_id_of(request) or "-",
        }
        line = " ".join(f"{key}={_quote(value)}" for key, value in fields.items())
        # The JSON formatter writes the fields as keys of their own (cargohold.edge.logs).
        request_id = fields.pop("id")
        self.logger.info(line, extra={ACCESS_FIELDS: fields, "request_id": request_id})

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


class MalformedRequestsInOneLine(logging.Filter):
    """aiohttp logs every request it cannot parse (bad header bytes, broken chunking) with a full traceback
    at ERROR level. Those are the client's mistakes, and anyone can send them as fast as they like: keep one
    INFO line that says what was wrong, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            reason = " ".join(str(error.message).split())
            record.msg = f"{record.getMessage()}: {error.code} {reason}"
            record.args = ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True


def install_log_filters() -> None:
    """Attach :class:`MalformedRequestsInOneLine` to aiohttp's server logger (idempotent)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestsInOneLine) for f in server_log.filters):
        server_log.addFilter(MalformedRequestsInOneLine())
