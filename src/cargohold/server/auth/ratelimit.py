"""Throttling of failed authentications per client address.

A token bucket per client: each failure takes one token, tokens refill at a steady rate, and a client
with an empty bucket is told to come back later (``429 TOOMANYREQUESTS`` with ``Retry-After``). This
allows a burst of honest mistakes (a mistyped token, a stale login) but caps guessing at the refill rate.

Design choices:

* Only failures count, and a success does not reset the bucket: otherwise an attacker holding one valid
  credential could interleave it to keep guessing others at full speed.
* IPv6 clients are keyed by their /64, since one host typically controls a whole /64; IPv4-mapped IPv6
  addresses are keyed as the IPv4 address.
* Memory is bounded: at most ``max_clients`` buckets, least-recently-failed evicted first, and buckets
  that have refilled completely are dropped (they carry no information).
"""

from __future__ import annotations

import ipaddress
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

from cargohold.clock import MonotonicClock, monotonic


def client_key(address: str) -> str:
    """The bucket key for a peer address (IPv6 grouped by /64; unparseable values used verbatim)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class AuthFailureLimiter:
    """Per-client token bucket of authentication failures. Thread-safe; clock injectable for tests."""

    def __init__(
        self,
        *,
        burst: int = 10,
        refill_per_minute: float = 6.0,
        max_clients: int = 10_000,
        clock: MonotonicClock = monotonic,
    ) -> None:
        if burst < 1 or refill_per_minute <= 0 or max_clients < 1:
            raise ValueError("burst and max_clients must be >= 1 and refill_per_minute positive")
        self.burst = burst
        self.rate = refill_per_minute / 60.0
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def _refilled(self, bucket: _Bucket, now: float) -> float:
        return min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)

    def retry_after(self, address: str) -> float | None:
        """Seconds the client must wait before trying again, or None if it may try now.

        Call before checking credentials, so a blocked client costs no hashing or database work.
        """
        key = client_key(address)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                return None
            now = self._clock()
            tokens = self._refilled(bucket, now)
            if tokens >= self.burst:
                del self._buckets[key]
                return None
            if tokens >= 1:
                return None
            return (1 - tokens) / self.rate

    def record_failure(self, address: str) -> float | None:
        """Count one failed authentication; returns the wait if the client is now blocked."""
        key = client_key(address)
        with self._lock:
            now = self._clock()
            bucket = self._buckets.pop(key, None)
            tokens = self.burst if bucket is None else self._refilled(bucket, now)
            tokens = max(0.0, tokens - 1)
            self._buckets[key] = _Bucket(tokens, now)  # re-inserted at the end: most recent
            self._evict(now)
            return None if tokens >= 1 else (1 - tokens) / self.rate

    def _evict(self, now: float) -> None:
        # Oldest entries first: full buckets go whatever the size, then trim to the bound.
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if len(self._buckets) > self.max_clients or self._refilled(bucket, now) >= self.burst:
                del self._buckets[key]
            else:
                break

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
