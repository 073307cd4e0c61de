"""Log output: ``--log-format text`` (lines for people; the access log in logfmt) or ``json`` (one object per
line for log pipelines), both carrying the request ID of the request a record belongs to.

Both formats are injection-safe: text escapes control characters (cargohold.logformat), JSON escapes them
by construction. No credential is ever logged: requests are logged by path (tokens travel in headers and
bodies, never in the URL), and the code logs credential IDs and names, never secrets.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from cargohold.edge.requestid import current_request_id
from cargohold.logformat import EscapingFormatter

ACCESS_FIELDS = "access_fields"
"""``extra`` key under which the access logger passes its fields (cargohold.server.http.accesslog)."""


_worker: int | None = None


def set_worker(index: int | None) -> None:
    """Name this process's worker of ``--workers N`` in every line it logs (``worker=N``, JSON ``"worker"``)."""
    global _worker
    _worker = index


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request ID of the context it was logged in (if any), and the worker."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        record.worker = _worker
        return True


class TextFormatter(EscapingFormatter):
    """``time LEVEL logger: message``, plus `` request_id=…`` on records logged while handling a request
    (the access line has its own ``id=`` field)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        request_id = getattr(record, "request_id", None)
        if request_id and not hasattr(record, ACCESS_FIELDS):
            line += f" request_id={request_id}"
        if (worker := getattr(record, "worker", None)) is not None:
            line += f" worker={worker}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, ``request_id``; the access log's
    fields as keys of their own; a traceback as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (request_id := getattr(record, "request_id", None)) is not None:
            entry["request_id"] = request_id
        if (worker := getattr(record, "worker", None)) is not None:
            entry["worker"] = worker
        fields = getattr(record, ACCESS_FIELDS, None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)  # ASCII: C1 controls and U+2028 escaped too


def make_handler(log_format: str) -> logging.Handler:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    return handler


def configure_logging(level: str, log_format: str = "text") -> None:
    """The process's logging for ``serve``: level, format, and quieter third-party loggers."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"log level {level!r} is not one of debug, info, warning, error")
    logging.basicConfig(level=numeric, handlers=[make_handler(log_format)], force=True)
    # Migration chatter is noise at start-up unless someone is debugging.
    logging.getLogger("alembic").setLevel(max(numeric, logging.WARNING))
    # httpx logs every request of a server-side push at INFO, upload URLs and all; blob_copy logs one line
    # per blob instead.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
