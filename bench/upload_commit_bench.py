#!/usr/bin/env python3
"""What one chunked upload's final ``PUT`` costs the server: thread-pool hops, transactions, wall time.

Why this exists: finishing an upload (verify the digest, make the bytes durable, move them into the content
store, link them into the repository, forget the session) is the one request of a push where the blob store
and the metadata store meet. Every trip to the thread pool and every write transaction there is latency the
client waits for and, on SQLite, time the single write lock is held. This script runs the real application
in-process (aiohttp's test server, a temporary data dir), pushes ``--uploads`` blobs as POST + PATCH + PUT
and reports, for the final PUT only, the median wall time and exactly how many tasks went to the I/O thread
pool and how many read and write transactions were opened.

It imports ``create_app`` from wherever the server package keeps it, so the same script measures an older
checkout (``PYTHONPATH=<checkout>/src python bench/upload_commit_bench.py``). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from cargohold.config import ServerSettings
from cargohold.metadata.db import Database


def _server() -> tuple[Any, Any]:
    """``(create_app, OpenAccess)`` from the layout of the ``cargohold`` being imported (the new or the old)."""
    package = Path(importlib.import_module("cargohold").__file__ or "").parent
    if (package / "server" / "app.py").exists():
        app_module, access_module = "cargohold.server.app", "cargohold.server.auth.access"
    else:  # before the server moved into cargohold.server
        app_module, access_module = "cargohold.registry.app", "cargohold.registry.access"
    return importlib.import_module(app_module).create_app, importlib.import_module(access_module).OpenAccess


def _state_of(app: Any) -> Any:
    return next(value for key, value in app.items() if str(getattr(key, "_name", "")).endswith("cargohold_state"))


class Counters:
    def __init__(self) -> None:
        self.hops = 0
        self.reads = 0
        self.writes = 0
        self.active = False


def _instrument(state: Any, counters: Counters) -> None:
    executor = state.executor
    submit = executor.submit

    def counting_submit(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        if counters.active:
            counters.hops += 1
        return submit(fn, *args, **kwargs)

    executor.submit = counting_submit
    for kind in ("read", "write"):
        original = getattr(Database, kind)

        def wrapped(self: Database, *args: Any, _original: Any = original, _kind: str = kind, **kwargs: Any) -> Any:
            if counters.active:
                setattr(counters, _kind + "s", getattr(counters, _kind + "s") + 1)
            return _original(self, *args, **kwargs)

        setattr(Database, kind, wrapped)


@contextlib.contextmanager
def _measuring(counters: Counters) -> Iterator[None]:
    counters.active = True
    try:
        yield
    finally:
        counters.active = False


async def run(uploads: int, size: int, fsync: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="cargohold-upload-bench-") as data:
        settings = ServerSettings(data_dir=Path(data), fsync=fsync, gc_interval=timedelta(0), access_log=False)
        create_app, open_access = _server()
        app = create_app(settings, open_access())
        counters = Counters()
        _instrument(_state_of(app), counters)
        async with TestClient(TestServer(app)) as client:
            times: list[float] = []
            per_put: list[tuple[int, int, int]] = []
            for _ in range(uploads):
                body = os.urandom(size)
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
                started = await client.post("/v2/bench/upload/blobs/uploads/")
                assert started.status == 202, await started.text()
                location = started.headers["Location"]
                patched = await client.patch(location, data=body, headers={"Content-Type": "application/octet-stream"})
                assert patched.status == 202, await patched.text()
                before = (counters.hops, counters.reads, counters.writes)
                began = time.perf_counter()
                with _measuring(counters):
                    finished = await client.put(f"{location}?digest={digest}")
                    await finished.read()
                times.append(time.perf_counter() - began)
                assert finished.status == 201, await finished.text()
                per_put.append((counters.hops - before[0], counters.reads - before[1], counters.writes - before[2]))
        hops, reads, writes = per_put[-1]
        print(f"final PUT of a chunked upload ({size} bytes, fsync={'on' if fsync else 'off'}, {uploads} uploads):")
        print(f"  thread-pool hops: {hops}   read transactions: {reads}   write transactions: {writes}")
        print(f"  wall time: median {statistics.median(times) * 1000:.2f} ms, best {min(times) * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--size", type=int, default=64 * 1024, help="bytes per blob")
    parser.add_argument("--no-fsync", action="store_true", help="measure without fsync (the disk dominates it)")
    args = parser.parse_args()
    asyncio.run(run(args.uploads, args.size, not args.no_fsync))


if __name__ == "__main__":
    main()
