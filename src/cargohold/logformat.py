"""Log lines that say exactly one thing: control characters in messages are escaped.

Log messages carry values from requests (token and project names, paths, user agents, error messages that
quote what a client sent). A newline in one of them would start a line of the attacker's choosing, and an
ANSI escape sequence would rewrite the terminal of whoever tails the log. Escaping in the formatter, after
``%`` interpolation, covers every present and future log call at once; the exception text of
``log.exception`` keeps its line breaks (a traceback is meant to span lines).
"""

from __future__ import annotations

import logging
import re

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_control(text: str) -> str:
    """``text`` with C0/C1 control characters, DEL and the Unicode line separators written as escapes."""
    return _CONTROL.sub(_escape_one, text)


def has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


class EscapingFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose message part never contains a control character."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        original = record.message
        record.message = escape_control(original)
        try:
            return super().formatMessage(record)
        finally:
            record.message = original
