"""From the values ``serve`` resolved (strings such as ``"24h"``, tuples of repeated flags) to
:class:`ServerSettings`; every bad value is a ``ValueError`` whose message names the setting and the fix."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cargohold.cli.durations import parse_duration, parse_size
from cargohold.config.settings import ServerSettings, default_data_dir
from cargohold.storage.s3url import S3Location
from cargohold.storage.space import MinFreeSpace

DURATIONS = (
    "upload_ttl",
    "oidc_token_ttl",
    "gc_interval",
    "gc_grace",
    "retention_interval",
    "space_check_interval",
    "key_reload_interval",
)
POSITIVE_DURATIONS = ("header_timeout", "body_idle_timeout", "body_timeout")
SIZES = ("max_blob_size", "chunk_min_length")
PLAIN = (
    "host",
    "port",
    "workers",
    "database_url",
    "public_url",
    "log_level",
    "log_format",
    "access_log",
    "proxy_header",
    "max_uploads_per_credential",
    "fsync",
    "oidc_audience",
    "storage_price_per_gb_month",
    "free_gb_months",
    "server_push",
    "evict_for_space",
    "storage_url",
)


FLAGS = {
    "trusted_proxies": "--trusted-proxy",
    "push_allow_networks": "--push-allow-network",
    "oidc_issuers": "--oidc-issuer",
    "storage_price_per_gb_month": "--storage-price",
}


def label(name: str) -> str:
    """How messages name a setting: its flag and its configuration-file key (``--gc-grace (gc_grace)``)."""
    return f"{FLAGS.get(name, '--' + name.replace('_', '-'))} ({name})"


def split_list(values: Iterable[str]) -> tuple[str, ...]:
    """Repeated values, each of which may itself be comma-separated (the environment's form)."""
    return tuple(item.strip() for value in values for item in value.split(",") if item.strip())


def parse_cidrs(values: Iterable[str], setting: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in split_list(values):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"{label(setting)}: {item!r} is not a network; write a CIDR like 10.0.0.0/8 or an address"
            ) from None
    return tuple(networks)


def settings_from_values(values: Mapping[str, Any]) -> ServerSettings:
    """``values`` has every ``serve`` setting (None where unset)."""
    kwargs: dict[str, Any] = {name: values[name] for name in PLAIN if name in values}
    for name in DURATIONS:
        kwargs[name] = _duration(values[name], name)
    for name in POSITIVE_DURATIONS:
        kwargs[name] = _duration(values[name], name)
        if kwargs[name].total_seconds() <= 0:
            raise ValueError(f"{label(name)} must be longer than zero (e.g. 30s)")
    for name in SIZES:
        kwargs[name] = _size(values[name], name)
    kwargs["shutdown_timeout"] = _duration(values["shutdown_timeout"], "shutdown_timeout").total_seconds()
    data_dir = values.get("data_dir")
    kwargs["data_dir"] = Path(data_dir) if data_dir else default_data_dir()
    kwargs["admin_token"] = values.get("admin_token") or None
    kwargs["blob_redirect"] = values.get("blob_redirect", "on") != "off"
    kwargs["blob_redirect_url"] = _redirect_url(values.get("blob_redirect_url"))
    if kwargs.get("storage_url"):
        _check_storage_url(kwargs["storage_url"])
    for name in ("tls_cert", "tls_key"):
        kwargs[name] = Path(values[name]) if values.get(name) else None
    parse_cidrs(values.get("trusted_proxies") or (), "trusted_proxies")
    parse_cidrs(values.get("push_allow_networks") or (), "push_allow_networks")
    kwargs["trusted_proxies"] = split_list(values.get("trusted_proxies") or ())
    kwargs["push_allow_networks"] = split_list(values.get("push_allow_networks") or ())
    minimum = values.get("min_free_space")
    try:
        kwargs["min_free_space"] = MinFreeSpace.parse(minimum) if minimum else MinFreeSpace.default()
    except ValueError as exc:
        raise ValueError(f"{label('min_free_space')}: {exc}") from None
    settings = ServerSettings(**kwargs)
    if issuers := split_list(values.get("oidc_issuers") or ()):
        settings.oidc_issuers = issuers
    return settings


def _duration(value: str, name: str) -> timedelta:
    try:
        return parse_duration(str(value))
    except ValueError as exc:
        raise ValueError(f"{label(name)}: {exc}") from None


def _size(value: str, name: str) -> int:
    try:
        return parse_size(str(value))
    except ValueError as exc:
        raise ValueError(f"{label(name)}: {exc}") from None


def _redirect_url(value: str | None) -> str | None:
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(
            f"{label('blob_redirect_url')}: {value!r} is not a base URL; write https://cdn.example.com[/path]"
        )
    return value


def _check_storage_url(value: str) -> None:
    try:
        S3Location.parse(value)
    except ValueError as exc:
        raise ValueError(f"{label('storage_url')}: {exc}, or leave it unset for the data dir") from None
