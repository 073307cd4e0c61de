"""``/healthz`` reports whether the metadata database answers: a replica whose PostgreSQL is gone says so."""

from __future__ import annotations

from pathlib import Path

import httpx

from pgcluster import PostgresCluster
from servers import InProcessServer


def test_healthz_answers_503_naming_the_database_when_it_is_unreachable(
    pg_cluster: PostgresCluster, pg_migrated_template: str, tmp_path: Path
) -> None:
    name = pg_cluster.create_database(template=pg_migrated_template)
    server = InProcessServer(data_dir=tmp_path / "data", settings={"database_url": pg_cluster.url(name)})
    server.start()
    try:
        healthy = httpx.get(f"{server.url}/healthz")
        assert healthy.status_code == 200 and healthy.json()["status"] == "ok"
        pg_cluster.drop_database(name)  # ends the server's connections too
        broken = httpx.get(f"{server.url}/healthz", timeout=30)
        assert broken.status_code == 503
        body = broken.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["database"]["status"] == "down" and body["checks"]["storage"]["status"] == "ok"
        assert body["reasons"] == ["the metadata database did not answer"]
        assert name not in broken.text, "the anonymous probe names no database (the log does)"
        assert "Traceback" not in server.log()
    finally:
        server.stop()
        pg_cluster.drop_database(name)
