"""Failed-authentication throttling: bursts, refill, Retry-After, address grouping, bounded memory."""

from __future__ import annotations

import pytest

from cargohold.server.auth.ratelimit import AuthFailureLimiter, client_key, retry_after_header


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_blocked_with_retry_after() -> None:
    clock = FakeClock()
    limiter = AuthFailureLimiter(burst=3, refill_per_minute=6, clock=clock)  # one token per 10 s
    assert limiter.retry_after("10.0.0.1") is None
    assert limiter.record_failure("10.0.0.1") is None
    assert limiter.record_failure("10.0.0.1") is None
    wait = limiter.record_failure("10.0.0.1")
    assert wait == pytest.approx(10.0)
    assert limiter.retry_after("10.0.0.1") == pytest.approx(10.0)
    assert retry_after_header(wait) == "10"
    clock.now += 4
    assert limiter.retry_after("10.0.0.1") == pytest.approx(6.0)
    clock.now += 6
    assert limiter.retry_after("10.0.0.1") is None
    # One token came back, so exactly one more failure is allowed before blocking again.
    assert limiter.record_failure("10.0.0.1") == pytest.approx(10.0)


def test_other_clients_are_unaffected() -> None:
    limiter = AuthFailureLimiter(burst=1, clock=FakeClock())
    limiter.record_failure("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") is not None
    assert limiter.retry_after("10.0.0.2") is None


def test_ipv6_is_grouped_by_64_and_mapped_ipv4_by_address() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    limiter = AuthFailureLimiter(burst=1, clock=FakeClock())
    limiter.record_failure("2001:db8:1:2::1")
    assert limiter.retry_after("2001:db8:1:2::99") is not None


def test_memory_is_bounded_and_refilled_buckets_are_dropped() -> None:
    clock = FakeClock()
    limiter = AuthFailureLimiter(burst=5, refill_per_minute=60, max_clients=100, clock=clock)
    for i in range(1000):
        limiter.record_failure(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100
    clock.now += 10  # 10 tokens refilled: every bucket is full again
    limiter.record_failure("192.0.2.1")
    assert len(limiter) == 1


def test_retry_after_header_rounds_up_to_at_least_one() -> None:
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(9.2) == "10"


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        AuthFailureLimiter(burst=0)
