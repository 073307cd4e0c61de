"""Operations on the server's host: ``db check|upgrade``, a database from a newer version, ``backup`` during
a push and ``restore`` into a fresh server, the last-admin guard, break-glass recovery, the first admin
token file, metrics tokens and the database-size gauge."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from cargohold.client.control import ControlClient
from cargohold.client.settings import Connection
from cargohold.images import pull_image, save_image
from cargohold.metadata.db import Database, script_heads
from cargohold.ops.backup import BackupError, take_backup
from cargohold.sample import write_sample_image
from servers import ServerProcess

"""The newest schema revision (the migration scripts' one head): the tests follow new migrations."""


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    return subprocess.run(
        [sys.executable, "-m", "cargohold", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**clean, "CARGOHOLD_RETRY_FOR": "0", **(env or {})},
        check=False,
    )


def _database_at(data_dir: Path, revision: str) -> str:
    """A database migrated exactly to ``revision`` (what an older Cargohold left behind)."""
    from alembic import command
    from alembic.config import Config

    from cargohold.metadata.db import MIGRATIONS_DIR

    data_dir.mkdir(parents=True)
    url = f"sqlite:///{data_dir / 'metadata.db'}"
    database = Database(url)
    with database.write_engine.connect() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()
    database.dispose()
    return url


def _head() -> str:
    """The newest migration (derived, so adding one does not edit this file)."""
    (head,) = script_heads() or set()
    return head


def test_db_check_and_upgrade(tmp_path: Path) -> None:
    head = _head()
    missing = cli("db", "check", "--data-dir", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "there is no Cargohold database" in missing.stderr
    assert not (tmp_path / "nothing").exists()

    data = tmp_path / "data"
    _database_at(data, "0008")
    behind = cli("db", "check", "--data-dir", str(data))
    assert behind.returncode == 1
    assert f"at schema revision 0008 and needs the migrations up to {head}: run cargohold db upgrade" in behind.stdout
    upgraded = cli("db", "upgrade", "--data-dir", str(data))
    assert upgraded.returncode == 0 and f"from schema revision 0008 to {head}" in upgraded.stdout, upgraded.stderr
    current = cli("db", "check", "--data-dir", str(data))
    assert current.returncode == 0 and f"up to date (schema revision {head})" in current.stdout
    again = cli("db", "upgrade", "--data-dir", str(data))
    assert again.returncode == 0 and "already up to date" in again.stdout


def test_a_database_from_a_newer_version_is_one_sentence(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _database_at(data, "head")
    with sqlite3.connect(data / "metadata.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '0042'")
        db.execute("INSERT INTO schema_info (key, value) VALUES ('revision:0042', '0.9.0')")
    for args in (
        ("serve", "--data-dir", str(data), "--port", "1"),
        ("db", "check", "--data-dir", str(data)),
        ("db", "upgrade", "--data-dir", str(data)),
    ):
        result = cli(*args)
        assert result.returncode == 1, result
        output = (result.stdout + result.stderr).strip()
        assert "Traceback" not in output, output
        assert "upgraded by a newer Cargohold (schema revision 0042)" in output, output
        assert "run Cargohold 0.9.0 or newer" in output, output


def _save(conn: Connection, tmp_path: Path, seed: int, layer_size: int = 64 << 10) -> tuple[str, str]:
    image = write_sample_image(tmp_path / f"img{seed}", layers=2, layer_size=layer_size, seed=seed, ref="latest")
    saved = save_image(conn, f"oci:{tmp_path / f'img{seed}'}")
    return saved.build_id, str(image.manifest.digest)


def test_backup_during_a_push_restores_into_a_server_that_serves_every_image(
    server: ServerProcess, tmp_path: Path
) -> None:
    with ControlClient(server.url, server.admin_token) as control:
        project = str(control.create_project("backup").id)
    conn = Connection(server.url, server.admin_token, "test", project)
    before = [_save(conn, tmp_path, seed) for seed in (1, 2, 3)]

    pushing_done = threading.Event()
    during: list[tuple[str, str]] = []

    def keep_pushing() -> None:
        seed = 10
        while not pushing_done.is_set():
            during.append(_save(conn, tmp_path, seed, layer_size=512 << 10))
            seed += 1

    pusher = threading.Thread(target=keep_pushing)
    pusher.start()
    try:
        while not during and pusher.is_alive():  # a push is under way (and more follow) while the backup runs
            pushing_done.wait(0.05)
        backup = cli("backup", str(tmp_path / "backup"), "--data-dir", str(server.data_dir))
    finally:
        pushing_done.set()
        pusher.join(timeout=120)
    assert backup.returncode == 0, backup.stderr
    assert "backup complete" in backup.stdout
    assert stat.S_IMODE((tmp_path / "backup").stat().st_mode) == 0o700
    marker = json.loads((tmp_path / "backup" / "cargohold-backup.json").read_text())
    assert marker["schema_revisions"] == [_head()]

    restored_dir = tmp_path / "restored"
    restore = cli("restore", str(tmp_path / "backup"), "--data-dir", str(restored_dir))
    assert restore.returncode == 0, restore.stderr
    refused = cli("restore", str(tmp_path / "backup"), "--data-dir", str(restored_dir))
    assert refused.returncode == 1 and "is not empty" in refused.stderr

    fresh = ServerProcess(data_dir=restored_dir, admin_token=server.admin_token).start()
    try:
        fresh_conn = Connection(fresh.url, fresh.admin_token, "test", project)
        with ControlClient(fresh.url, fresh.admin_token) as control:
            builds = {build.id: build for build in control.list_builds(project, limit=500).builds}
        for build_id, _digest in before:
            assert build_id in builds, "every image saved before the backup is in it"
        saved = [build_id for build_id, build in builds.items() if build.status == "saved"]
        assert len(saved) >= len(before)
        for build_id in saved:  # every image the snapshot has is complete: pulled and verified blob by blob
            out = tmp_path / f"pulled-{build_id}"
            pulled = pull_image(fresh_conn, build_id, output=f"oci:{out}")
            assert pulled.digest == builds[build_id].digest
        for build_id, digest in [*before, *during]:
            if build_id in saved:  # what the snapshot has is exactly what was pushed
                assert builds[build_id].digest == digest
    finally:
        fresh.stop()


def test_backup_leaves_out_blobs_gc_deleted_meanwhile_and_refuses_a_damaged_store(
    server: ServerProcess, tmp_path: Path
) -> None:
    import hashlib

    with server.client() as http:
        data = b"an orphan blob nothing references"
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        start = http.post("/v2/orphans/blobs/uploads/")
        assert http.put(start.headers["Location"], params={"digest": digest}, content=data).status_code == 201
    blob_file = server.data_dir / "blobs" / "sha256" / digest[7:9] / digest[7:]
    blob_file.unlink()  # what a collection deleting it right after the snapshot looks like
    summary = take_backup(server.data_dir, f"sqlite:///{server.data_dir / 'metadata.db'}", tmp_path / "b1")
    assert summary.dropped_blobs == 1
    with sqlite3.connect(tmp_path / "b1" / "metadata.db") as db:
        assert db.execute("SELECT count(*) FROM blobs WHERE digest = ?", (digest,)).fetchone() == (0,)

    with ControlClient(server.url, server.admin_token) as control:
        project = str(control.create_project("damaged").id)
    image = write_sample_image(tmp_path / "img", layers=1, layer_size=4096, seed=5, ref="latest")
    save_image(Connection(server.url, server.admin_token, "test", project), f"oci:{tmp_path / 'img'}")
    layer = str(image.layers[0].digest)
    (server.data_dir / "blobs" / "sha256" / layer[7:9] / layer[7:]).unlink()
    with pytest.raises(BackupError, match=f"blob {layer}, which a manifest references, is missing"):
        take_backup(server.data_dir, f"sqlite:///{server.data_dir / 'metadata.db'}", tmp_path / "b2")


def test_last_admin_guard_break_glass_and_first_admin_file(tmp_path: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", admin_token="", env={"CARGOHOLD_ADMIN_TOKEN": ""}).start()
    try:
        token_file = server.data_dir / "first-admin-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        first = token_file.read_text().strip()
        assert first.startswith("cha_") and first in server.log()
        with ControlClient(server.url, first) as control:
            first_id = control.whoami().credential_id
            with pytest.raises(Exception, match="is the last admin token") as refused:
                control.revoke_token(first_id)
            assert getattr(refused.value, "status", None) == 409
            created = control.create_token("admin", "second admin")
            second = {"token": created.token, "id": created.id}
        with ControlClient(server.url, second["token"]) as control:
            assert control.revoke_token(first_id).revoked
            with pytest.raises(Exception, match="is the last admin token"):
                control.revoke_token(second["id"])

        via_cli = cli("tokens", "revoke", second["id"], "--registry", server.url, "--token", second["token"])
        assert via_cli.returncode == 1 and "--force" in via_cli.stderr
        forced = cli("tokens", "revoke", second["id"], "--force", "--registry", server.url, "--token", second["token"])
        assert forced.returncode == 0, forced.stderr
        assert httpx.get(f"{server.url}/api/v1/whoami", auth=("x-token", second["token"])).status_code == 401

        # Locked out; whoever runs the server gets back in from its host, while it runs.
        output = tmp_path / "recovered"
        reset = cli("admin", "reset-token", "--data-dir", str(server.data_dir), "--output", str(output))
        assert reset.returncode == 0, reset.stderr
        assert stat.S_IMODE(output.stat().st_mode) == 0o600
        recovered = output.read_text().strip()
        assert recovered not in reset.stdout
        whoami = httpx.get(f"{server.url}/api/v1/whoami", auth=("x-token", recovered))
        assert whoami.status_code == 200 and whoami.json()["admin_permissions"] == ["admin"]
    finally:
        server.stop()


def test_metrics_token_kind_and_database_size_gauge(server: ServerProcess) -> None:
    created = cli(
        "tokens", "create", "--kind", "metrics", "--json", "--registry", server.url, "--token", server.admin_token
    )
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)
    assert token["kind"] == "admin" and token["admin_permissions"] == ["metrics"] and token["name"] == "metrics token"
    metrics = httpx.get(f"{server.url}/metrics", auth=("x-token", token["token"]))
    assert metrics.status_code == 200
    sizes = {
        line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.text.splitlines()
        if line.startswith("cargohold_database_size_bytes{")
    }
    assert sizes['file="database"'] == (server.data_dir / "metadata.db").stat().st_size > 0
    assert 'file="wal"' in sizes
    refused = httpx.post(f"{server.url}/api/v1/projects", json={"name": "x"}, auth=("x-token", token["token"]))
    assert refused.status_code == 403
    assert httpx.get(f"{server.url}/api/v1/projects", auth=("x-token", token["token"])).json() == {"projects": []}
    wrong = cli("tokens", "create", "--kind", "metrics", "--permissions", "admin", "--registry", server.url)
    assert wrong.returncode == 1 and "drop --permissions" in wrong.stderr


def test_signing_key_rotation_commands(server: ServerProcess) -> None:
    def kid_of_a_new_registry_token() -> str:
        import base64

        token = httpx.get(f"{server.url}/token", params={"service": "cargohold"}, auth=("x-token", server.admin_token))
        header = token.json()["token"].split(".")[0]
        return str(json.loads(base64.urlsafe_b64decode(header + "=="))["kid"])

    old = kid_of_a_new_registry_token()
    rotated = cli("admin", "rotate-signing-key", "--data-dir", str(server.data_dir))
    assert rotated.returncode == 0 and f"still verifying: {old}" in rotated.stdout, rotated.stderr
    new = rotated.stdout.split()[3]
    refused = cli("admin", "retire-signing-key", "--data-dir", str(server.data_dir), "--", new)
    assert refused.returncode == 1 and "is the current signing key" in refused.stderr, refused
    server.stop()
    server.start()
    assert kid_of_a_new_registry_token() == new, (rotated.stdout, server.log()[-3000:])
    retired = cli("admin", "retire-signing-key", "--data-dir", str(server.data_dir), "--", old)
    assert retired.returncode == 0 and f"retired signing key {old}" in retired.stdout, retired
    assert f"keys left: {new}" in retired.stdout, retired
