"""The one ISO 8601 module (cargohold.isotime) and the clock types (cargohold.clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from cargohold import clock
from cargohold.isotime import format_iso, iso, parse_iso


def test_times_are_written_in_utc_to_the_second_with_a_z() -> None:
    moment = datetime(2026, 5, 1, 14, 30, 15, 999_999, tzinfo=timezone(timedelta(hours=2)))
    assert format_iso(moment) == "2026-05-01T12:30:15Z"
    assert iso(moment) == "2026-05-01T12:30:15Z"
    assert iso(None) is None
    assert format_iso(datetime(2026, 5, 1, 12, 0)) == "2026-05-01T12:00:00Z", "a naive time is UTC already"


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
