"""Storage faults and free space, as HTTP sees them: one answer for a fault on any route, reads retried with
the reserve on a full disk, the storage metrics, and wiring the space monitor into the application.

The monitor itself, admission and the phrasing of a fault are the domain's (:mod:`cargohold.domain.space`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from cargohold.domain.errors import DomainError
from cargohold.domain.space import SpaceMonitor, storage_error
from cargohold.lifecycle.space import SpaceReclaimer
from cargohold.server.http.errors import RegistryError
from cargohold.server.state import STATE_KEY, state_of
from cargohold.storage.faults import classify

log = logging.getLogger(__name__)

LOGINS = frozenset({("POST", "/auth/oidc/github-actions"), ("POST", "/token")})
"""Writes a pull needs before it can start (an OIDC exchange records its jti and a credential)."""


@web.middleware
async def storage_faults(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Answer storage faults from any route in one sentence; give reads the reserve when the disk is full.

    A GET or HEAD that fails for lack of space is answered again once the reserve is released (its write, a
    pull token or a blob-link refresh, rolled back). The logins a pull starts with are POSTs whose bodies
    cannot be read twice, so for them the reserve is released beforehand when the disk is nearly full.
    """
    state = state_of(request)
    if state.space is not None and (request.method, request.path) in LOGINS:
        await state.run(state.space.make_room_for_database)
    try:
        return await handler(request)
    except (RegistryError, DomainError, web.HTTPException):
        raise
    except Exception as exc:
        fault = classify(exc)
        if fault is None:
            raise
        what = f"{request.method} {request.path}"
        reads = request.method in ("GET", "HEAD")
        if fault.full and reads and state.space is not None and state.space.release_reserve():
            log.warning("%s hit a full disk (%s); answering it again with the reserved space", what, fault.describe())
            try:
                return await handler(request)
            except (RegistryError, DomainError, web.HTTPException):
                raise
            except Exception as again:
                if classify(again) is None:
                    raise
                exc = again
        error = storage_error(state.space, exc, what)
        assert error is not None
        raise error from None


# --- metrics -----------------------------------------------------------------------------------------------


class _SpaceCollector(Collector):
    def __init__(self, monitor: SpaceMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[GaugeMetricFamily]:
        monitor = self.monitor
        free = GaugeMetricFamily(
            "cargohold_storage_free_bytes", "Free bytes on each filesystem the server writes to.", labels=["filesystem"]
        )
        total = GaugeMetricFamily("cargohold_storage_total_bytes", "Size of each filesystem.", labels=["filesystem"])
        minimum = GaugeMetricFamily(
            "cargohold_storage_min_free_bytes",
            "Free space the server keeps (--min-free-space); uploads are refused below it.",
            labels=["filesystem"],
        )
        low = GaugeMetricFamily(
            "cargohold_storage_low",
            "1 while free space is below the minimum (healthz: degraded).",
            labels=["filesystem"],
        )
        reserve = GaugeMetricFamily(
            "cargohold_storage_reserve_bytes", "Bytes of reserved space the server holds for its database now."
        )
        status = monitor.status() if monitor.guard.watching else None
        for fs in status.filesystems if status is not None else ():
            label = fs.role.replace(" ", "_")
            free.add_metric([label], fs.free)
            total.add_metric([label], fs.total)
            minimum.add_metric([label], fs.minimum)
            low.add_metric([label], 1 if fs.low else 0)
        reserve.add_metric([], monitor.reserve.held() if monitor.reserve is not None else 0)
        yield from (free, total, minimum, low, reserve)


# --- wiring --------------------------------------------------------------------------------------------------


def install(
    app: web.Application, *, registry: CollectorRegistry | None = None, reclaimer: SpaceReclaimer | None = None
) -> None:
    """Start the monitor; with the lifecycle's metrics ``registry`` and ``reclaimer``, export the storage metrics
    and evict for space (the application wires both, see :func:`cargohold.server.app.create_app`)."""
    state = app[STATE_KEY]
    monitor = state.space
    if monitor is None:
        return
    if registry is not None:
        monitor.refusals = Counter(
            "cargohold_storage_refusals",
            "Upload requests refused because storage is low (HTTP 507).",
            registry=registry,
        )
        monitor.faults = Counter(
            "cargohold_storage_faults", "Storage errors answered, by kind (full, io).", ["kind"], registry=registry
        )
        registry.register(_SpaceCollector(monitor))
    monitor.reclaimer = reclaimer

    async def monitoring(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(monitor.run(app[STATE_KEY].run))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(monitoring)
