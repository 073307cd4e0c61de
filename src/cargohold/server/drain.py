"""Graceful shutdown: on SIGTERM or SIGINT the server drains, then exits within ``--shutdown-timeout``.

Why: a registry gets restarted for upgrades, config changes and host reboots, and CI jobs pushing or
pulling at that moment should not fail. The client rides out the restart (its retry budget, see
:mod:`cargohold.client.retry`); the server's part is to lose nothing, finish what it can, and be gone
quickly so that the next process can start.

What happens, in order (:func:`drain_and_stop`):

1. **Draining begins.** ``/healthz`` answers ``503 {"status": "draining"}``, so a load balancer stops sending
   traffic here; every request that arrives from now on (on a connection opened before) is answered
   ``503 UNAVAILABLE`` with ``Retry-After: 1`` and ``Connection: close`` without doing any work, which a
   client may repeat whatever the request. Housekeeping stops at a safe point: the schedule starts no new
   pass, and a running garbage-collection pass stops after its current batch (each batch is one
   transaction) and releases its lease.
2. **No new connections**: the listening socket closes, so connecting is refused.
3. **Uploads are cut at a resumable point.** A blob body being received is cut off (its connection
   closed) at once: every byte written so far is in the upload session on disk, whose size is the offset
   the next server reports (``GET`` on the session, ``Range``), so the client sends only the rest. An
   upload is never committed half-way: the commit (digest check, rename, link) is not interruptible.
4. **Other requests already received run to completion** (a manifest PUT, a blob GET, a control-API call,
   a server-side push), until the deadline less a short grace period.
5. **aiohttp's shutdown**: idle connections close, whatever still runs is cancelled, and the application's
   cleanup runs (thread pools, database).
6. A **watchdog** ends the process at the deadline if anything still holds it (a thread blocked on a
   network call): everything the server stores is crash-safe, so that is a loss of time, never of data.

A second signal during the drain exits at once. (A worker of ``--workers N`` ignores a repeat within a
second of the first: a service manager that signals the whole process group and the supervisor forwarding
the same signal are one request to stop, see :mod:`cargohold.server.workers`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager

from aiohttp import web

from cargohold import __version__
from cargohold.server.http.errors import RegistryError

log = logging.getLogger(__name__)

DRAIN_RETRY_AFTER = "1"
"""``Retry-After`` on answers given while draining: the next server is usually up within seconds."""


class Drain:
    """The drain state of one server process: whether it is draining, what is in flight, what to stop."""

    def __init__(self) -> None:
        self.started_at: float | None = None
        self._inflight: set[asyncio.Task[object]] = set()
        self._receiving: dict[int, web.BaseRequest] = {}
        """Requests whose upload body is being read, by ``id`` (requests are mappings: unhashable)."""
        self._on_drain: list[Callable[[], object]] = []

    @property
    def draining(self) -> bool:
        return self.started_at is not None

    def on_drain(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` when draining begins (housekeeping registers how to stop)."""
        self._on_drain.append(callback)

    def begin(self) -> None:
        """Start draining: refuse new requests, stop housekeeping, cut the upload bodies being received."""
        if self.started_at is not None:
            return
        self.started_at = time.monotonic()
        for callback in self._on_drain:
            try:
                callback()
            except Exception:
                log.exception("stopping %r for the drain failed", callback)
        for request in list(self._receiving.values()):
            _cut(request)
        if self._receiving:
            log.info("drain: cut %d upload(s) at a resumable point", len(self._receiving))

    @contextmanager
    def receiving(self, request: web.BaseRequest) -> Iterator[None]:
        """Around reading an upload body: cut when draining begins (see the module docstring, step 3)."""
        if self.draining:
            _cut(request)
        self._receiving[id(request)] = request
        try:
            yield
        finally:
            self._receiving.pop(id(request), None)

    async def wait_inflight(self, seconds: float) -> int:
        """Wait up to ``seconds`` for the requests admitted before the drain; how many still run."""
        pending = {task for task in self._inflight if not task.done()}
        if pending and seconds > 0:
            _done, pending = await asyncio.wait(pending, timeout=seconds)
        return len(pending)

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        drain = self

        @web.middleware
        async def drain_gate(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            if drain.draining:
                return draining_response(request)
            # aiohttp runs each request in a task of its own that ends once the response is sent, so
            # waiting for the task waits for the whole response (a blob GET's body included).
            task = asyncio.current_task()
            if task is not None:
                drain._inflight.add(task)
                task.add_done_callback(drain._inflight.discard)
            response = await handler(request)
            if drain.started_at is not None:  # draining began while the handler ran
                response.force_close()  # finished during the drain: no next request on this connection
            return response

        return drain_gate


def _cut(request: web.BaseRequest) -> None:
    """Close the connection under a request whose body is being read: the read fails at once, exactly as if
    the client had gone away (the upload code's tested path), and the bytes written so far stay staged."""
    transport = request.transport
    if transport is not None and not transport.is_closing():
        transport.close()


def draining_response(request: web.Request) -> web.Response:
    """The answer to a request that arrives while draining (503, ``Connection: close``)."""
    if request.path == "/healthz":
        response = web.json_response({"status": "draining", "version": __version__}, status=503)
        response.headers["Retry-After"] = DRAIN_RETRY_AFTER
    else:
        response = RegistryError(
            "UNAVAILABLE",
            "this server is shutting down (a restart or an upgrade); retry in a moment",
            status=503,
            headers={"Retry-After": DRAIN_RETRY_AFTER},
        ).response(head=request.method == "HEAD")
        if request.path.startswith("/v2"):
            response.headers["Docker-Distribution-API-Version"] = "registry/2.0"
    response.force_close()
    return response


DRAIN_KEY = web.AppKey("cargohold_drain", Drain)


@contextlib.asynccontextmanager
async def background_loop(app: web.Application, loop: Coroutine[object, object, None]) -> AsyncIterator[None]:
    """Run ``loop`` (a housekeeping ``while True``) for as long as the app runs: the drain cancels it at its
    next wait, so a pass in progress finishes and no new one starts; the app's cleanup waits for it to end."""
    task = asyncio.create_task(loop)
    app[DRAIN_KEY].on_drain(task.cancel)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextmanager
def receiving(request: web.BaseRequest) -> Iterator[None]:
    """:meth:`Drain.receiving` for the request's application (nothing to do in an app without one)."""
    drain = request.app.get(DRAIN_KEY) if isinstance(request, web.Request) else None
    if drain is None:
        yield
        return
    with drain.receiving(request):
        yield


async def serve(
    runner: web.AppRunner,
    sites: Callable[[web.AppRunner], list[web.BaseSite]],
    shutdown_timeout: float,
    *,
    on_started: Callable[[], None] | None = None,
    repeat_grace: float = 0.0,
) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop within ``shutdown_timeout`` seconds.

    ``on_started`` is called once the sites listen; a repeated signal within ``repeat_grace`` seconds of the
    first is taken as the same request to stop (a worker's), any later one exits at once.
    """
    await runner.setup()
    started = sites(runner)
    for site in started:
        await site.start()
    if on_started is not None:
        on_started()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    first_signal = 0.0

    def on_signal(signum: int) -> None:
        nonlocal first_signal
        name = signal.Signals(signum).name
        if stop.is_set():
            if time.monotonic() - first_signal < repeat_grace:
                return
            log.warning("second %s during the drain: exiting now", name)
            _hard_exit(1)
        first_signal = time.monotonic()
        log.info("%s received: draining (at most %.0f s)", name, shutdown_timeout)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)  # stays installed: a second signal exits at once
    await stop.wait()
    await drain_and_stop(runner, started, shutdown_timeout)


async def drain_and_stop(runner: web.AppRunner, sites: list[web.BaseSite], shutdown_timeout: float) -> None:
    """Steps 1-6 of the module docstring."""
    timeout = shutdown_timeout
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    _start_watchdog(timeout)
    drain = runner.app[DRAIN_KEY]
    drain.begin()
    for site in sites:
        await site.stop()
    # Leave aiohttp time to cancel what is left and to clean up before the watchdog's deadline.
    cancel_wait = min(1.0, timeout / 10)
    still_running = await drain.wait_inflight(deadline - 3 * cancel_wait - loop.time())
    if still_running:
        log.warning("drain: %d request(s) still running at the deadline; cutting them", still_running)
    await runner.cleanup()
    log.info("stopped %.1f s after the signal", timeout - (deadline - loop.time()))


def _start_watchdog(timeout: float) -> None:
    timer = threading.Timer(timeout, _watchdog_fired, args=(timeout,))
    timer.daemon = True
    timer.name = "cargohold-shutdown-watchdog"
    timer.start()


def _watchdog_fired(timeout: float) -> None:
    log.error("still running %.0f s after the signal (--shutdown-timeout): exiting now", timeout)
    _hard_exit(1)


def _hard_exit(code: int) -> None:
    """End the process now: no cleanup can be waited for (it is what is stuck). Stored data is crash-safe."""
    logging.shutdown()
    os._exit(code)
