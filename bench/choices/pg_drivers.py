"""Which PostgreSQL driver under SQLAlchemy 2: psycopg 3 vs psycopg2 vs pg8000 vs asyncpg, measured.

A private cluster (tests/pgcluster.py) runs for the whole benchmark; each driver runs in a fresh child process
against its own database (Cargohold's real schema, created by ``Database(url).migrate()`` for the sync drivers,
by ``metadata.create_all`` for asyncpg, which SQLAlchemy only drives through its asyncio API). The shapes are
those of the metadata layer's hot paths, each in its own transaction as ``Database.read()``/``write()`` do:

* ``get``: a single-row select by primary key (the blob look-up of every blob GET/HEAD);
* ``insert``: one small row inserted and committed (an upload commit, an audit event);
* ``upsert``: 1,000 rows ``INSERT ... ON CONFLICT DO UPDATE`` in one transaction (links, usage, tags);
* ``get x8``: the primary-key select from 8 threads at once (the server's thread pool; asyncpg: 8 tasks).

Reported: operations per second (wall) and client CPU per operation (``getrusage`` of the driver's process;
the server is another process on the same 2 cores). It is a benchmark, not a test.

    python bench/choices/pg_drivers.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from _common import cpu_seconds, footprint, print_table

DRIVERS = {
    "psycopg": ("psycopg", "psycopg-binary"),
    "psycopg2": ("psycopg2-binary",),
    "pg8000": ("pg8000",),
    "asyncpg": ("asyncpg",),
}
"""SQLAlchemy driver name -> distributions it installs (psycopg's C speed-ups come from psycopg-binary)."""
ROWS = 10_000
THREADS = 8


def _digest(number: int) -> str:
    return f"sha256:{number:064x}"


def _timed(seconds: float, operation: Callable[[int], None]) -> tuple[int, float, float]:
    """Run ``operation(i)`` for about ``seconds``; returns (count, wall, cpu)."""
    count, wall, cpu = 0, time.perf_counter(), cpu_seconds()
    deadline = wall + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            operation(count)
            count += 1
    return count, time.perf_counter() - wall, cpu_seconds() - cpu


def run_sync(url: str, seconds: float) -> dict[str, Any]:
    started = time.perf_counter()
    import sqlalchemy as sa
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    from cargohold.metadata.db import Database
    from cargohold.metadata.models import Blob

    engine = sa.create_engine(url, pool_size=THREADS, max_overflow=0)
    with engine.connect():
        pass
    connect_s = time.perf_counter() - started
    Database(url).migrate()
    table = Blob.__table__
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            sa.insert(table), [{"digest": _digest(i), "size": i, "created_at": now} for i in range(ROWS)]
        )

    get = sa.select(table.c.size).where(table.c.digest == sa.bindparam("digest"))

    def select_one(number: int) -> None:
        with engine.begin() as connection:
            if connection.execute(get, {"digest": _digest(number % ROWS)}).scalar_one() != number % ROWS:
                raise AssertionError("wrong row")

    def insert_one(number: int) -> None:
        with engine.begin() as connection:
            connection.execute(sa.insert(table), {"digest": _digest(ROWS + number), "size": 1, "created_at": now})

    upsert = pg_insert(table)
    upsert = upsert.on_conflict_do_update(index_elements=["digest"], set_={"size": upsert.excluded.size})

    def upsert_thousand(number: int) -> None:
        base = (number * 500) % ROWS  # half the batch updates existing rows, half inserts new ones
        rows = [{"digest": _digest(base + i), "size": base + i, "created_at": now} for i in range(1000)]
        with engine.begin() as connection:
            connection.execute(upsert, rows)

    results = {
        "get": _timed(seconds, select_one),
        "insert": _timed(seconds, insert_one),
        "upsert": _timed(seconds, upsert_thousand),
    }
    with ThreadPoolExecutor(THREADS) as pool:

        def parallel(number: int) -> None:
            list(pool.map(select_one, range(number * THREADS, (number + 1) * THREADS)))

        count, wall, cpu = _timed(seconds, parallel)
        results["get x8"] = (count * THREADS, wall, cpu)
    engine.dispose()
    return {"connect_s": connect_s, "results": results}


def run_asyncpg(url: str, seconds: float) -> dict[str, Any]:
    started = time.perf_counter()
    import sqlalchemy as sa
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.ext.asyncio import create_async_engine

    from cargohold.metadata.models import Base, Blob

    table = Blob.__table__
    now = datetime.now(UTC)
    get = sa.select(table.c.size).where(table.c.digest == sa.bindparam("digest"))
    upsert = pg_insert(table)
    upsert = upsert.on_conflict_do_update(index_elements=["digest"], set_={"size": upsert.excluded.size})

    async def timed(operation: Callable[[int], Any]) -> tuple[int, float, float]:
        count, wall, cpu = 0, time.perf_counter(), cpu_seconds()
        deadline = wall + seconds
        while time.perf_counter() < deadline:
            for _ in range(20):
                await operation(count)
                count += 1
        return count, time.perf_counter() - wall, cpu_seconds() - cpu

    async def work() -> dict[str, Any]:
        engine = create_async_engine(url, pool_size=THREADS, max_overflow=0)
        async with engine.begin() as connection:
            connect_s = time.perf_counter() - started
            await connection.run_sync(Base.metadata.create_all)
            rows = [{"digest": _digest(i), "size": i, "created_at": now} for i in range(ROWS)]
            await connection.execute(sa.insert(table), rows)

        async def select_one(number: int) -> None:
            async with engine.begin() as connection:
                value = (await connection.execute(get, {"digest": _digest(number % ROWS)})).scalar_one()
                if value != number % ROWS:
                    raise AssertionError("wrong row")

        async def insert_one(number: int) -> None:
            async with engine.begin() as connection:
                await connection.execute(
                    sa.insert(table), {"digest": _digest(ROWS + number), "size": 1, "created_at": now}
                )

        async def upsert_thousand(number: int) -> None:
            base = (number * 500) % ROWS
            rows = [{"digest": _digest(base + i), "size": base + i, "created_at": now} for i in range(1000)]
            async with engine.begin() as connection:
                await connection.execute(upsert, rows)

        async def parallel(number: int) -> None:
            await asyncio.gather(*(select_one(i) for i in range(number * THREADS, (number + 1) * THREADS)))

        results = {
            "get": await timed(select_one),
            "insert": await timed(insert_one),
            "upsert": await timed(upsert_thousand),
        }
        count, wall, cpu = await timed(parallel)
        results["get x8"] = (count * THREADS, wall, cpu)
        await engine.dispose()
        return {"connect_s": connect_s, "results": results}

    return asyncio.run(work())


def worker(driver: str, url: str, seconds: float) -> None:
    started = time.perf_counter()
    __import__(driver)
    import_s = time.perf_counter() - started
    result = run_asyncpg(url, seconds) if driver == "asyncpg" else run_sync(url, seconds)
    print(json.dumps({"import_s": import_s, **result}))


def orchestrate(args: argparse.Namespace) -> int:
    from pgcluster import running_cluster

    measured: dict[str, dict[str, Any]] = {}
    failed = False
    with running_cluster() as cluster:
        print(f"cluster: initdb {cluster.timings['initdb']:.2f} s, start {cluster.timings['start']:.2f} s")
        # Drivers alternate round by round and each shape keeps its best round: load from other processes on
        # a shared machine then hurts every driver alike instead of whichever ran at the wrong moment.
        for driver in [driver for _ in range(args.rounds) for driver in args.drivers]:
            database = cluster.create_database()
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", driver, cluster.url(database, driver), str(args.seconds)],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
                env={**os.environ},
            )
            cluster.drop_database(database)
            if proc.returncode != 0:
                print(f"{driver} FAILED:\n{proc.stdout}\n{proc.stderr[-3000:]}")
                failed = True
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            best = measured.setdefault(driver, result)
            for shape, (count, wall, cpu) in result["results"].items():
                if count / wall > best["results"][shape][0] / best["results"][shape][1]:
                    best["results"][shape] = [count, wall, cpu]
    rows = []
    for driver, result in measured.items():
        row: list[object] = [driver]
        for shape in ("get", "insert", "upsert", "get x8"):
            count, wall, cpu = result["results"][shape]
            unit = 1000 if shape == "upsert" else 1
            row.append(f"{count / wall:,.0f}" if shape != "upsert" else f"{count / wall:,.1f}")
            row.append(f"{cpu / count * 1e6 / unit:,.0f}")
        fp = footprint(*DRIVERS[driver])
        row += [f"{result['import_s'] * 1e3:.0f}", f"{fp.version}", fp.licence, f"{fp.added_mib:.1f}"]
        rows.append(row)
    print(
        f"\nbest of {args.rounds} rounds of ~{args.seconds:g} s per shape; CPU is the driver process's only "
        "(the server is another process on the same cores)"
    )
    print_table(
        [
            "driver",
            "get/s",
            "CPU µs/get",
            "insert/s",
            "CPU µs/insert",
            "1000-row upserts/s",
            "CPU µs/row",
            "get x8 threads/s",
            "CPU µs/get",
            "import ms",
            "version",
            "licence",
            "MiB added",
        ],
        rows,
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(measured, out, indent=2)
    return 1 if failed else 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per query shape and driver")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all drivers (best round counts)")
    parser.add_argument("--drivers", type=lambda text: text.split(","), default=list(DRIVERS))
    parser.add_argument("--json", help="also write the raw measurements here")
    return orchestrate(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
