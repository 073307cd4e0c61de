"""What finishing a chunked upload costs the server, pinned: the domain layer's upload session commits in one
trip to the thread pool and one write transaction (link the blob, forget the session, move the bytes in).

Before the domain layer the handler tied the three stores together itself: seven trips and three
transactions for the same PUT (``bench/upload_commit_bench.py`` measures both). Runs the real application
in-process (aiohttp's test server): nothing here needs a subprocess.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cargohold.config import ServerSettings
from cargohold.metadata.db import Database
from cargohold.server.app import create_app
from cargohold.server.auth.access import OpenAccess
from cargohold.server.state import STATE_KEY


class Counts:
    def __init__(self) -> None:
        self.hops = self.reads = self.writes = 0
        self.on = False


@contextmanager
def counting(monkeypatch: pytest.MonkeyPatch, executor: Any) -> Iterator[Counts]:
    counts = Counts()
    submit = executor.submit

    def counted_submit(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        counts.hops += counts.on
        return submit(fn, *args, **kwargs)

    monkeypatch.setattr(executor, "submit", counted_submit)
    for kind in ("read", "write"):
        original = getattr(Database, kind)

        def wrapped(self: Database, *, _original: Any = original, _kind: str = kind) -> Any:
            if counts.on:
                setattr(counts, _kind + "s", getattr(counts, _kind + "s") + 1)
            return _original(self)

        monkeypatch.setattr(Database, kind, wrapped)
    yield counts


async def test_a_chunked_uploads_final_put_is_one_commit_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ServerSettings(data_dir=tmp_path / "data", gc_interval=timedelta(0), access_log=False)
    app = create_app(settings, OpenAccess())
    state = app[STATE_KEY]
    body = os.urandom(300_000)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    async with TestClient(TestServer(app)) as client:
        with counting(monkeypatch, state.executor) as counts:
            started = await client.post("/v2/p/app/blobs/uploads/")
            assert started.status == 202
            location = started.headers["Location"]
            patched = await client.patch(location, data=body[:200_000])
            assert patched.status == 202 and patched.headers["Range"] == "0-199999"
            patched = await client.patch(
                location, data=body[200_000:], headers={"Content-Range": f"200000-{len(body) - 1}"}
            )
            assert patched.status == 202 and patched.headers["Range"] == f"0-{len(body) - 1}"
            counts.on = True
            finished = await client.put(f"{location}?digest={digest}")
            counts.on = False
        assert finished.status == 201, await finished.text()
        assert finished.headers["Docker-Content-Digest"] == digest
        # The session lookup (one read), then the commit: one trip, one write transaction.
        assert (counts.hops, counts.reads, counts.writes) == (2, 1, 1)
        fetched = await client.get(f"/v2/p/app/blobs/{digest}")
        assert fetched.status == 200 and await fetched.read() == body
        gone = await client.get(location)
        assert gone.status == 404 and (await gone.json())["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
        assert list(state.blobs.iter_uploads()) == [] and state.metadata.upload_ids() == set()


async def test_finished_and_cancelled_sessions_leave_no_per_session_state(tmp_path: Path) -> None:
    """Locks and running hashes are per session: a server taking millions of uploads must not keep them."""
    settings = ServerSettings(data_dir=tmp_path / "data", gc_interval=timedelta(0), access_log=False)
    app = create_app(settings, OpenAccess())
    uploads = app[STATE_KEY].uploads
    async with TestClient(TestServer(app)) as client:
        for n in range(3):
            body = f"monolithic {n}".encode()
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            assert (await client.post(f"/v2/p/app/blobs/uploads/?digest={digest}", data=body)).status == 201
        started = await client.post("/v2/p/app/blobs/uploads/")
        assert (await client.patch(started.headers["Location"], data=b"chunk")).status == 202
        assert (await client.delete(started.headers["Location"])).status == 204
        bogus = "/v2/p/app/blobs/uploads/" + "0" * 32
        assert (await client.patch(bogus, data=b"x")).status == 404
    assert uploads._locks == {} and uploads._progress == {}
