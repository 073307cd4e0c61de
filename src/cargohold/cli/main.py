"""The ``cargohold`` command.

Built on plain click. Start-up time is part of the interface (CI runs ``cargohold`` many times per job), so
the command modules import only click and the standard library at top level; rich, httpx, the client and
images packages, SQLAlchemy and aiohttp are imported inside the commands that need them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import click

from cargohold import __version__
from cargohold.cli.context import retry_for_option
from cargohold.cli.durations import parse_duration, parse_size

F = TypeVar("F", bound=Callable[..., Any])

SERVER_PACKAGES = frozenset({"aiohttp", "sqlalchemy", "alembic", "cryptography", "prometheus_client", "mako"})
"""Top-level modules of the ``server`` extra: the client (every command but ``serve``) never imports them."""


class HelpArgument(click.Argument):
    """A positional argument with a help text (built into click only from 8.5), shown under "Arguments:"."""

    def __init__(self, param_decls: list[str], *, help: str | None = None, **attrs: Any) -> None:
        super().__init__(param_decls, **attrs)
        self.help = help
        # As declared: newer clicks keep a sentinel, not None, in .default when there is none.
        self.declared_default = attrs.get("default")

    def help_row(self) -> tuple[str, str]:
        extra = []
        if self.declared_default is not None:
            extra.append(f"default: {self.declared_default}")
        if self.required:
            extra.append("required")
        text = self.help or ""
        if extra:
            text = f"{text}  [{'; '.join(extra)}]".lstrip()
        return self.human_readable_name, text


def argument(name: str, *, help: str, **attrs: Any) -> Callable[[F], F]:
    """``click.argument`` with a help text."""
    return click.argument(name, cls=HelpArgument, help=help, **attrs)


class Command(click.Command):
    """A command whose help lists its arguments, with their help texts, before its options."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Spelled out because click before 8.5 has no format_arguments step.
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        self.format_arguments(ctx, formatter)
        self.format_options(ctx, formatter)
        self.format_epilog(ctx, formatter)

    def format_arguments(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [param.help_row() for param in self.get_params(ctx) if isinstance(param, HelpArgument)]
        if rows:
            with formatter.section("Arguments"):
                formatter.write_dl(rows)


class Group(click.Group):
    """Lists plain commands before sub-groups, each in registration order (click would sort them by name)."""

    command_class = Command
    group_class = type  # sub-groups are Groups too

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands, key=lambda name: isinstance(self.commands[name], click.Group))


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"cargohold {__version__}")
        ctx.exit()


@click.group(
    cls=Group,
    name="cargohold",
    help="Cargohold: an ephemeral container registry for CI. Build once, pull anywhere, push when green.",
    no_args_is_help=True,
    context_settings={"show_default": True},
)
@click.option(
    "--version", is_flag=True, expose_value=False, is_eager=True, callback=_version, help="Print the version and exit."
)
@retry_for_option
def app() -> None:
    """Cargohold command-line interface."""


def _env_option(*param_decls: str, **attrs: Any) -> Callable[[F], F]:
    """An option read from an environment variable too; ``--help`` names the variable."""
    return click.option(*param_decls, show_envvar=True, **attrs)


@app.command()
@_env_option("--host", envvar="CARGOHOLD_HOST", default="127.0.0.1", help="Address to listen on.")
@_env_option("--port", envvar="CARGOHOLD_PORT", type=int, default=5000, help="Port to listen on.")
@_env_option(
    "--data-dir",
    envvar="CARGOHOLD_DATA_DIR",
    type=click.Path(),
    help="Where blobs and metadata live.",
    show_default=False,
)
@_env_option(
    "--database-url", envvar="CARGOHOLD_DATABASE_URL", help="SQLAlchemy URL (default: SQLite in the data dir)."
)
@_env_option("--public-url", envvar="CARGOHOLD_PUBLIC_URL", help="URL clients use to reach this server.")
@_env_option("--log-level", envvar="CARGOHOLD_LOG_LEVEL", default="info", help="debug, info, warning, error.")
@_env_option(
    "--access-log/--no-access-log", envvar="CARGOHOLD_ACCESS_LOG", default=True, help="Log one line per request."
)
@_env_option(
    "--upload-ttl",
    envvar="CARGOHOLD_UPLOAD_TTL",
    default="24h",
    help="Purge upload sessions idle this long (e.g. 24h).",
)
@_env_option(
    "--max-uploads-per-credential",
    envvar="CARGOHOLD_MAX_UPLOADS_PER_CREDENTIAL",
    type=click.IntRange(min=0),
    default=256,
    help="Open upload sessions one credential may hold; more get 429 TOOMANYREQUESTS until some finish (0: no cap).",
)
@_env_option(
    "--max-blob-size", envvar="CARGOHOLD_MAX_BLOB_SIZE", default="64GiB", help="Largest blob accepted (e.g. 64GiB)."
)
@_env_option(
    "--chunk-min-length",
    envvar="CARGOHOLD_CHUNK_MIN_LENGTH",
    default="1MiB",
    help="Advertised OCI-Chunk-Min-Length (0: none).",
)
@_env_option(
    "--fsync/--no-fsync", envvar="CARGOHOLD_FSYNC", default=True, help="fsync blobs before they become visible."
)
@_env_option(
    "--oidc-issuer",
    envvar="CARGOHOLD_OIDC_ISSUERS",
    multiple=True,
    help="Trusted OIDC issuer (repeatable; default GitHub Actions). Env: comma-separated.",
)
@_env_option("--oidc-audience", envvar="CARGOHOLD_OIDC_AUDIENCE", help="Required audience (default: public URL).")
@_env_option(
    "--oidc-token-ttl", envvar="CARGOHOLD_OIDC_TOKEN_TTL", default="1h", help="Lifetime of OIDC-exchanged credentials."
)
@_env_option(
    "--gc-interval",
    envvar="CARGOHOLD_GC_INTERVAL",
    default="1h",
    help="Collect garbage this often (0: only on demand).",
)
@_env_option(
    "--gc-grace", envvar="CARGOHOLD_GC_GRACE", default="1h", help="Never collect blobs linked more recently than this."
)
@_env_option(
    "--retention-interval",
    envvar="CARGOHOLD_RETENTION_INTERVAL",
    default="1m",
    help="Evict expired builds and tags, and collect untagged manifests, this often.",
)
@_env_option(
    "--storage-price",
    envvar="CARGOHOLD_STORAGE_PRICE",
    type=float,
    default=0.20,
    help="Price per GB-month for usage estimates (USD).",
)
@_env_option(
    "--free-gb-months",
    envvar="CARGOHOLD_FREE_GB_MONTHS",
    type=float,
    default=50.0,
    help="Free GB-months per project per month.",
)
@_env_option(
    "--server-push/--no-server-push",
    envvar="CARGOHOLD_SERVER_PUSH",
    default=True,
    help="Upload blobs to push destinations from this server, not through the client.",
)
@_env_option(
    "--push-allow-network",
    envvar="CARGOHOLD_PUSH_ALLOW_NETWORKS",
    multiple=True,
    help="Network (CIDR) server-side pushes may reach besides public addresses (repeatable). Env: comma-separated.",
)
@_env_option(
    "--header-timeout",
    envvar="CARGOHOLD_HEADER_TIMEOUT",
    default="75s",
    help="Close a connection that sends no complete request head this long after it opens or after its last "
    "response (also the keep-alive idle time).",
)
@_env_option(
    "--body-idle-timeout",
    envvar="CARGOHOLD_BODY_IDLE_TIMEOUT",
    default="60s",
    help="Refuse a request (408, connection closed) whose body pauses this long; uploads included, and a "
    "stalled upload keeps the bytes received so far.",
)
@_env_option(
    "--body-timeout",
    envvar="CARGOHOLD_BODY_TIMEOUT",
    default="120s",
    help="Longest time a whole JSON, form or manifest body may take to arrive (blob uploads have only the "
    "idle limit, so a slow upload that keeps progressing is never cut off).",
)
@_env_option(
    "--min-free-space",
    envvar="CARGOHOLD_MIN_FREE_SPACE",
    help="Free space to keep on the data (and database) filesystem: a size (2GiB) or a percentage (5%). Uploads "
    "are refused with HTTP 507 below it; 0 turns the check off. Default: 5% of the filesystem, at most 2GiB.",
    show_default=False,
)
@_env_option(
    "--evict-for-space/--no-evict-for-space",
    envvar="CARGOHOLD_EVICT_FOR_SPACE",
    default=True,
    help="Below --min-free-space, evict the oldest unpinned builds (never pinned ones, never a project's newest) "
    "and collect garbage until there is room again.",
)
@_env_option(
    "--space-check-interval",
    envvar="CARGOHOLD_SPACE_CHECK_INTERVAL",
    default="10s",
    help="Measure free space this often (a refused upload or a full disk triggers a check at once).",
)
@_env_option(
    "--shutdown-timeout",
    envvar="CARGOHOLD_SHUTDOWN_TIMEOUT",
    default="30s",
    help="On SIGTERM/SIGINT: stop accepting, finish requests already received, exit within this long.",
)
def serve(
    host: str,
    port: int,
    data_dir: str | None,
    database_url: str | None,
    public_url: str | None,
    log_level: str,
    access_log: bool,
    upload_ttl: str,
    max_uploads_per_credential: int,
    max_blob_size: str,
    chunk_min_length: str,
    fsync: bool,
    oidc_issuer: tuple[str, ...],
    oidc_audience: str | None,
    oidc_token_ttl: str,
    gc_interval: str,
    gc_grace: str,
    retention_interval: str,
    storage_price: float,
    free_gb_months: float,
    server_push: bool,
    push_allow_network: tuple[str, ...],
    header_timeout: str,
    body_idle_timeout: str,
    body_timeout: str,
    min_free_space: str | None,
    evict_for_space: bool,
    space_check_interval: str,
    shutdown_timeout: str,
) -> None:
    """Run the registry server (needs the server extra: pip install 'cargohold[server]')."""
    from pathlib import Path

    from cargohold.config import ServerSettings, default_data_dir

    try:
        from cargohold.server.control.egress import parse_networks
        from cargohold.server.process import run
        from cargohold.storage.space import MinFreeSpace
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in SERVER_PACKAGES:
            raise
        raise click.ClickException(
            f"cargohold serve needs the server's dependencies ({exc.name} is missing); install them with "
            "pip install 'cargohold[server]'"
        ) from None

    _configure_logging(log_level)
    try:
        ttl = parse_duration(upload_ttl)
        max_size = parse_size(max_blob_size)
        min_chunk = parse_size(chunk_min_length)
        oidc_ttl = parse_duration(oidc_token_ttl)
        parse_networks(push_allow_network)
        drain_seconds = parse_duration(shutdown_timeout).total_seconds()
        lifecycle_times = {
            "gc_interval": parse_duration(gc_interval),
            "gc_grace": parse_duration(gc_grace),
            "retention_interval": parse_duration(retention_interval),
            "space_check_interval": parse_duration(space_check_interval),
        }
        deadlines = {
            "header_timeout": _positive(parse_duration(header_timeout), "--header-timeout"),
            "body_idle_timeout": _positive(parse_duration(body_idle_timeout), "--body-idle-timeout"),
            "body_timeout": _positive(parse_duration(body_timeout), "--body-timeout"),
        }
        minimum = MinFreeSpace.parse(min_free_space) if min_free_space else MinFreeSpace.default()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    settings = ServerSettings(
        host=host,
        port=port,
        data_dir=Path(data_dir) if data_dir is not None else default_data_dir(),
        database_url=database_url,
        public_url=public_url,
        log_level=log_level,
        access_log=access_log,
        upload_ttl=ttl,
        max_uploads_per_credential=max_uploads_per_credential,
        max_blob_size=max_size,
        chunk_min_length=min_chunk,
        fsync=fsync,
        admin_token=os.environ.get("CARGOHOLD_ADMIN_TOKEN") or None,
        oidc_audience=oidc_audience,
        oidc_token_ttl=oidc_ttl,
        storage_price_per_gb_month=storage_price,
        free_gb_months=free_gb_months,
        server_push=server_push,
        push_allow_networks=push_allow_network,
        min_free_space=minimum,
        evict_for_space=evict_for_space,
        shutdown_timeout=drain_seconds,
        gc_interval=lifecycle_times["gc_interval"],
        gc_grace=lifecycle_times["gc_grace"],
        retention_interval=lifecycle_times["retention_interval"],
        space_check_interval=lifecycle_times["space_check_interval"],
        header_timeout=deadlines["header_timeout"],
        body_idle_timeout=deadlines["body_idle_timeout"],
        body_timeout=deadlines["body_timeout"],
    )
    if oidc_issuer:
        settings.oidc_issuers = tuple(i.strip() for item in oidc_issuer for i in item.split(",") if i.strip())
    run(settings)


def _positive(value: timedelta, flag: str) -> timedelta:
    if value.total_seconds() <= 0:
        raise ValueError(f"{flag} must be longer than zero (e.g. 30s)")
    return value


def _configure_logging(level: str) -> None:
    import logging

    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise click.BadParameter(f"log level {level!r} is not one of debug, info, warning, error")
    from cargohold.logformat import EscapingFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=numeric, handlers=[handler])
    # Migration chatter is noise at start-up unless someone is debugging.
    logging.getLogger("alembic").setLevel(max(numeric, logging.WARNING))
    # httpx logs every request of a server-side push at INFO, upload URLs and all; blob_copy logs one line
    # per blob instead.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))


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
