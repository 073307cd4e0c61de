"""Self-tests of the private PostgreSQL cluster fixture (tests/pgcluster.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

import pgcluster
from pgcluster import PostgresCluster, running_cluster
from tooling import tool_missing


def _scalar(url: str, statement: str) -> object:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(statement)).scalar()
    finally:
        engine.dispose()


@pytest.mark.parametrize("round_", [1, 2])
def test_each_test_gets_its_own_empty_database(pg_url: str, round_: int) -> None:
    """Run twice: the second run would find the first run's table if databases were shared."""
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as connection:
            tables = connection.execute(
                sa.text("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            ).scalar()
            assert tables == 0
            connection.execute(sa.text("CREATE TABLE marker (round integer)"))
            connection.execute(sa.text("INSERT INTO marker VALUES (:round)"), {"round": round_})
    finally:
        engine.dispose()


@pytest.mark.parametrize("round_", [1, 2])
def test_migrated_databases_are_fresh_copies_at_the_newest_revision(pg_migrated_url: str, round_: int) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from cargohold.metadata.db import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert _scalar(pg_migrated_url, "SELECT version_num FROM alembic_version") == (
        ScriptDirectory.from_config(config).get_current_head()
    )
    assert _scalar(pg_migrated_url, "SELECT count(*) FROM repositories") == 0
    engine = sa.create_engine(pg_migrated_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("INSERT INTO repositories (name, created_at) VALUES ('left-behind', now())"))
    finally:
        engine.dispose()


def test_cluster_is_private_fast_and_not_root(pg_cluster: PostgresCluster, pg_url: str) -> None:
    settings = {
        name: _scalar(pg_url, f"SHOW {name}")
        for name in ("fsync", "synchronous_commit", "full_page_writes", "listen_addresses")
    }
    assert settings == {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "listen_addresses": "127.0.0.1",
    }
    assert _scalar(pg_url, "SELECT inet_server_addr()::text") == "127.0.0.1/32"
    postmaster_pid = int((pg_cluster.data_dir / "postmaster.pid").read_text().split()[0])
    assert os.stat(f"/proc/{postmaster_pid}").st_uid != 0, "PostgreSQL must not run as root"
    assert Path(str(_scalar(pg_url, "SHOW unix_socket_directories"))) == pg_cluster.socket_dir


def test_text_sorts_like_a_production_cluster_not_bytewise(pg_url: str) -> None:
    """ICU en-US, as clusters created with a language locale: "a" before "B"; byte order needs COLLATE "C"."""
    assert _scalar(pg_url, "SELECT 'a' < 'B'") is True
    assert _scalar(pg_url, "SELECT 'a' < ('B' COLLATE \"C\")") is False


def test_tcp_logins_need_the_password(pg_cluster: PostgresCluster, pg_url: str) -> None:
    wrong = pg_url.replace(pg_cluster.password, "not-the-password")
    with pytest.raises(OperationalError, match="password authentication failed"):
        _scalar(wrong, "SELECT 1")


def test_drop_database_ends_connections_a_test_left_open(pg_cluster: PostgresCluster) -> None:
    name = pg_cluster.create_database()
    engine = sa.create_engine(pg_cluster.url(name))
    connection = engine.connect()
    connection.execute(sa.text("SELECT 1"))
    try:
        pg_cluster.drop_database(name)
        assert pg_cluster.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)) == [(0,)]
    finally:
        connection.invalidate()
        engine.dispose()


def test_cluster_is_stopped_and_removed_when_the_body_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), running_cluster() as cluster:
        assert cluster.process is not None
        raise RuntimeError("boom")
    assert cluster.process.poll() is not None, "the postmaster outlived its fixture"
    assert not Path(f"/proc/{cluster.process.pid}").exists()
    assert not cluster.base_dir.exists()


@pytest.mark.parametrize(("required", "outcome"), [("1", pytest.fail.Exception), ("0", pytest.skip.Exception)])
def test_missing_postgres_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, required: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CARGOHOLD_REQUIRE_TOOLS", required)
    monkeypatch.setattr(pgcluster, "postgres_bin_dir", lambda: None)
    with pytest.raises(outcome, match="apt-get install postgresql"), running_cluster():
        pass


def test_bin_dir_is_found_off_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Debian keeps initdb/pg_ctl in /usr/lib/postgresql/<major>/bin; an override must name all three tools."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(pgcluster.BIN_ENV, raising=False)
    found = pgcluster.postgres_bin_dir()
    if found is None:
        tool_missing("needs the PostgreSQL server (Debian: apt-get install postgresql)")
    assert found.parts[:4] == ("/", "usr", "lib", "postgresql")
    (tmp_path / "pg_ctl").touch(mode=0o755)  # incomplete: no initdb, no postgres
    monkeypatch.setenv(pgcluster.BIN_ENV, str(tmp_path))
    assert pgcluster.postgres_bin_dir() == found


def test_the_backend_switch_puts_servers_on_postgresql_and_keeps_their_data_across_restarts(
    pg_cluster: PostgresCluster, pg_migrated_template: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What ``CARGOHOLD_TEST_DATABASE=postgresql`` does to a test server: its metadata lives in a database of the
    private cluster (not the data dir's SQLite file), and the same data dir finds the same database again."""
    from servers import InProcessServer

    monkeypatch.setattr(pgcluster, "_server_databases", pgcluster.ServerDatabases(pg_cluster, pg_migrated_template))
    server = InProcessServer(data_dir=tmp_path / "data")
    server.start()
    try:
        assert server.state.metadata.db.url.startswith("postgresql+psycopg://")
        with server.client() as http:
            assert http.post("/api/v1/projects", json={"name": "on-pg"}).status_code == 201
        server.stop()
        server.start()
        with server.client() as http:
            assert "on-pg" in http.get("/api/v1/projects").text
    finally:
        server.stop()
    assert not (tmp_path / "data" / "metadata.db").exists()
