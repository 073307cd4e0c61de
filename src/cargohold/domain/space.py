"""A full or failing disk, as the server handles it: refuse uploads early, keep reads working, make room.

This module is the domain's part (the monitor, admission, and the one phrasing of a storage fault as a
:class:`~cargohold.domain.errors.DomainError`); the HTTP part (the middleware that answers faults from any
route and retries reads with the reserve, the metrics, the wiring) is :mod:`cargohold.server.http.space`.

* **Admission** (:func:`admit_upload`): upload requests are measured against ``--min-free-space`` before a
  byte is staged, and re-measured while they stream (see :mod:`cargohold.storage.space`); a refusal is
  HTTP 507 with an OCI error body whose message starts "Cargohold's storage is full".
* **Faults** (:func:`storage_error`, and ``storage_faults`` in :mod:`cargohold.server.http.space`):
  ENOSPC/EDQUOT/SQLITE_FULL anywhere in a request become one 507 answer, EIO and friends one 500 ``UNKNOWN``
  answer, each with one log line and no traceback (see :mod:`cargohold.storage.faults`).
* **Reads on a full disk**: the reads themselves need no space, but some write a little bookkeeping (a pull
  token minted by ``pull-info``, the credential and ``jti`` of an OIDC exchange, whether at
  ``/auth/oidc/github-actions`` or behind ``/token``, the blob-link refresh behind blob GET, which is
  best-effort in :mod:`cargohold.domain.blobs`). When a GET or HEAD fails because the disk is full, the
  server deletes its reserve file and answers the request once more with that room; the login POSTs, whose
  bodies cannot be read twice, get the reserve beforehand when the disk is nearly full.
* **Monitoring** (:class:`SpaceMonitor`): every ``--space-check-interval``, and at once after a refusal or a
  fault, it measures free space, releases or re-creates the reserve, and — under the minimum, with
  ``--evict-for-space`` — runs :class:`~cargohold.lifecycle.space.SpaceReclaimer`. ``/healthz`` says
  ``degraded`` with the reason meanwhile (still HTTP 200: reads work, so a load balancer should keep the
  server), and ``/metrics`` exports free bytes, the minimum and the refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta

from prometheus_client import Counter

from cargohold.domain import errors
from cargohold.domain.threads import Runner
from cargohold.lifecycle.space import ReclaimReport, SpaceReclaimer
from cargohold.storage.faults import StorageFault, classify
from cargohold.storage.space import Claim, FilesystemSpace, SpaceGuard, SpaceReserve, SpaceStatus
from cargohold.storage.space import StorageFull as BelowMinimum

log = logging.getLogger(__name__)

RECLAIM_RETRY = 60.0
"""Seconds before reclaiming again after a pass that could neither evict nor free anything."""


class SpaceMonitor:
    """Free space, the reserve file and reclaiming, for one server process."""

    def __init__(
        self,
        guard: SpaceGuard,
        reserve: SpaceReserve | None,
        *,
        evict_for_space: bool,
        interval: timedelta,
    ) -> None:
        self.guard = guard
        self.reserve = reserve
        self.evict_for_space = evict_for_space
        self.interval = interval
        self.reclaimer: SpaceReclaimer | None = None
        self.last_reclaim: ReclaimReport | None = None
        self.refusals: Counter | None = None
        self.faults: Counter | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._was_low = False
        self._next_reclaim = 0.0

    # --- called from request handlers (any thread) ---------------------------------------------------------

    def status(self) -> SpaceStatus:
        """Measured now: one ``statvfs`` per filesystem, a few microseconds (healthz and metrics are rare)."""
        return self.guard.measure()

    def degraded_reason(self) -> str | None:
        """Why ``/healthz`` says degraded (blocking: may measure); None when storage is fine."""
        if not self.guard.enabled:
            return None
        reason = self.status().reason()
        if (reason is not None) != self._was_low:
            self.wake()  # storage just ran low, or recovered: the monitor reclaims, or re-creates the reserve
        return reason

    def refused(self) -> None:
        if self.refusals is not None:
            self.refusals.inc()
        self.wake()

    def on_fault(self, fault: StorageFault) -> bool:
        """Note a storage fault; when the disk is full, release the reserve. True if that freed space."""
        if self.faults is not None:
            self.faults.labels(fault.kind).inc()
        released = fault.full and self.reserve is not None and self.reserve.release()
        self.wake()
        return released

    def release_reserve(self) -> bool:
        """Delete the reserve now (the disk is full); True if that freed space. Wakes the monitor."""
        released = self.reserve is not None and self.reserve.release()
        if released:
            self.wake()
        return released

    def make_room_for_database(self) -> None:
        """Release the reserve if the disk is nearly full, before database writes that must not fail there
        (garbage collection, eviction, an OIDC exchange, opening the database at start-up)."""
        if self.guard.watching and self._manage_reserve(self.guard.measure(), create=False):
            self.wake()

    def wake(self) -> None:
        """Check (and reclaim) now rather than at the next interval; safe from any thread."""
        loop, event = self._loop, self._wake
        if loop is None or event is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(event.set)

    # --- the background check --------------------------------------------------------------------------

    def check(self) -> SpaceStatus:
        """Measure, manage the reserve, reclaim if low (blocking; one at a time, from :meth:`run`)."""
        status = self.guard.measure()
        self._manage_reserve(status)
        low = status.reason()
        if low is not None and not self._was_low:
            log.warning("%s", low)
        elif low is None and self._was_low:
            log.info("storage is back above the minimum free space; uploads are accepted again")
        self._was_low = low is not None
        if low is not None and self.evict_for_space and self.reclaimer is not None and self._may_reclaim():
            report = self.reclaimer.reclaim()
            self.last_reclaim = report
            # A pass that neither evicted nor freed anything (all pinned or newest, or waiting for the GC grace)
            # would do the same again at once: wait a while instead of collecting garbage every few seconds.
            progress = bool(report.evicted) or report.bytes_freed > 0
            wait = max(RECLAIM_RETRY, self.interval.total_seconds())
            self._next_reclaim = 0.0 if progress else time.monotonic() + wait
            status = self.guard.measure()
            self._manage_reserve(status)
            self._was_low = status.reason() is not None
        return status

    def _may_reclaim(self) -> bool:
        return time.monotonic() >= self._next_reclaim

    def _manage_reserve(self, status: SpaceStatus, *, create: bool = True) -> bool:
        """Release the reserve on a nearly full disk, re-create it once there is room; True if released."""
        reserve = self.reserve
        home = _reserve_home(status)
        if reserve is None or home is None:
            return False
        held = reserve.held()
        wanted = reserve.wanted(home.minimum) if self.guard.enabled else 0
        if held and (home.free < held or wanted == 0):
            # Less room left than we held back: something else is filling the disk. Give the database room.
            return reserve.release()
        if create and wanted > held and home.free >= 2 * wanted:
            # Taken back as soon as there is room for it twice over, below the minimum too: uploads are refused
            # there anyway, and the next time the disk fills the database needs it again.
            reserve.ensure(wanted)
        return False

    async def run(self, run: Runner) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        seconds = max(0.05, self.interval.total_seconds())
        while True:
            try:
                await run(self.check)
            except Exception as exc:
                fault = classify(exc)
                if fault is None:
                    log.exception("checking free space failed; will retry in %.0f s", seconds)
                else:
                    log.warning("checking free space failed: %s; will retry in %.0f s", fault.describe(), seconds)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=seconds)


def _reserve_home(status: SpaceStatus) -> FilesystemSpace | None:
    """The filesystem the reserve file lives on: the database's (which is the blob store's by default)."""
    return next((fs for fs in status.filesystems if "database" in fs.role), status.blobs)


# --- used by the domain services and the HTTP layer --------------------------------------------------------


async def admit_upload(monitor: SpaceMonitor | None, run: Runner, incoming: int) -> Claim:
    """Admit an upload request announcing ``incoming`` bytes; raises :class:`~cargohold.storage.space.StorageFull`
    (the free-space minimum, not yet a domain error: the caller names what was refused) when storage is low."""
    if monitor is None or not monitor.guard.enabled:
        return Claim.unchecked()
    return await run(monitor.guard.admit, incoming)


def storage_error(monitor: SpaceMonitor | None, exc: BaseException, what: str) -> errors.DomainError | None:
    """The one answer (and one log line) for a storage problem behind ``exc``; None if it is not one."""
    if isinstance(exc, BelowMinimum):
        return refused_for_space(monitor, exc, what)
    fault = classify(exc)
    if fault is None:
        return None
    if monitor is not None:
        monitor.on_fault(fault)
    return fault_error(fault, what)


def refused_for_space(monitor: SpaceMonitor | None, exc: BelowMinimum, what: str) -> errors.StorageFull:
    """HTTP 507 for an upload the free-space minimum does not admit (one INFO line: this is policy at work)."""
    log.info("refused %s: %s", what, exc)
    if monitor is not None:
        monitor.refused()
    fs = exc.filesystem
    detail = {"free_bytes": fs.free, "min_free_bytes": fs.minimum, "requested_bytes": exc.incoming}
    return errors.StorageFull(str(exc), detail=detail)


def fault_error(fault: StorageFault, what: str) -> errors.DomainError:
    """Log ``fault`` in one line and phrase its answer: 507 when the disk is full, 500 for an I/O error."""
    if fault.full:
        log.warning("%s failed: storage full: %s", what, fault.describe())
        return errors.StorageFull(
            f"Cargohold's storage is full: {what} failed with {fault.describe()}; ask a Cargohold admin to free space"
        )
    log.error("%s failed: storage I/O error: %s", what, fault.describe())
    return errors.StorageFailed(
        f"a storage I/O error ({fault.describe()}) stopped {what}; an admin should check the server's disk"
    )
