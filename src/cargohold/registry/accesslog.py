"""One structured line per request (logfmt), for people and for log pipelines alike."""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

access_log = logging.getLogger("cargohold.access")


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' "=\\'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class AccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        fields = {
            "method": request.method,
            "path": request.path_qs,
            "status": str(response.status),
            "bytes": str(response.body_length),
            "ms": f"{time * 1000:.1f}",
            "route": str(request.get("route", "-")),
            "user": str(request.get("principal", "-")),
            "remote": request.remote or "-",
            "ua": request.headers.get("User-Agent", "-"),
        }
        self.logger.info(" ".join(f"{key}={_quote(value)}" for key, value in fields.items()))

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
