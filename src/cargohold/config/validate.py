"""Checks made before a server starts: a setting combination that would hand clients unusable addresses, or
TLS files that cannot be used, stops ``serve`` with one sentence saying what to pass instead."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from cargohold.config.settings import ServerSettings


class StartupRefused(Exception):
    """The server must not start with these settings; the message says why and what fixes it."""


def is_loopback_host(host: str) -> bool:
    """``localhost`` or an address in 127.0.0.0/8 or ::1: only this machine can connect."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_public_url(settings: ServerSettings) -> None:
    """Refuse a server other machines can reach but whose public URL would be derived from ``--host``.

    Clients are sent to the public URL (the token realm in every 401 challenge, the image references of
    builds and pull-info, the OIDC audience); derived from ``0.0.0.0`` it is ``http://0.0.0.0:5000``, which
    no remote runner can use, and the failure shows up far from its cause. An explicit ``--public-url``
    (even one equal to the derived URL) is the way to say what clients use.
    """
    if settings.public_url is None:
        if is_loopback_host(settings.host):
            return
        example = "https://cargohold.example.com"
        try:
            if not ipaddress.ip_address(settings.host).is_unspecified:
                example = settings.resolved_public_url()
        except ValueError:
            example = settings.resolved_public_url()
        raise StartupRefused(
            f"--host {settings.host} accepts connections from other machines, but without --public-url clients "
            f"would be told to use {settings.resolved_public_url()} (token realm, image references); pass "
            f"--public-url with the address clients reach this server at, e.g. --public-url {example} "
            "(CARGOHOLD_PUBLIC_URL, or public_url in the config file)"
        )
    parts = urlsplit(settings.public_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise StartupRefused(
            f"--public-url {settings.public_url!r} is not a base URL; write scheme, host and optional port, "
            "e.g. https://cargohold.example.com or http://10.0.0.5:5000"
        )
    if parts.path not in ("", "/"):
        raise StartupRefused(
            f"--public-url {settings.public_url!r} has a path; registries are served at the root of a host "
            "(/v2/), so give the host only, e.g. https://cargohold.example.com"
        )


def check_tls(settings: ServerSettings) -> None:
    if (settings.tls_cert is None) != (settings.tls_key is None):
        given, missing = ("--tls-cert", "--tls-key") if settings.tls_key is None else ("--tls-key", "--tls-cert")
        raise StartupRefused(f"{given} needs {missing} too (the certificate chain and its private key, PEM files)")
    if settings.tls_cert is not None and settings.tls_key is not None:
        from cargohold.edge.tls import TlsFilesError, load_server_context

        try:
            load_server_context(settings.tls_cert, settings.tls_key)
        except TlsFilesError as exc:
            raise StartupRefused(str(exc)) from None


def check_startup(settings: ServerSettings) -> None:
    check_tls(settings)
    check_public_url(settings)
