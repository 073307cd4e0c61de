"""Values from requests cannot forge log lines: control characters are escaped in every log message."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cargohold.logformat import EscapingFormatter, escape_control
from protocol_helpers import raw_request
from servers import InProcessServer

FORGED = "2030-01-01 00:00:00,000 WARNING cargohold.server.control.api: admin revoked every token"


def test_a_token_name_with_a_newline_is_logged_on_one_line(server: InProcessServer) -> None:
    name = f"ci\n{FORGED}\r\x1b[2J\u2028end"
    with server.client() as http:
        response = http.post("/api/v1/tokens", json={"kind": "admin", "name": name})
    assert response.status_code == 201, response.text
    token_id = response.json()["id"]
    with server.client(response.json()["token"]) as forged:
        assert forged.get("/api/v1/whoami").status_code == 200
    lines = server.log().splitlines()
    assert not any(FORGED in line and "\\n" not in line for line in lines), "the token name forged a log line"
    created = [line for line in lines if f"token {token_id}" in line]
    assert len(created) == 1, lines[-20:]
    assert f"(ci\\n{FORGED}\\r\\x1b[2J\\u2028end)" in created[0]
    # The access log names the caller too (user=admin:<name>): quoted, escaped, one line. aiohttp writes it
    # after the response has gone out, so wait for it.
    access = _wait_for_lines(server, lambda line: "cargohold.access" in line and "/api/v1/whoami" in line)
    lines = server.log().splitlines()
    assert len(access) == 1, lines[-20:]
    assert f'user="admin:ci\\n{FORGED}\\r\\x1b[2J\\u2028end"' in access[0]


def _wait_for_lines(server: InProcessServer, wanted: Callable[[str], bool], timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in server.log().splitlines() if wanted(line)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_a_malformed_request_is_one_log_line_without_a_traceback(server: InProcessServer) -> None:
    status, _headers, _body = raw_request(server, "GET", "/v2/", headers={"User-Agent": "evil\x1b[2J\x07agent"})
    assert status == 400
    _wait_for_lines(server, lambda line: "method=UNKNOWN" in line)
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    refused = [line for line in log.splitlines() if "Error handling request" in line]
    assert len(refused) == 1 and "Invalid header value char" in refused[0], log[-3000:]
    assert "\x1b" not in log and "\x07" not in log


def test_the_formatter_keeps_tracebacks_multi_line_and_escapes_the_message() -> None:
    formatter = EscapingFormatter("%(levelname)s %(message)s")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "bad %s", ("a\nb",), exc_info=True)
        import sys

        record.exc_info = sys.exc_info()
    text = formatter.format(record)
    first, *rest = text.splitlines()
    assert first == "ERROR bad a\\nb"
    assert rest[0].startswith("Traceback") and rest[-1] == "ValueError: boom"
    assert record.getMessage() == "bad a\nb"  # the record itself is untouched for other handlers
    assert escape_control("tab\there \x00 \x7f \x85 ok") == "tab\\there \\x00 \\x7f \\x85 ok"
