"""``cargohold serve``: every setting as a flag, a ``CARGOHOLD_*`` variable and a key of the ``--config`` file.

Precedence is flags > environment > configuration file > defaults. Click already knows whether a value came
from the command line, the environment or its default (``Context.get_parameter_source``); a value from the
file replaces only a default. The file's keys are the option names with underscores, which are also the
fields of :class:`cargohold.config.ServerSettings`; :mod:`cargohold.config.file` checks them.

Importing this module stays cheap (click and the standard library): the server's packages are imported only
when the server starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

SERVER_PACKAGES = frozenset(
    {"aiohttp", "sqlalchemy", "alembic", "cryptography", "prometheus_client", "mako", "jinja2", "markupsafe"}
)
"""Top-level modules of the ``server`` extra: the client (every command but ``serve``) never imports them."""

CONFIG_ENV = "CARGOHOLD_SERVER_CONFIG"
"""Not ``CARGOHOLD_CONFIG``: that one already names the client's stored login (cargohold.client.settings)."""


def _option(*param_decls: str, **attrs: Any) -> Callable[[Any], Any]:
    """An option read from an environment variable too; ``--help`` names the variable."""
    return click.option(*param_decls, show_envvar=True, **attrs)


# Each option's parameter name (the second declaration) is its configuration-file key and settings field.
SERVE_OPTIONS: tuple[Callable[[Any], Any], ...] = (
    _option("--host", "host", envvar="CARGOHOLD_HOST", default="127.0.0.1", help="Address to listen on."),
    _option("--port", "port", envvar="CARGOHOLD_PORT", type=click.IntRange(0, 65535), default=5000, help="Port."),
    _option(
        "--workers",
        "workers",
        envvar="CARGOHOLD_WORKERS",
        type=click.IntRange(0, 256),
        default=0,
        help="Server processes sharing the port, each on its own core (0: one per CPU; 1: a single process). "
        "A supervisor forwards SIGTERM/SIGHUP to them and restarts one that dies.",
    ),
    _option(
        "--data-dir",
        "data_dir",
        envvar="CARGOHOLD_DATA_DIR",
        type=click.Path(),
        help="Where blobs and metadata live (default: $XDG_DATA_HOME/cargohold).",
        show_default=False,
    ),
    _option(
        "--database-url",
        "database_url",
        envvar="CARGOHOLD_DATABASE_URL",
        help="Metadata database: postgresql://USER:PASSWORD@HOST/DB (needs cargohold[postgres]) or any "
        "SQLAlchemy URL (default: SQLite in the data dir). Move an install with cargohold db migrate-to.",
    ),
    _option(
        "--public-url",
        "public_url",
        envvar="CARGOHOLD_PUBLIC_URL",
        help="URL clients use to reach this server (token realm, image references, OIDC audience), e.g. "
        "https://cargohold.example.com. Required when --host is not a loopback address.",
    ),
    _option(
        "--tls-cert",
        "tls_cert",
        envvar="CARGOHOLD_TLS_CERT",
        type=click.Path(dir_okay=False),
        help="PEM certificate (chain) to serve HTTPS with; re-read with --tls-key on SIGHUP.",
    ),
    _option(
        "--tls-key", "tls_key", envvar="CARGOHOLD_TLS_KEY", type=click.Path(dir_okay=False), help="PEM private key."
    ),
    _option(
        "--trusted-proxy",
        "trusted_proxies",
        envvar="CARGOHOLD_TRUSTED_PROXIES",
        multiple=True,
        help="Network (CIDR) of a reverse proxy whose forwarding header names the real client (repeatable). "
        "Env: comma-separated.",
    ),
    _option(
        "--proxy-header",
        "proxy_header",
        envvar="CARGOHOLD_PROXY_HEADER",
        type=click.Choice(["x-forwarded-for", "forwarded"]),
        default="x-forwarded-for",
        help="The header trusted proxies set: X-Forwarded-For (with X-Forwarded-Proto) or Forwarded (RFC 7239).",
    ),
    _option(
        "--log-level",
        "log_level",
        envvar="CARGOHOLD_LOG_LEVEL",
        type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        default="info",
        help="Least severe messages logged.",
    ),
    _option(
        "--log-format",
        "log_format",
        envvar="CARGOHOLD_LOG_FORMAT",
        type=click.Choice(["text", "json"]),
        default="text",
        help="text lines (the access log in logfmt) or one JSON object per line.",
    ),
    _option(
        "--access-log/--no-access-log",
        "access_log",
        envvar="CARGOHOLD_ACCESS_LOG",
        default=True,
        help="Log one line per request.",
    ),
    _option(
        "--admin-token",
        "admin_token",
        envvar="CARGOHOLD_ADMIN_TOKEN",
        help="Bootstrap admin token (at least 24 characters) that always works and is stored nowhere; set it in the "
        "environment or the config file, since a flag's value is visible in ps.",
        show_default=False,
    ),
    _option(
        "--upload-ttl",
        "upload_ttl",
        envvar="CARGOHOLD_UPLOAD_TTL",
        default="24h",
        help="Purge upload sessions idle this long (e.g. 24h).",
    ),
    _option(
        "--max-uploads-per-credential",
        "max_uploads_per_credential",
        envvar="CARGOHOLD_MAX_UPLOADS_PER_CREDENTIAL",
        type=click.IntRange(min=0),
        default=256,
        help="Open upload sessions one credential may hold; more get 429 TOOMANYREQUESTS until some finish "
        "(0: no cap).",
    ),
    _option(
        "--max-blob-size",
        "max_blob_size",
        envvar="CARGOHOLD_MAX_BLOB_SIZE",
        default="64GiB",
        help="Largest blob accepted (e.g. 64GiB).",
    ),
    _option(
        "--chunk-min-length",
        "chunk_min_length",
        envvar="CARGOHOLD_CHUNK_MIN_LENGTH",
        default="1MiB",
        help="Advertised OCI-Chunk-Min-Length (0: none).",
    ),
    _option(
        "--fsync/--no-fsync",
        "fsync",
        envvar="CARGOHOLD_FSYNC",
        default=True,
        help="fsync blobs before they become visible.",
    ),
    _option(
        "--storage-url",
        "storage_url",
        envvar="CARGOHOLD_STORAGE_URL",
        help="Where blobs live: s3://BUCKET[/PREFIX] for an S3-compatible bucket (needs the s3 extra; endpoint, "
        "keys and region from the standard AWS variables: AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_REGION). Default: the data dir's filesystem.",
    ),
    _option(
        "--blob-redirect",
        "blob_redirect",
        envvar="CARGOHOLD_BLOB_REDIRECT",
        type=click.Choice(["on", "off"]),
        default="on",
        help="Object storage only: answer blob GETs with a 307 to a short-lived presigned URL (on), or stream "
        "the bytes through the server (off).",
    ),
    _option(
        "--blob-redirect-url",
        "blob_redirect_url",
        envvar="CARGOHOLD_BLOB_REDIRECT_URL",
        help="Object storage only: redirect blob GETs to this base URL plus the object key (a CDN in front of "
        "the bucket) instead of a presigned bucket URL.",
    ),
    _option(
        "--oidc-issuer",
        "oidc_issuers",
        envvar="CARGOHOLD_OIDC_ISSUERS",
        multiple=True,
        help="Trusted OIDC issuer (repeatable; default GitHub Actions). Env: comma-separated.",
    ),
    _option(
        "--oidc-audience",
        "oidc_audience",
        envvar="CARGOHOLD_OIDC_AUDIENCE",
        help="Required audience (default: public URL).",
    ),
    _option(
        "--oidc-token-ttl",
        "oidc_token_ttl",
        envvar="CARGOHOLD_OIDC_TOKEN_TTL",
        default="1h",
        help="Lifetime of OIDC-exchanged credentials.",
    ),
    _option(
        "--gc-interval",
        "gc_interval",
        envvar="CARGOHOLD_GC_INTERVAL",
        default="1h",
        help="Collect garbage this often (0: only on demand).",
    ),
    _option(
        "--gc-grace",
        "gc_grace",
        envvar="CARGOHOLD_GC_GRACE",
        default="1h",
        help="Never collect blobs linked more recently than this.",
    ),
    _option(
        "--retention-interval",
        "retention_interval",
        envvar="CARGOHOLD_RETENTION_INTERVAL",
        default="1m",
        help="Evict expired builds and tags, and collect untagged manifests, this often.",
    ),
    _option(
        "--storage-price",
        "storage_price_per_gb_month",
        envvar="CARGOHOLD_STORAGE_PRICE",
        type=float,
        default=0.20,
        help="Price per GB-month for usage estimates (USD).",
    ),
    _option(
        "--free-gb-months",
        "free_gb_months",
        envvar="CARGOHOLD_FREE_GB_MONTHS",
        type=float,
        default=50.0,
        help="Free GB-months per project per month.",
    ),
    _option(
        "--server-push/--no-server-push",
        "server_push",
        envvar="CARGOHOLD_SERVER_PUSH",
        default=True,
        help="Upload blobs to push destinations from this server, not through the client.",
    ),
    _option(
        "--push-allow-network",
        "push_allow_networks",
        envvar="CARGOHOLD_PUSH_ALLOW_NETWORKS",
        multiple=True,
        help="Network (CIDR) server-side pushes may reach besides public addresses (repeatable). Env: comma-separated.",
    ),
    _option(
        "--header-timeout",
        "header_timeout",
        envvar="CARGOHOLD_HEADER_TIMEOUT",
        default="75s",
        help="Close a connection that sends no complete request head this long after it opens or after its last "
        "response (also the keep-alive idle time).",
    ),
    _option(
        "--body-idle-timeout",
        "body_idle_timeout",
        envvar="CARGOHOLD_BODY_IDLE_TIMEOUT",
        default="60s",
        help="Refuse a request (408, connection closed) whose body pauses this long; uploads included, and a "
        "stalled upload keeps the bytes received so far.",
    ),
    _option(
        "--body-timeout",
        "body_timeout",
        envvar="CARGOHOLD_BODY_TIMEOUT",
        default="120s",
        help="Longest time a whole JSON, form or manifest body may take to arrive (blob uploads have only the "
        "idle limit, so a slow upload that keeps progressing is never cut off).",
    ),
    _option(
        "--min-free-space",
        "min_free_space",
        envvar="CARGOHOLD_MIN_FREE_SPACE",
        help="Free space to keep on the data (and database) filesystem: a size (2GiB) or a percentage (5%). Uploads "
        "are refused with HTTP 507 below it; 0 turns the check off. Default: 5% of the filesystem, at most 2GiB.",
        show_default=False,
    ),
    _option(
        "--evict-for-space/--no-evict-for-space",
        "evict_for_space",
        envvar="CARGOHOLD_EVICT_FOR_SPACE",
        default=True,
        help="Below --min-free-space, evict the oldest unpinned builds (never pinned ones, never a project's newest) "
        "and collect garbage until there is room again.",
    ),
    _option(
        "--space-check-interval",
        "space_check_interval",
        envvar="CARGOHOLD_SPACE_CHECK_INTERVAL",
        default="10s",
        help="Measure free space this often (a refused upload or a full disk triggers a check at once).",
    ),
    _option(
        "--key-reload-interval",
        "key_reload_interval",
        envvar="CARGOHOLD_KEY_RELOAD_INTERVAL",
        default="10s",
        help="Re-read the shared signing keys from the database this often, so a key rotated or retired on "
        "another replica is used or refused here within it (a token signed by an unknown key triggers a re-read).",
    ),
    _option(
        "--shutdown-timeout",
        "shutdown_timeout",
        envvar="CARGOHOLD_SHUTDOWN_TIMEOUT",
        default="30s",
        help="On SIGTERM/SIGINT: stop accepting, finish requests already received, exit within this long.",
    ),
)

SECRET_SETTINGS = frozenset({"admin_token"})
"""Redacted by ``--print-config``; a database URL shows all but its password."""


def _serve_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(SERVE_OPTIONS):
        command = option(command)
    return command


@click.command(
    epilog="Every setting may also be given in the --config file (TOML), keyed by the option's name with "
    "underscores (port, data_dir, public_url, tls_cert, trusted_proxies, ...). Precedence: flags, then the "
    "environment, then the file, then the defaults. See docs/deploy.md."
)
@click.option(
    "--config",
    "config_file",
    envvar=CONFIG_ENV,
    show_envvar=True,
    type=click.Path(dir_okay=False),
    help="TOML file with any of the settings below.",
)
@click.option(
    "--print-config",
    is_flag=True,
    help="Print the effective settings (secrets redacted) and where each came from, then exit.",
)
@_serve_options
@click.pass_context
def serve(ctx: click.Context, /, config_file: str | None, print_config: bool, **given: Any) -> None:
    """Run the registry server (needs the server extra: pip install 'cargohold[server]').

    The same port serves the web dashboard under /ui/ (GET / redirects there): sign in with any Cargohold
    token; see docs/dashboard.md.
    """
    from cargohold.config.convert import settings_from_values
    from cargohold.config.file import ConfigFileError, load_config_file
    from cargohold.config.layers import Layered, effective_values
    from cargohold.config.validate import StartupRefused, check_startup

    try:
        from_file = load_config_file(config_file, file_kinds(ctx.command)) if config_file else {}
    except ConfigFileError as exc:
        raise click.UsageError(str(exc)) from None
    layered = effective_values(
        given,
        {name: _source_name(ctx.get_parameter_source(name)) for name in given},
        from_file,
    )
    for name, layer in list(layered.items()):
        if layer.source == "file":  # click's own types (ranges, choices) check file values too
            param = next(p for p in ctx.command.params if p.name == name)
            try:
                value = param.type_cast_value(ctx, layer.value)
            except click.BadParameter as exc:
                raise click.UsageError(f"{config_file}: {name}: {exc.message}") from None
            layered[name] = Layered(value, layer.source)
    try:
        settings = settings_from_values({name: layer.value for name, layer in layered.items()})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if print_config:
        from cargohold.config.show import render, with_derived_defaults

        shown = with_derived_defaults(layered, settings)
        click.echo(render(shown, secrets=SECRET_SETTINGS, urls={"database_url"}), nl=False)
        return
    try:
        check_startup(settings)
    except StartupRefused as exc:
        raise click.ClickException(str(exc)) from None
    try:
        from cargohold.edge.logs import configure_logging
        from cargohold.server.process import run
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in SERVER_PACKAGES:
            raise
        raise click.ClickException(
            f"cargohold serve needs the server's dependencies ({exc.name} is missing); install them with "
            "pip install 'cargohold[server]'"
        ) from None
    from cargohold.metadata.schema_version import SchemaTooNew

    configure_logging(settings.log_level, settings.log_format)
    try:
        run(settings)
    except SchemaTooNew as exc:
        raise click.ClickException(str(exc)) from None


def _source_name(source: click.core.ParameterSource | None) -> str:
    if source is click.core.ParameterSource.COMMANDLINE:
        return "flag"
    if source is click.core.ParameterSource.ENVIRONMENT:
        return "env"
    return "default"


def file_kinds(command: click.Command) -> dict[str, str]:
    """Every configuration-file key (the settings of ``command``) and the kind of value it takes."""
    return {
        param.name: _file_kind(param)
        for param in command.params
        if param.name is not None and param.name not in ("config_file", "print_config")
    }


def _file_kind(param: click.Parameter) -> str:
    """What a configuration-file value of this option must be (see cargohold.config.file.KINDS)."""
    if param.multiple:
        return "list"
    if isinstance(param, click.Option) and param.is_bool_flag:
        return "bool"
    if isinstance(param.type, click.types.IntParamType):  # IntRange included
        return "int"
    if isinstance(param.type, click.types.FloatParamType):
        return "float"
    if param.name in DURATION_OR_SIZE:
        return "str-or-number"
    return "str"


DURATION_OR_SIZE = frozenset(
    {
        "upload_ttl",
        "max_blob_size",
        "chunk_min_length",
        "oidc_token_ttl",
        "gc_interval",
        "gc_grace",
        "retention_interval",
        "header_timeout",
        "body_idle_timeout",
        "body_timeout",
        "min_free_space",
        "space_check_interval",
        "key_reload_interval",
        "shutdown_timeout",
    }
)
"""Durations (``"24h"`` or seconds) and sizes (``"64GiB"`` or bytes): a string or a number in the file."""
