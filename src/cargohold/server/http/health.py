"""``/livez`` (the process runs) and ``/healthz`` (this replica can serve: database and blob store reachable).

Two probes because they answer two questions. A load balancer asks ``/healthz`` whether to send requests
here: with several replicas, one that lost its database or its bucket must leave the rotation (503) while the
others keep serving. A supervisor asks ``/livez`` whether to restart the process: that must not depend on the
database, or an outage of the database would restart every replica at once for nothing.

Each component is checked on the I/O pool with a deadline (:data:`CHECK_TIMEOUT`): a hung mount or a
database that accepts connections but never answers counts as down instead of hanging the probe. The body
names the component and says it is down, without the driver's error (the probe needs no credential, and
errors carry host names and user names); the server logs the error once per change of state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from cargohold import __version__
from cargohold.server.state import RegistryState, state_of

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 5.0
"""Seconds one component may take to answer a health check before it counts as down."""

DOWN_MESSAGES = {
    "database": "the metadata database did not answer",
    "storage": "the blob store did not answer",
}


@dataclass
class HealthChecks:
    """The components ``/healthz`` checks, and what was last logged about each (to log changes, not probes)."""

    checks: dict[str, Callable[[], object]]
    timeout: float = CHECK_TIMEOUT
    _down: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, state: RegistryState) -> HealthChecks:
        return cls(
            {"database": lambda: state.metadata.repository_exists("healthz-probe"), "storage": state.blobs.check}
        )

    async def run(self, state: RegistryState) -> dict[str, dict[str, str]]:
        names = list(self.checks)
        results = await asyncio.gather(*(self._one(state, name) for name in names))
        return dict(zip(names, results, strict=True))

    async def _one(self, state: RegistryState, name: str) -> dict[str, str]:
        try:
            await asyncio.wait_for(state.run(self.checks[name]), self.timeout)
        except Exception as exc:  # any failure of a component is "down"; the detail goes to the log
            if name not in self._down:
                self._down.add(name)
                detail = f"no answer within {self.timeout:g} s" if isinstance(exc, TimeoutError) else repr(exc)
                log.error("health check: %s is down: %s", name, detail)
            return {"status": "down", "message": DOWN_MESSAGES.get(name, f"{name} did not answer")}
        if name in self._down:
            self._down.discard(name)
            log.warning("health check: %s is reachable again", name)
        return {"status": "ok"}


HEALTH_KEY = web.AppKey("cargohold_health", HealthChecks)


async def livez(request: web.Request) -> web.Response:
    """``GET /livez``: the process runs and its event loop answers. No I/O."""
    return web.json_response({"status": "alive", "version": __version__})


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: ``ok`` (200), ``degraded`` (200: storage low; pulls still work, uploads get 507) or
    ``unavailable`` (503: the database or the blob store is down), with each component's status."""
    state = state_of(request)
    checks = await request.app[HEALTH_KEY].run(state)
    body: dict[str, object] = {"status": "ok", "version": __version__, "checks": checks}
    down = [DOWN_MESSAGES.get(name, name) for name, result in checks.items() if result["status"] != "ok"]
    if down:
        body.update(status="unavailable", reasons=down)
        return web.json_response(body, status=503, headers={"Retry-After": "5"})
    if state.space is not None and (reason := await state.run(state.space.degraded_reason)) is not None:
        body.update(status="degraded", reasons=[reason])
    return web.json_response(body)


def install(app: web.Application, state: RegistryState) -> None:
    app[HEALTH_KEY] = HealthChecks.of(state)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
