"""The one ISO 8601 module (cargohold.isotime) and the clock types (cargohold.clock)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from cargohold import clock
from cargohold.isotime import format_epoch, format_iso, iso, parse_iso


def test_times_are_written_in_utc_to_the_second_with_a_z() -> None:
    moment = datetime(2026, 5, 1, 14, 30, 15, 999_999, tzinfo=timezone(timedelta(hours=2)))
    assert format_iso(moment) == "2026-05-01T12:30:15Z"
    assert iso(moment) == "2026-05-01T12:30:15Z"
    assert iso(None) is None
    assert format_iso(datetime(2026, 5, 1, 12, 0)) == "2026-05-01T12:00:00Z", "a naive time is UTC already"


def test_posix_times_are_written_the_same_way() -> None:
    assert format_epoch(datetime(2026, 5, 1, 12, 0, 7, tzinfo=UTC).timestamp() + 0.9) == "2026-05-01T12:00:07Z"


SRC = Path(__file__).resolve().parents[1] / "src" / "cargohold"
ISO_BY_HAND = re.compile(r"%Y-%m-%dT|\.isoformat\(|fromisoformat\(|def _?iso\b")
OWN_FORMAT = {
    "isotime.py": "the one formatter and parser",
    "edge/logs.py": "JSON log lines carry milliseconds, which the API's second-precision form has not",
}


def test_no_module_formats_or_parses_iso_times_by_hand() -> None:
    """Four private ``_iso`` helpers once wrote times four ways; every module now goes through isotime."""
    found = [
        f"{path.relative_to(SRC)}:{number}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if path.relative_to(SRC).as_posix() not in OWN_FORMAT
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ISO_BY_HAND.search(line)
    ]
    assert found == []


def test_reading_accepts_what_people_type_and_gives_aware_utc() -> None:
    assert parse_iso("2026-05-01T12:00:00Z") == datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert parse_iso(" 2026-05-01T14:00:00+02:00 ") == datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert parse_iso("2026-05-01T12:00") == datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert parse_iso("2026-05-01T12:00:00.5Z").tzinfo is UTC
    for text in ("next tuesday", "", "2026-13-01T00:00:00Z"):
        with pytest.raises(ValueError):
            parse_iso(text)


def test_a_written_time_reads_back_unchanged() -> None:
    text = "2030-01-31T23:59:59Z"
    assert format_iso(parse_iso(text)) == text


def test_the_default_clocks() -> None:
    before = datetime.now(UTC)
    now = clock.utc_now()
    assert now.tzinfo is UTC and before <= now <= datetime.now(UTC)
    first = clock.monotonic()
    assert clock.monotonic() >= first


OWN_CLOCK = re.compile(r"^\s*(class \w*Clock\b|\w*Clock\s*=\s*Callable|def (system_clock|utcnow|utc_now)\b)")


def test_no_module_defines_a_clock_of_its_own() -> None:
    """``Clock`` was defined four times with two meanings; cargohold.clock names the two once."""
    found = [
        f"{path.relative_to(SRC)}:{number}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if path.relative_to(SRC).as_posix() != "clock.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if OWN_CLOCK.search(line)
    ]
    assert found == []
