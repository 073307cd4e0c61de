"""``cargohold_database_size_bytes``: how big the metadata database is, for capacity alerts.

SQLite keeps the database in a file plus its write-ahead log; a WAL that keeps growing (a reader that never
lets a checkpoint finish) is exactly what an alert should catch, so the two are reported apart. Measured at
scrape time with two ``stat`` calls. For PostgreSQL the server's own exporter knows better; nothing is
reported.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class DatabaseSize(Collector):
    def __init__(self, database_file: Path) -> None:
        self.files = {"database": database_file, "wal": database_file.with_name(database_file.name + "-wal")}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "cargohold_database_size_bytes",
            "Size of the SQLite metadata database on disk: the database file and its write-ahead log.",
            labels=["file"],
        )
        for label, path in self.files.items():
            try:
                family.add_metric([label], os.stat(path).st_size)
            except FileNotFoundError:
                family.add_metric([label], 0)
        yield family


def install(app: web.Application) -> None:
    """Register the gauge with the application's metrics (after ``api_lifecycle.install``, which makes them)."""
    from cargohold.server.control.lifecycle import LIFECYCLE_KEY
    from cargohold.server.state import STATE_KEY

    lifecycle = app.get(LIFECYCLE_KEY)
    database_file = app[STATE_KEY].settings.database_file()
    if lifecycle is not None and database_file is not None:
        lifecycle.metrics.registry.register(DatabaseSize(database_file))
