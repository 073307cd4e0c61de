"""Commands run on the server's host: ``db check|upgrade``, ``backup``, ``restore``, ``admin reset-token``.

They work on the data directory (and database) a ``cargohold serve`` uses, found the same way: flags,
then ``CARGOHOLD_DATA_DIR`` / ``CARGOHOLD_DATABASE_URL``, then the ``--config`` file, then the default.
They need the server extra; importing this module does not (it registers the commands on every start-up).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from cargohold.cli.main import app
from cargohold.cli.serve import CONFIG_ENV, SERVER_PACKAGES

if TYPE_CHECKING:
    from cargohold.config import ServerSettings


def _server_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        (
            click.option(
                "--data-dir",
                envvar="CARGOHOLD_DATA_DIR",
                show_envvar=True,
                type=click.Path(file_okay=False),
                help="The server's data directory (default: as cargohold serve).",
            ),
            click.option(
                "--database-url",
                envvar="CARGOHOLD_DATABASE_URL",
                show_envvar=True,
                help="The server's database (default: SQLite in the data directory).",
            ),
            click.option(
                "--config",
                "config_file",
                envvar=CONFIG_ENV,
                show_envvar=True,
                type=click.Path(dir_okay=False),
                help="The server's TOML config file, for data_dir and database_url.",
            ),
        )
    ):
        command = option(command)
    return command


def _settings(data_dir: str | None, database_url: str | None, config_file: str | None) -> ServerSettings:
    from cargohold.cli.serve import file_kinds, serve
    from cargohold.config import ServerSettings, default_data_dir
    from cargohold.config.file import ConfigFileError, load_config_file

    from_file: dict[str, Any] = {}
    if config_file:
        try:
            from_file = load_config_file(config_file, file_kinds(serve))
        except ConfigFileError as exc:
            raise click.UsageError(str(exc)) from None
    directory = data_dir or from_file.get("data_dir")
    return ServerSettings(
        data_dir=Path(directory) if directory else default_data_dir(),
        database_url=database_url or from_file.get("database_url"),
    )


def _require_database(settings: ServerSettings) -> str:
    url = settings.resolved_database_url()
    path = settings.database_file()
    if path is not None and not path.is_file():
        raise click.ClickException(
            f"there is no Cargohold database at {path}; pass the server's --data-dir (or --database-url, --config)"
        )
    return url


def _server_extra() -> Any:
    """Turn a missing server package into one sentence (these commands run where the server is installed)."""

    class Guard:
        def __enter__(self) -> None:
            return None

        def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> Literal[False]:
            if isinstance(exc, ModuleNotFoundError) and (exc.name or "").partition(".")[0] in SERVER_PACKAGES:
                raise click.ClickException(
                    f"this command needs the server's dependencies ({exc.name} is missing); install them with "
                    "pip install 'cargohold[server]'"
                ) from None
            return False

    return Guard()


@app.command()
@click.argument("directory", type=click.Path(file_okay=False))
@_server_options
def backup(directory: str, data_dir: str | None, database_url: str | None, config_file: str | None) -> None:
    """Copy the server's database and blobs to DIRECTORY (new or empty), consistently, while it runs.

    SQLite only; for PostgreSQL use pg_dump (docs/operations.md).
    """
    with _server_extra():
        from cargohold.ops.backup import BackupError, take_backup

        settings = _settings(data_dir, database_url, config_file)
        url = _require_database(settings)
        try:
            summary = take_backup(settings.data_dir, url, Path(directory), progress=click.echo)
        except BackupError as exc:
            raise click.ClickException(str(exc)) from None
    dropped = f"; {summary.dropped_blobs} blob(s) deleted by garbage collection meanwhile were left out" * bool(
        summary.dropped_blobs
    )
    click.echo(f"backup complete: {summary.directory} ({summary.blobs} blobs, {summary.blob_bytes} bytes){dropped}")


@app.command()
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@_server_options
def restore(directory: str, data_dir: str | None, database_url: str | None, config_file: str | None) -> None:
    """Restore the backup in DIRECTORY into a new, empty data directory; then start the server on it."""
    with _server_extra():
        from cargohold.ops.backup import BackupError, restore_backup

        settings = _settings(data_dir, database_url, config_file)
        if settings.database_url is not None and settings.database_file() != settings.data_dir / "metadata.db":
            raise click.ClickException(
                "restore writes the SQLite database into the data directory; drop --database-url "
                "(a PostgreSQL database is restored with pg_restore)"
            )
        try:
            summary = restore_backup(Path(directory), settings.data_dir, progress=click.echo)
        except BackupError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"restore complete: start the server with --data-dir {summary.directory}")


@app.group()
def db() -> None:
    """The metadata database's schema: check it, or apply migrations ahead of a server start."""


@db.command("check")
@_server_options
def db_check(data_dir: str | None, database_url: str | None, config_file: str | None) -> None:
    """Say whether the schema is current; exit 1 if it needs an upgrade or is newer than this Cargohold."""
    with _server_extra():
        from cargohold.ops.dbcommands import check, describe

        url = _require_database(_settings(data_dir, database_url, config_file))
        status = check(url)
        click.echo(describe(status, url))
    if not status.up_to_date:
        raise click.exceptions.Exit(1)


@db.command("upgrade")
@_server_options
def db_upgrade(data_dir: str | None, database_url: str | None, config_file: str | None) -> None:
    """Apply this Cargohold's schema migrations (a server start does the same); back up first."""
    with _server_extra():
        from cargohold.metadata.schema_version import SchemaTooNew
        from cargohold.ops.dbcommands import upgrade

        url = _require_database(_settings(data_dir, database_url, config_file))
        try:
            before, after = upgrade(url)
        except SchemaTooNew as exc:
            raise click.ClickException(str(exc)) from None
    heads = ", ".join(sorted(after.current))
    if before.up_to_date:
        click.echo(f"the database was already up to date (schema revision {heads})")
    else:
        was = ", ".join(sorted(before.current)) or "empty"
        click.echo(f"upgraded the database from schema revision {was} to {heads}")


@db.command("migrate-to")
@click.argument("target_database_url", metavar="TARGET_DATABASE_URL")
@click.option(
    "--target-storage-url",
    help="Also copy every blob into this store (a directory, or file:///path); default: the blobs stay where "
    "they are, in the data directory the new server keeps using.",
)
@_server_options
def db_migrate_to(
    target_database_url: str,
    target_storage_url: str | None,
    data_dir: str | None,
    database_url: str | None,
    config_file: str | None,
) -> None:
    """Copy all metadata into an empty database (PostgreSQL: postgresql://USER:PASSWORD@HOST/DB), and blobs
    into another store with --target-storage-url; verifies both. Stop the server first; --data-dir and
    --database-url name the source. Then start the server with --database-url TARGET_DATABASE_URL."""
    with _server_extra():
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, DBAPIError

        from cargohold.metadata.db import Database, with_driver
        from cargohold.ops.migrate import MigrationError, migrate_to
        from cargohold.storage import StorageUrlError, open_blob_store

        settings = _settings(data_dir, database_url, config_file)
        source_url = _require_database(settings)
        try:
            shown = make_url(with_driver(target_database_url)).render_as_string(hide_password=True)
        except ArgumentError:
            raise click.ClickException(
                f"{target_database_url!r} is not a database URL; use postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
            ) from None
        if with_driver(target_database_url) == with_driver(source_url):
            raise click.ClickException("the target database is the source database; name another one")
        try:
            source_blobs = open_blob_store(None, settings.data_dir)
            target_blobs = open_blob_store(target_storage_url, settings.data_dir) if target_storage_url else None
        except StorageUrlError as exc:
            raise click.ClickException(str(exc)) from None
        source, target = Database(source_url), Database(target_database_url)
        try:
            summary = migrate_to(
                source, target, source_blobs=source_blobs, target_blobs=target_blobs, progress=click.echo
            )
        except MigrationError as exc:
            raise click.ClickException(str(exc)) from None
        except DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            raise click.ClickException(f"cannot use the database {shown}: {reason}") from None
        finally:
            source.dispose()
            target.dispose()
    rows = sum(summary.rows.values())
    click.echo(f"migrated {rows} rows into {shown}; start the server with --database-url pointing there")


@app.group()
def admin() -> None:
    """Recovery on the server's host (break-glass)."""


@admin.command("reset-token")
@_server_options
@click.option("--name", help="Name of the new admin token (default: break-glass admin <time>).")
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    help="Write the token to this new file (mode 0600) instead of printing it.",
)
def admin_reset_token(
    data_dir: str | None, database_url: str | None, config_file: str | None, name: str | None, output: str | None
) -> None:
    """Create a new admin token directly in the database, e.g. when the last one was lost or revoked.

    Needs read/write access to the data directory (run it as the server's user); works while the server runs.
    """
    with _server_extra():
        from cargohold.metadata.db import Database
        from cargohold.metadata.schema_version import SchemaTooNew
        from cargohold.ops.recovery import mint_admin_token, write_private_text

        url = _require_database(_settings(data_dir, database_url, config_file))
        database = Database(url)
        try:
            database.migrate()
        except SchemaTooNew as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            database.dispose()
        token, credential_id = mint_admin_token(url, name=name)
        if output:
            write_private_text(Path(output), token + "\n")
            click.echo(f"created admin token {credential_id}; it is in {output} (mode 0600)")
            return
    click.echo(f"created admin token {credential_id}; it is shown only now:")
    click.echo(token)


@admin.command("rotate-signing-key")
@_server_options
def admin_rotate_signing_key(data_dir: str | None, database_url: str | None, config_file: str | None) -> None:
    """Add a new key for signing registry tokens and make it current; the old one keeps verifying.

    The keys live in the database: every server using it signs with the new key within its
    --key-reload-interval (10 s by default). Wait out the token lifetime (5 minutes) after that, then retire
    the old key with retire-signing-key.
    """
    with _server_extra():
        from cargohold.server.auth.signing import KeyError_, rotate_key

        with _signing_keys(data_dir, database_url, config_file) as keys:
            try:
                ring = rotate_key(keys)
            except KeyError_ as exc:
                raise click.ClickException(str(exc)) from None
    previous = ", ".join(kid for kid in ring.kids if kid != ring.current.kid)
    click.echo(f"new signing key {ring.current.kid} is current; still verifying: {previous or 'none'}")
    click.echo("every server signs with it within its --key-reload-interval; retire the old key(s) 5 minutes later")


@admin.command("retire-signing-key")
@click.argument("kid")
@_server_options
def admin_retire_signing_key(kid: str, data_dir: str | None, database_url: str | None, config_file: str | None) -> None:
    """Delete an old signing key KID: registry tokens it signed stop working (clients fetch new ones)."""
    with _server_extra():
        from cargohold.server.auth.signing import KeyError_, retire_key

        with _signing_keys(data_dir, database_url, config_file) as keys:
            try:
                ring = retire_key(keys, kid)
            except KeyError_ as exc:
                raise click.ClickException(str(exc)) from None
    click.echo(f"retired signing key {kid}; keys left: {', '.join(ring.kids)}")


@contextlib.contextmanager
def _signing_keys(data_dir: str | None, database_url: str | None, config_file: str | None) -> Iterator[Any]:
    """The signing-key store of the server's database (migrated first, as a server start would)."""
    from cargohold.metadata.db import Database
    from cargohold.metadata.schema_version import SchemaTooNew
    from cargohold.metadata.signing_keys import SigningKeyStore

    database = Database(_require_database(_settings(data_dir, database_url, config_file)))
    try:
        try:
            database.migrate()
        except SchemaTooNew as exc:
            raise click.ClickException(str(exc)) from None
        yield SigningKeyStore(database)
    finally:
        database.dispose()
