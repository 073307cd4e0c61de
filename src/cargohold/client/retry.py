"""The retry policy shared by every request the client sends: what is retried, for how long, and how it waits.

Why a time budget and not a number of tries: a registry restart (an upgrade, a config change, a replica
rolled behind a load balancer) makes the server unavailable for as long as its drain and its start-up
take, seconds to a minute, whatever the number of tries. Five quick tries were used up before a restarted
server was back, so one restart failed every CI job that was pushing at that moment.

What is retried:

* **An outage**: the server cannot be reached (connection refused or reset, a timeout, a connection dropped
  mid-response) or says it cannot serve now (502, 503, 504, and 429 with its ``Retry-After``). Retried until
  the budget is spent (``--retry-for``, ``CARGOHOLD_RETRY_FOR``, the actions' ``retry-for`` input; default
  :data:`DEFAULT_BUDGET`).
* **A transient error** (408, 500): a few tries (``transient_attempts``), within the budget; a handler that
  fails the same way every time must not hold a job for a minute.
* Everything else (400, 401, 403, 404, a digest mismatch, a TLS certificate the client does not trust, a
  host name that does not exist) fails at once: repeating it cannot help.

The outage clock is per host and shared by every request to that host through one policy object: it starts
at the first failure and stops at the next success. A request that starts during an outage gets what is
left of the budget, not a budget of its own, so a command whose server stays down fails after about the
budget, not after a budget per step (the failed save's ``fail_build``, say); and the user is told once per
outage that the server is unavailable and for how long the client will keep trying, not once per attempt.

Waits: full-jitter exponential backoff from ``initial``, each wait capped at ``maximum`` (so a server that
comes back is noticed within a few seconds), never past the budget. A ``Retry-After`` is honoured (capped at
``max_retry_after``); one that asks for longer than the budget has left ends the retries at once.

Requests that are not idempotent (``idempotent=False``: creating a token, a project, a trust relationship)
are retried only after failures that prove the server did not process them: no connection was made
(refused, connect timeout) or the server answered 429 or 503, which it sends without doing the work. A
connection lost after the request went out may have lost only the answer; repeating the request could then
do the work twice, so that failure is reported instead.

The loop is written here rather than with tenacity's ``Retrying`` because resumable transfers must restart
their count whenever bytes move, and every operation shares the per-host outage clock; tenacity still
computes the jittered backoff.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
import tenacity

from cargohold.client.errors import RegistryError
from cargohold.clock import MonotonicClock, monotonic

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_BUDGET = 60.0
"""Seconds an operation keeps retrying through an outage: the server's default drain deadline (30 s) plus
its start-up (about a second), with room to spare, yet short enough that a server that is really down fails
the job within a minute instead of at the job's timeout."""
OUTAGE_STATUSES = frozenset({429, 502, 503, 504})
TRANSIENT_STATUSES = frozenset({408, 500})
BUDGET_HINT = "--retry-for (CARGOHOLD_RETRY_FOR, the actions' retry-for input)"
NOT_SENT_STATUSES = frozenset({429, 503})
"""Answers a server gives without processing the request: safe to repeat even when it is not idempotent."""


def tls_problem(exc: BaseException) -> str | None:
    """``"plain-http"`` when the server answered a TLS handshake in plain HTTP, ``"untrusted"`` when its
    certificate failed verification, else ``None``: found anywhere in the exception's chain."""
    for current in _chain(exc):
        if isinstance(current, ssl.SSLCertVerificationError):
            return "untrusted"
        if isinstance(current, ssl.SSLError) and current.reason == "WRONG_VERSION_NUMBER":
            return "plain-http"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and not any(current is s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


class NotRetryable:
    """Mixin for connection errors that repeat the same way however often they are tried (a refusal by the
    server's egress policy, say): found anywhere in an error's chain, it stops the retries."""


def _permanent_connect_failure(exc: BaseException) -> bool:
    """A connection failure that repeats the same way: a TLS mismatch, a host name that does not exist, or a
    :class:`NotRetryable` cause."""
    if tls_problem(exc) is not None:
        return True
    for current in _chain(exc):
        if isinstance(current, NotRetryable):
            return True
        if isinstance(current, socket.gaierror) and current.errno == socket.EAI_NONAME:
            return True
    return False


def classify(exc: BaseException, *, idempotent: bool = True) -> str | None:
    """``"outage"``, ``"transient"`` or ``None`` (not worth repeating); see the module docstring."""
    if isinstance(exc, ServerUnavailable):
        return None  # an inner retry loop already spent the budget
    if isinstance(exc, httpx.TransportError):
        if _permanent_connect_failure(exc):
            return None
        if idempotent or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return "outage"
        return None
    if isinstance(exc, RegistryError):
        status = exc.status
        if status is None:
            return "outage" if idempotent else None
        if status in NOT_SENT_STATUSES or (idempotent and status in OUTAGE_STATUSES):
            return "outage"
        if idempotent and status in TRANSIENT_STATUSES:
            return "transient"
    return None


def is_retryable(exc: BaseException, *, idempotent: bool = True) -> bool:
    """Whether the policy would try again after ``exc`` (budget permitting)."""
    return classify(exc, idempotent=idempotent) is not None


def describe_failure(exc: BaseException) -> str:
    """A short clause for messages: ``connection refused``, ``503 UNAVAILABLE``."""
    if isinstance(exc, RegistryError) and exc.status is not None:
        return " ".join([str(exc.status), *exc.codes])
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    if text.startswith("[Errno") and "] " in text:
        text = text.split("] ", 1)[1]
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]  # "Connection refused" reads as a clause; "TLS ..." stays
    return text


def human_seconds(seconds: float) -> str:
    """``45 s``, ``2 min``, ``1 min 30 s``: how budgets and what is left of them are printed."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, rest = divmod(whole, 60)
    return f"{minutes} min" + (f" {rest} s" if rest else "")


@dataclass(eq=False)
class ServerUnavailable(RegistryError):
    """The retry budget ran out while the server stayed unavailable (or asked to wait past the budget)."""

    host: str = "the server"
    budget: float = 0.0
    cause: str = ""
    asked_to_wait: float | None = None

    def __str__(self) -> str:
        if self.asked_to_wait is not None:
            head = (
                f"{self.host} asked to retry after {human_seconds(self.asked_to_wait)} ({self.cause}), later than "
                f"the retry budget of {human_seconds(self.budget)} allows"
            )
        elif self.budget <= 0:
            head = f"{self.host} is unavailable ({self.cause}) and retries are off"
        else:
            budget = human_seconds(self.budget)
            head = f"{self.host} stayed unavailable for the whole retry budget of {budget} ({self.cause})"
        return f"{head}; check the server, or allow longer with {BUDGET_HINT}"


class _Outage:
    __slots__ = ("announced", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.announced = False


class Outages:
    """Per-host outage clocks shared by every operation of one policy (thread-safe).

    Waits end early when the outage does: when one of six parallel transfers gets through to a restarted
    server, the other five try again at once instead of sleeping out their backoff.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)
        self._by_host: dict[str, _Outage] = {}

    def begin(self, host: str, now: float) -> tuple[float, bool]:
        """The outage's start (``now`` if none was going on) and whether this call should announce it."""
        with self._lock:
            outage = self._by_host.get(host)
            if outage is None:
                outage = self._by_host[host] = _Outage(now)
            first, outage.announced = not outage.announced, True
            return outage.started, first

    def end(self, host: str, tried_at: float) -> None:
        """A try to ``host`` that began at ``tried_at`` succeeded: the outage is over if it began before the
        try. A request that was already under way when the outage began (and finished, a server draining
        answers those) says nothing about whether the server is back."""
        if self._by_host:  # the common case, no outage: no lock
            with self._lock:
                outage = self._by_host.get(host)
                if outage is not None and outage.started <= tried_at:
                    del self._by_host[host]
                    self._ended.notify_all()

    def wait(self, host: str, seconds: float) -> None:
        """Sleep up to ``seconds``, less if the outage of ``host`` ends meanwhile."""
        with self._lock:
            outage = self._by_host.get(host)
            if outage is not None:
                self._ended.wait_for(lambda: self._by_host.get(host) is not outage, timeout=seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how to retry; one object is shared by every client of a command (see the module doc)."""

    budget: float = DEFAULT_BUDGET
    """Seconds an operation keeps retrying through an outage, from its first failure (0: no retries)."""
    initial: float = 0.5
    """Backoff scale in seconds: the n-th wait is random in ``[0, initial * 2**n]``, up to ``maximum``."""
    maximum: float = 5.0
    max_retry_after: float = 60.0
    """Upper bound on a server-requested ``Retry-After`` wait."""
    attempts: int | None = None
    """Optional cap on tries per request, the first included (``1`` disables retries), on top of the budget."""
    transient_attempts: int = 3
    """Tries for a 408 or 500, the first included."""
    sleep: Callable[[float], None] | None = None
    """How to wait between tries; default: real time, cut short when the host's outage ends."""
    clock: MonotonicClock = monotonic
    """Where tries and waits are timed (the budget is measured on it); tests pass a virtual one."""
    notify: Callable[[str], object] | None = None
    """Called with one line when an outage begins (the CLI prints it; the actions log it); default: log."""
    outages: Outages = field(default_factory=Outages, compare=False, repr=False)

    def with_budget(self, seconds: float) -> RetryPolicy:
        """This policy with another budget (and outage clocks of its own)."""
        return dataclasses.replace(self, budget=max(0.0, seconds), outages=Outages())

    def attempt(
        self, host: str | None = None, *, idempotent: bool = True, final: Callable[[Exception], bool] | None = None
    ) -> Attempts:
        """The retry state of one operation, for loops that drive it themselves (resumable transfers).

        ``final``: errors the caller knows to be an answer, not an outage (a 502 that names its reason).
        """
        return Attempts(self, host or "the server", idempotent, final)

    def call(
        self,
        fn: Callable[[], T],
        *,
        host: str | None = None,
        idempotent: bool = True,
        final: Callable[[Exception], bool] | None = None,
    ) -> T:
        """Run ``fn`` under this policy: its result, or the error that ended the retries."""
        attempts = self.attempt(host, idempotent=idempotent, final=final)
        while True:
            try:
                result = fn()
            except Exception as exc:
                attempts.failed(exc)
                continue
            attempts.succeeded()
            return result

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before the ``attempt``-th retry (1-based): jittered, capped at ``maximum``."""
        # tenacity wants its Retrying object here; its wait strategies read only the attempt number.
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return float(tenacity.wait_random_exponential(multiplier=self.initial, max=self.maximum)(state))

    def announce(self, message: str) -> None:
        if self.notify is not None:
            self.notify(message)
        else:
            log.warning("%s", message)


class Attempts:
    """One operation's tries under a :class:`RetryPolicy`.

    Call :meth:`failed` in the ``except`` block of every failed try: it waits before the next one, or raises
    (the error itself when it is not worth repeating, :class:`ServerUnavailable` when the budget is spent).
    Call :meth:`succeeded` when a try worked, and :meth:`progressed` when a resumable transfer moved bytes:
    the count restarts and the host's outage is over.
    """

    def __init__(
        self, policy: RetryPolicy, host: str, idempotent: bool, final: Callable[[Exception], bool] | None = None
    ) -> None:
        self.policy = policy
        self.host = host
        self.idempotent = idempotent
        self.final = final
        self.tries = 0
        self.tried_at = policy.clock()
        """When the current try began: the start, or the end of the last wait."""

    def failed(self, exc: Exception) -> None:
        policy = self.policy
        kind = classify(exc, idempotent=self.idempotent)
        if kind is None or (self.final is not None and self.final(exc)):
            raise exc
        self.tries += 1
        if policy.attempts is not None and self.tries >= policy.attempts:
            raise exc
        if kind == "transient" and self.tries >= policy.transient_attempts:
            raise exc
        now = policy.clock()
        started, first = policy.outages.begin(self.host, now)
        remaining = started + policy.budget - now
        cause = describe_failure(exc)
        retry_after = exc.retry_after if isinstance(exc, RegistryError) else None
        if retry_after is not None and min(retry_after, policy.max_retry_after) > remaining:
            raise ServerUnavailable(
                f"reaching {self.host}",
                status=_status(exc),
                host=self.host,
                budget=policy.budget,
                cause=cause,
                asked_to_wait=retry_after,
            ) from exc
        if remaining <= 0:
            raise ServerUnavailable(
                f"reaching {self.host}", status=_status(exc), host=self.host, budget=policy.budget, cause=cause
            ) from exc
        if first:
            policy.announce(f"{self.host} is unavailable ({cause}); retrying for up to {human_seconds(remaining)}")
        wait = min(retry_after, policy.max_retry_after) if retry_after is not None else policy.backoff(self.tries)
        if policy.sleep is not None:
            policy.sleep(min(wait, remaining))
        else:
            policy.outages.wait(self.host, min(wait, remaining))
        self.tried_at = policy.clock()

    def succeeded(self) -> None:
        self.tries = 0
        self.policy.outages.end(self.host, self.tried_at)
        self.tried_at = self.policy.clock()

    progressed = succeeded


def _status(exc: BaseException) -> int | None:
    return exc.status if isinstance(exc, RegistryError) else None


NO_RETRY = RetryPolicy(budget=0.0, attempts=1)

__all__ = [
    "DEFAULT_BUDGET",
    "NO_RETRY",
    "Attempts",
    "NotRetryable",
    "RetryPolicy",
    "ServerUnavailable",
    "classify",
    "describe_failure",
    "is_retryable",
    "tls_problem",
]
