"""The retry policy shared by every registry request.

Why one policy object: the CLI exposes a single ``--retries`` knob and tests need to make backoff
instant; threading a dataclass through is simpler than configuring tenacity at each call site.

What is retried: transport failures (connect/read errors, timeouts, a connection dropped mid-response)
and :class:`RegistryError` with a retryable status (408, 429, 5xx). A ``Retry-After`` header (seconds or
an HTTP date) overrides the exponential backoff, capped so a hostile or confused server cannot park a CI
job for an hour. Everything else (401, 404, 400 ...) fails at once: repeating it cannot help.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import tenacity

from cargohold.client.errors import RegistryError

T = TypeVar("T")


def is_retryable(exc: BaseException) -> bool:
    """Transport errors and throttling/server errors are worth another try; client errors are not, and
    neither is a TLS mismatch that repeats the same way every time (see :func:`tls_problem`)."""
    if isinstance(exc, httpx.TransportError):
        return tls_problem(exc) is None
    return isinstance(exc, RegistryError) and exc.status is not None and exc.retryable


def tls_problem(exc: BaseException) -> str | None:
    """``"plain-http"`` when the server answered a TLS handshake in plain HTTP, ``"untrusted"`` when its
    certificate failed verification, else ``None``: found anywhere in the exception's chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return "untrusted"
        if isinstance(current, ssl.SSLError) and current.reason == "WRONG_VERSION_NUMBER":
            return "plain-http"
        current = current.__cause__ or current.__context__
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter."""

    attempts: int = 5
    """Total tries per request, the first included (so ``1`` disables retries)."""
    initial: float = 0.5
    """Backoff scale in seconds: the n-th wait is random in ``[0, initial * 2**n]``, up to ``maximum``."""
    maximum: float = 20.0
    max_retry_after: float = 60.0
    """Upper bound on a server-requested ``Retry-After`` wait."""
    sleep: Callable[[float], None] = time.sleep

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RegistryError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after)
        return tenacity.wait_random_exponential(multiplier=self.initial, max=self.maximum)(state)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before the ``attempt``-th retry (1-based) outside tenacity (resume loops)."""
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return float(tenacity.wait_random_exponential(multiplier=self.initial, max=self.maximum)(state))

    def retrying(self) -> tenacity.Retrying:
        """A tenacity controller; re-raises the last error unchanged when attempts run out."""
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, self.attempts)),
            wait=self._wait,
            retry=tenacity.retry_if_exception(is_retryable),
            sleep=self.sleep,
            reraise=True,
        )

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` under this policy."""
        return self.retrying()(fn)


NO_RETRY = RetryPolicy(attempts=1)
