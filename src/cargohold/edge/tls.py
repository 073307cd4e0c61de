"""HTTPS without a reverse proxy: ``--tls-cert`` / ``--tls-key``, re-read on SIGHUP.

Certificates are rotated often (ACME: every 60-90 days), so replacing them must not need a restart, which
would cut running uploads. One :class:`ssl.SSLContext` serves the listening socket; ``load_cert_chain`` on
that same context replaces its certificate, new handshakes present the new one, and connections already
established (keep-alive included) carry on untouched. If the new files cannot be loaded, the old
certificate stays and the log says why.

Policy: TLS 1.2 or newer; for TLS 1.2 only forward-secret AEAD suites (ECDHE/DHE with AES-GCM or
ChaCha20-Poly1305); TLS 1.3's suites are all of that kind already. No compression, no renegotiation. Every
registry client in use (Docker, containerd, skopeo, crane, Python's httpx) speaks TLS 1.2 or 1.3.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cargohold.config import ServerSettings

log = logging.getLogger(__name__)

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"


class TlsFilesError(Exception):
    """The certificate or key cannot be used; the message names the file and the problem."""


def new_server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if hasattr(ssl, "OP_NO_RENEGOTIATION"):
        context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    return context


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    for path, what in ((cert, "--tls-cert"), (key, "--tls-key")):
        if not path.is_file():
            raise TlsFilesError(f"{what} {path} does not exist or is not a file")
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except PermissionError:
        raise TlsFilesError(f"cannot read {cert} or {key}: permission denied for the server's user") from None
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if reason == "KEY_VALUES_MISMATCH":
            raise TlsFilesError(f"the private key {key} does not belong to the certificate {cert}") from None
        raise TlsFilesError(
            f"cannot load the certificate {cert} with the key {key} ({reason}); both must be PEM files, the key "
            "unencrypted"
        ) from None


def load_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context with the policy above and this certificate; :class:`TlsFilesError` if unusable."""
    context = new_server_context()
    _load_chain(context, cert, key)
    return context


class ReloadableCertificate:
    """The listening socket's context, whose certificate :meth:`reload` replaces in place."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key
        self.context = load_server_context(cert, key)
        self._lock = threading.Lock()

    def reload(self) -> bool:
        """Re-read both files into the live context; on failure keep serving the old certificate."""
        with self._lock:
            try:
                # Checked on a scratch context first: a failed load_cert_chain may leave the live one half-set.
                load_server_context(self.cert, self.key)
                _load_chain(self.context, self.cert, self.key)
            except TlsFilesError as exc:
                log.error("SIGHUP: keeping the current TLS certificate: %s", exc)
                return False
        log.info("SIGHUP: reloaded the TLS certificate %s; new connections use it", self.cert)
        return True


def serving_certificate(settings: ServerSettings) -> ReloadableCertificate | None:
    """The certificate of a server with ``--tls-cert``, reloaded on SIGHUP; None for plain HTTP.

    Called inside the running event loop (when the listening sites are made), which owns the signal. A
    plain-HTTP server handles SIGHUP too: ``systemctl reload`` must never end it (SIGHUP's default action).
    """
    loop = asyncio.get_running_loop()
    if settings.tls_cert is None or settings.tls_key is None:
        loop.add_signal_handler(signal.SIGHUP, log.info, "SIGHUP: nothing to reload (no --tls-cert)")
        return None
    certificate = ReloadableCertificate(settings.tls_cert, settings.tls_key)
    loop.add_signal_handler(signal.SIGHUP, certificate.reload)
    return certificate
