"""``python -m cargohold.ops.healthcheck``: exit 0 when the local server answers ``/healthz`` with 200.

For container ``HEALTHCHECK``s and service managers: standard library only (no curl in a slim image), and
it reads the same variables as ``serve`` to find the port and whether TLS is on. It talks to the local
process over loopback, so with TLS it does not verify the certificate (the name in it is the public one);
that is a liveness probe, not a client.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request


def healthz_url(env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    scheme = "https" if env.get("CARGOHOLD_TLS_CERT") else "http"
    return f"{scheme}://127.0.0.1:{env.get('CARGOHOLD_PORT', '5000')}/healthz"


def main() -> int:
    url = healthz_url()
    context = ssl._create_unverified_context()  # noqa: S323 (loopback liveness probe, see the docstring)
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as response:  # noqa: S310 (fixed scheme)
            body = response.read(200).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    print(body.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
