"""Prometheus metrics at ``/metrics``: requests, bytes served and received, builds saved/evicted, tags and
manifests retention removed, GC, stored bytes.

Each application gets its own :class:`~prometheus_client.CollectorRegistry` (never the process-global
one), so several apps in one test process do not collide. Request metrics are labelled by the *route
name* (the OCI route the dispatcher recorded in ``request[ROUTE_KEY]``, or the aiohttp route template such
as ``/api/v1/builds/{build}``), never the raw path: repository names and digests in label values would
create a time series per image. Stored bytes per project are read from the database at scrape time, so
every server process reports the same, current numbers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cargohold.server.http.request_keys import ROUTE_KEY

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UPLOAD_ROUTES = frozenset({"upload", "uploads"})


class _StoredBytes(Collector):
    def __init__(self, source: Callable[[], dict[str, int]]) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "cargohold_project_stored_bytes",
            "Bytes each project stores (each referenced blob counted once per project, plus manifests).",
            labels=["project"],
        )
        for project, stored in sorted(self.source().items()):
            family.add_metric([project], stored)
        yield family


class Metrics:
    def __init__(self, stored_bytes: Callable[[], dict[str, int]] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cargohold_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "cargohold_http_request_duration_seconds",
            "Time to produce the response (for blob GETs: until the file starts streaming).",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.bytes_served = Counter(
            "cargohold_blob_bytes_served", "Blob bytes sent to clients (as announced in Content-Length).", registry=r
        )
        self.bytes_received = Counter(
            "cargohold_blob_bytes_received",
            "Blob upload bytes received from clients (what arrived, whether or not the upload completed).",
            registry=r,
        )
        self.builds_saved = Counter("cargohold_builds_saved", "Builds marked saved.", registry=r)
        self.builds_evicted = Counter("cargohold_builds_evicted", "Builds evicted, by rule.", ["rule"], registry=r)
        self.tags_evicted = Counter(
            "cargohold_tags_evicted",
            "Tags pushed outside builds that retention removed, by rule.",
            ["rule"],
            registry=r,
        )
        self.manifests_collected = Counter(
            "cargohold_manifests_collected", "Untagged manifests nothing kept, removed by retention.", registry=r
        )
        self.gc_runs = Counter("cargohold_gc_runs", "Garbage-collection passes, by result.", ["result"], registry=r)
        self.gc_freed_bytes = Counter("cargohold_gc_freed_bytes", "Bytes deleted from storage by GC.", registry=r)
        self.gc_freed_blobs = Counter("cargohold_gc_freed_blobs", "Blobs (and orphan files) deleted by GC.", registry=r)
        self.gc_links_removed = Counter(
            "cargohold_gc_links_removed", "Repository blob links removed by GC.", registry=r
        )
        self.gc_duration = Histogram(
            "cargohold_gc_duration_seconds",
            "Duration of GC passes.",
            buckets=(0.1, 1, 5, 15, 30, 60, 300, 900),
            registry=r,
        )
        self.server_pushes = Counter(
            "cargohold_server_pushes",
            "Blobs this server pushed to other registries, by result.",
            ["result"],
            registry=r,
        )
        self.server_push_bytes = Counter(
            "cargohold_server_push_bytes", "Blob bytes this server pushed to other registries.", registry=r
        )
        if stored_bytes is not None:
            r.register(_StoredBytes(stored_bytes))

    def render(self) -> bytes:
        """The exposition text (blocking: stored bytes come from the database)."""
        return generate_latest(self.registry)

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        metrics = self

        @web.middleware
        async def observe(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                route = route_name(request)
                metrics.requests.labels(route, request.method, str(status)).inc()
                if route in UPLOAD_ROUTES and request.method in ("POST", "PATCH", "PUT"):
                    metrics.bytes_received.inc(request.content.total_bytes)
                metrics.latency.labels(route, request.method).observe(time.perf_counter() - started)

        return observe

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        if request.get(ROUTE_KEY) == "blob" and request.method == "GET" and response.status in (200, 206):
            self.bytes_served.inc(response.content_length or 0)


def route_name(request: web.Request) -> str:
    """A bounded label: the OCI route name, else the route template, else ``unmatched``."""
    name = request.get(ROUTE_KEY)
    if isinstance(name, str):
        return name
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"
