"""The ``cargohold`` command."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from cargohold import __version__
from cargohold.cli.durations import parse_duration, parse_size
from cargohold.config import ServerSettings, default_data_dir

app = typer.Typer(
    name="cargohold",
    help="Cargohold: an ephemeral container registry for CI. Build once, pull anywhere, push when green.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts are plain text: "os/arch[/variant]" must not be read as rich markup.
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cargohold {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Cargohold command-line interface."""


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="CARGOHOLD_HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="CARGOHOLD_PORT", help="Port to listen on.")] = 5000,
    data_dir: Annotated[
        Path | None,
        typer.Option(envvar="CARGOHOLD_DATA_DIR", help="Where blobs and metadata live.", show_default=False),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(envvar="CARGOHOLD_DATABASE_URL", help="SQLAlchemy URL (default: SQLite in the data dir)."),
    ] = None,
    public_url: Annotated[
        str | None, typer.Option(envvar="CARGOHOLD_PUBLIC_URL", help="URL clients use to reach this server.")
    ] = None,
    log_level: Annotated[str, typer.Option(envvar="CARGOHOLD_LOG_LEVEL", help="debug, info, warning, error.")] = "info",
    access_log: Annotated[bool, typer.Option(envvar="CARGOHOLD_ACCESS_LOG", help="Log one line per request.")] = True,
    upload_ttl: Annotated[
        str, typer.Option(envvar="CARGOHOLD_UPLOAD_TTL", help="Purge upload sessions idle this long (e.g. 24h).")
    ] = "24h",
    max_blob_size: Annotated[
        str, typer.Option(envvar="CARGOHOLD_MAX_BLOB_SIZE", help="Largest blob accepted (e.g. 64GiB).")
    ] = "64GiB",
    chunk_min_length: Annotated[
        str, typer.Option(envvar="CARGOHOLD_CHUNK_MIN_LENGTH", help="Advertised OCI-Chunk-Min-Length (0: none).")
    ] = "1MiB",
    fsync: Annotated[
        bool, typer.Option(envvar="CARGOHOLD_FSYNC", help="fsync blobs before they become visible.")
    ] = True,
    oidc_issuer: Annotated[
        list[str] | None,
        typer.Option(
            envvar="CARGOHOLD_OIDC_ISSUERS",
            help="Trusted OIDC issuer (repeatable; default GitHub Actions). Env: comma-separated.",
        ),
    ] = None,
    oidc_audience: Annotated[
        str | None, typer.Option(envvar="CARGOHOLD_OIDC_AUDIENCE", help="Required audience (default: public URL).")
    ] = None,
    oidc_token_ttl: Annotated[
        str, typer.Option(envvar="CARGOHOLD_OIDC_TOKEN_TTL", help="Lifetime of OIDC-exchanged credentials.")
    ] = "1h",  # noqa: S107 (a duration, not a password)
    gc_interval: Annotated[
        str, typer.Option(envvar="CARGOHOLD_GC_INTERVAL", help="Collect garbage this often (0: only on demand).")
    ] = "1h",
    gc_grace: Annotated[
        str, typer.Option(envvar="CARGOHOLD_GC_GRACE", help="Never collect blobs linked more recently than this.")
    ] = "1h",
    retention_interval: Annotated[
        str, typer.Option(envvar="CARGOHOLD_RETENTION_INTERVAL", help="Evict expired builds this often.")
    ] = "1m",
    storage_price: Annotated[
        float, typer.Option(envvar="CARGOHOLD_STORAGE_PRICE", help="Price per GB-month for usage estimates (USD).")
    ] = 0.20,
    free_gb_months: Annotated[
        float, typer.Option(envvar="CARGOHOLD_FREE_GB_MONTHS", help="Free GB-months per project per month.")
    ] = 50.0,
) -> None:
    """Run the registry server."""
    from cargohold.registry.server import run

    _configure_logging(log_level)
    try:
        ttl: timedelta = parse_duration(upload_ttl)
        max_size = parse_size(max_blob_size)
        min_chunk = parse_size(chunk_min_length)
        oidc_ttl = parse_duration(oidc_token_ttl)
        lifecycle_times = {
            "gc_interval": parse_duration(gc_interval),
            "gc_grace": parse_duration(gc_grace),
            "retention_interval": parse_duration(retention_interval),
        }
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    settings = ServerSettings(
        host=host,
        port=port,
        data_dir=data_dir or default_data_dir(),
        database_url=database_url,
        public_url=public_url,
        log_level=log_level,
        access_log=access_log,
        upload_ttl=ttl,
        max_blob_size=max_size,
        chunk_min_length=min_chunk,
        fsync=fsync,
        admin_token=os.environ.get("CARGOHOLD_ADMIN_TOKEN") or None,
        oidc_audience=oidc_audience,
        oidc_token_ttl=oidc_ttl,
        storage_price_per_gb_month=storage_price,
        free_gb_months=free_gb_months,
        **lifecycle_times,
    )
    if oidc_issuer:
        settings.oidc_issuers = tuple(i.strip() for item in oidc_issuer for i in item.split(",") if i.strip())
    run(settings)


def _configure_logging(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise typer.BadParameter(f"log level {level!r} is not one of debug, info, warning, error")
    logging.basicConfig(level=numeric, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Migration chatter is noise at start-up unless someone is debugging.
    logging.getLogger("alembic").setLevel(max(numeric, logging.WARNING))


def _register_command_modules() -> None:
    """Each command module adds its commands and groups to ``app`` when imported."""
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(f"cargohold.cli.{module}")


COMMAND_MODULES: tuple[str, ...] = ("admin", "images", "lifecycle")
"""Command modules, in help order (admin: projects/trust/tokens/login; images: save/build/pull/push; lifecycle)."""


def main() -> None:
    _register_command_modules()
    app()
