"""The two clocks, and how code that reads them takes them as an argument so that tests can replace them.

* **Wall-clock time** (:data:`WallClock`, default :func:`utc_now`): *when* something happens, as a
  timezone-aware UTC ``datetime`` — expiries, timestamps in answers, the ``Retry-After`` date a server sends.
* **Monotonic time** (:data:`MonotonicClock`, default :func:`monotonic`): *how long* something takes —
  retry budgets, token lifetimes in a cache, transfer rates. It never jumps when the system clock is set.

A module that needs one takes it as a parameter (``clock: MonotonicClock = monotonic``); a test passes a
function it controls instead of sleeping (the retry tests run a whole 60 s budget in virtual time this way).
Pure standard library, so every layer may import it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

WallClock = Callable[[], datetime]
"""Returns the current time as a timezone-aware UTC ``datetime``."""
MonotonicClock = Callable[[], float]
"""Returns seconds on a clock that only moves forward; only differences between two readings mean anything."""


def utc_now() -> datetime:
    """The system's wall-clock time in UTC: the default :data:`WallClock`."""
    return datetime.now(UTC)


def monotonic() -> float:
    """:func:`time.monotonic`: the default :data:`MonotonicClock`."""
    return time.monotonic()


__all__ = ["MonotonicClock", "WallClock", "monotonic", "utc_now"]
