"""Storage metering: stored bytes per project, byte-hours per calendar month, GB-month cost."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cargohold.lifecycle.metering import GB, Metering, hours_in_month, split_by_month
from cargohold.lifecycle.retention import Retention
from test_lifecycle_support import Env, FakeClock, make_env


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def test_split_by_month_crosses_boundaries_exactly() -> None:
    start = datetime(2026, 1, 31, 12, tzinfo=UTC)
    end = datetime(2026, 3, 1, 6, tzinfo=UTC)
    assert split_by_month(start, end) == [
        ("2026-01", timedelta(hours=12)),
        ("2026-02", timedelta(days=28)),
        ("2026-03", timedelta(hours=6)),
    ]
    assert hours_in_month("2026-02") == 28 * 24
    assert hours_in_month("2024-02") == 29 * 24
    assert split_by_month(end, end) == []


def test_usage_over_simulated_months(env: Env) -> None:
    project = env.control.create_project("p")
    clock = FakeClock(datetime(2026, 6, 1, tzinfo=UTC))  # June has 30 days
    metering = Metering(env.db, clock=clock, price_per_gb_month=0.20, free_gb_months=1.0)
    metering.record(project.id, 2 * GB)
    clock.advance(timedelta(days=10))
    metering.record(project.id, 5 * GB)
    clock.now = datetime(2026, 7, 5, tzinfo=UTC)  # the rest of June, then 4 days of July

    june = metering.usage(project.id, "2026-06")
    expected_june_byte_hours = 2 * GB * 240 + 5 * GB * 480
    assert june.byte_hours == pytest.approx(expected_june_byte_hours, rel=1e-12)
    assert june.gb_months == pytest.approx(expected_june_byte_hours / 720 / GB, rel=1e-12)  # = 4.0
    assert june.gb_months == pytest.approx(4.0, rel=1e-12)
    assert june.cost == pytest.approx((4.0 - 1.0) * 0.20, rel=1e-12)

    july = metering.usage(project.id, "2026-07")  # live interval only: nothing accrued for July yet
    assert july.byte_hours == pytest.approx(5 * GB * 96, rel=1e-12)
    assert july.gb_months == pytest.approx(5 * 96 / 744, rel=1e-12)
    assert july.cost == 0.0  # within the free allowance

    metering.record(project.id, 0)  # accrue and stop storing
    clock.advance(timedelta(days=3))
    assert metering.usage(project.id, "2026-07").byte_hours == pytest.approx(5 * GB * 96, rel=1e-12)
    assert metering.usage(project.id, "2026-06").byte_hours == pytest.approx(expected_june_byte_hours, rel=1e-12)
    assert metering.usage(project.id, "2026-05").byte_hours == 0


def _own_bytes(env: Env, repository: str, tag: str) -> int:
    """Manifest bytes plus config bytes of the image tagged ``tag``."""
    stored = env.metadata.get_manifest(repository, tag, by_digest=False)
    assert stored is not None
    return len(stored.payload) + json.loads(stored.payload)["config"]["size"]


def test_stored_bytes_count_shared_blobs_once_per_project(env: Env) -> None:
    base = b"b" * 1000
    first = env.control.create_project("first")
    second = env.control.create_project("second")
    clock = FakeClock(datetime.now(UTC))
    one = env.saved_build(first.id, layers=[base, b"x" * 10], now=clock.now)
    two = env.saved_build(first.id, layers=[base, b"y" * 20], now=clock.now)
    three = env.saved_build(second.id, layers=[base], now=clock.now)
    metering = Metering(env.db, clock=clock)
    measured = metering.refresh()
    own_one, own_two = _own_bytes(env, first.id, one), _own_bytes(env, first.id, two)
    assert measured[first.id] == 1000 + 10 + 20 + own_one + own_two  # the shared base layer once
    assert measured[second.id] == 1000 + _own_bytes(env, second.id, three)  # and once more for this project
    Retention(env.db, clock=clock).evict_build(one)
    after = metering.refresh([first.id])[first.id]
    assert after == 1000 + 20 + own_two
    assert metering.stored_bytes()[first.id] == after


def test_usage_rejects_bad_months(env: Env) -> None:
    project = env.control.create_project("p")
    with pytest.raises(ValueError, match="YYYY-MM"):
        Metering(env.db).usage(project.id, "June")
