"""``/healthz`` reports the database and the blob store (503 when one is down); ``/livez`` stays cheap.

A replica that lost its database or its storage must leave the load balancer's rotation while the process
keeps running (so ``/livez`` stays 200 and nothing restarts it for an outage it cannot fix).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from pgcluster import PostgresCluster
from servers import InProcessServer


@contextlib.contextmanager
def in_process(tmp_path: Path, **settings: object) -> Iterator[InProcessServer]:
    server = InProcessServer(data_dir=tmp_path / "data", settings=dict(settings)).start()
    try:
        yield server
    finally:
        server.stop()


def health(server: InProcessServer) -> tuple[int, dict[str, object]]:
    response = httpx.get(f"{server.url}/healthz", timeout=15)
    return response.status_code, response.json()


def test_healthy_server_reports_each_component(tmp_path: Path) -> None:
    with in_process(tmp_path) as server:
        status, body = health(server)
        assert status == 200, body
        assert body["status"] == "ok"
        assert body["checks"] == {"database": {"status": "ok"}, "storage": {"status": "ok"}}
        live = httpx.get(f"{server.url}/livez", timeout=5)
        assert live.status_code == 200 and live.json()["status"] == "alive"


def test_lost_blob_storage_takes_the_replica_out_of_rotation(tmp_path: Path) -> None:
    with in_process(tmp_path) as server:
        blobs = server.data_dir / "blobs"
        blobs.rename(server.data_dir / "blobs-unmounted")  # the mount went away
        try:
            for _ in range(2):
                status, body = health(server)
                assert status == 503, body
                assert body["status"] == "unavailable"
                assert body["checks"] == {
                    "database": {"status": "ok"},
                    "storage": {"status": "down", "message": "the blob store did not answer"},
                }
                assert str(server.data_dir) not in str(body)  # no paths or driver errors to anonymous callers
            assert httpx.get(f"{server.url}/livez", timeout=5).status_code == 200
        finally:
            (server.data_dir / "blobs-unmounted").rename(blobs)
        status, body = health(server)
        assert status == 200 and body["status"] == "ok", body
        log = server.log()
        assert log.count("health check: storage is down") == 1, log  # once per outage, not per probe
        assert "health check: storage is reachable again" in log


def test_unreachable_database_answers_503(tmp_path: Path, pg_cluster: PostgresCluster, pg_migrated_url: str) -> None:
    name = make_url(pg_migrated_url).database
    with in_process(tmp_path, database_url=pg_migrated_url) as server:
        assert health(server)[0] == 200
        pg_cluster.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        try:
            pg_cluster.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            status, body = health(server)
            assert status == 503, body
            assert body["checks"] == {
                "database": {"status": "down", "message": "the metadata database did not answer"},
                "storage": {"status": "ok"},
            }
            assert "127.0.0.1" not in str(body)
        finally:
            pg_cluster.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        status, body = health(server)
        assert status == 200, body
