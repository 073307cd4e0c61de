"""One verifying TLS context per process.

Every ``httpx.Client`` built with ``verify=True`` loads the CA bundle again (~50 ms here), and a command
such as ``cargohold save`` opens two clients (control API and registry). Handing them one shared context
pays that once. ``SSLContext`` objects are safe to share between clients and threads.
"""

from __future__ import annotations

import ssl
import threading

import httpx

_lock = threading.Lock()
_context: ssl.SSLContext | None = None


def _verifying_context() -> ssl.SSLContext:
    # Under a lock: six copy threads starting at once would otherwise each load the bundle (6 x ~60 ms).
    global _context
    with _lock:
        if _context is None:
            # httpx's own constructor, so SSL_CERT_FILE / SSL_CERT_DIR keep working exactly as in httpx.
            _context = httpx.create_ssl_context()
        return _context


def verify_option(verify: bool | ssl.SSLContext) -> bool | ssl.SSLContext:
    """What to pass as ``httpx.Client(verify=...)``: the shared context instead of ``True``."""
    return _verifying_context() if verify is True else verify
