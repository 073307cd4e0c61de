"""One verifying TLS context per process, trusting a private CA when told to.

Every ``httpx.Client`` built with ``verify=True`` loads the CA bundle again (~50 ms here), and a command
such as ``cargohold save`` opens two clients (control API and registry). Handing them one shared context
pays that once. ``SSLContext`` objects are safe to share between clients and threads.

A server with a certificate from a private CA is trusted with ``--ca-cert FILE`` or ``CARGOHOLD_CA_CERT``
(the actions' ``ca-cert`` input sets it): the file's certificates are trusted *in addition* to the system's,
so public registries (a push destination) keep working. ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` still replace
the system bundle as in httpx.
"""

from __future__ import annotations

import os
import ssl
import threading
from pathlib import Path

import httpx

CA_CERT_ENV = "CARGOHOLD_CA_CERT"
CA_CERT_HINT = f"pass --ca-cert FILE ({CA_CERT_ENV}, the actions' ca-cert input) with the CA certificate that signed it"
"""What fixes an untrusted certificate, as a clause of error messages."""

_lock = threading.Lock()
_context: ssl.SSLContext | None = None
_ca_file: str | None = None


def trust_ca_file(path: str) -> None:
    """Trust the CA certificate(s) in ``path`` (PEM) from now on; ``ValueError`` if it cannot be used."""
    global _context, _ca_file
    _check_ca_file(path)
    with _lock:
        _ca_file = path
        _context = None


def _check_ca_file(path: str) -> None:
    if not Path(path).is_file():
        raise ValueError(f"the CA certificate file {path} does not exist")
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{path} holds no usable PEM CA certificate ({exc})") from None


def _verifying_context() -> ssl.SSLContext:
    # Under a lock: six copy threads starting at once would otherwise each load the bundle (6 x ~60 ms).
    global _context
    with _lock:
        if _context is None:
            # httpx's own constructor, so SSL_CERT_FILE / SSL_CERT_DIR keep working exactly as in httpx.
            context = httpx.create_ssl_context()
            extra = _ca_file or os.environ.get(CA_CERT_ENV) or None
            if extra:
                try:
                    context.load_verify_locations(cafile=extra)
                except (ssl.SSLError, OSError) as exc:
                    raise ValueError(f"{CA_CERT_ENV}={extra} cannot be used as a CA certificate file ({exc})") from None
            _context = context
        return _context


def tls_failure(exc: BaseException) -> str | None:
    """A sentence about a TLS failure anywhere in ``exc``'s chain, naming what fixes it; else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            detail = current.verify_message or current.reason or "verification failed"
            return f"its TLS certificate is not trusted here ({detail}); {CA_CERT_HINT}"
        if isinstance(current, ssl.SSLError) and current.reason == "WRONG_VERSION_NUMBER":
            return "it answers in plain HTTP, not HTTPS; use an http:// URL for it"
        current = current.__cause__ or current.__context__
    return None


def verify_option(verify: bool | ssl.SSLContext) -> bool | ssl.SSLContext:
    """What to pass as ``httpx.Client(verify=...)``: the shared context instead of ``True``."""
    return _verifying_context() if verify is True else verify
