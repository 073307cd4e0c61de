"""What ``/healthz`` checks besides the process being up: the things every request needs, each as one
function answering None (fine) or one sentence saying what is wrong (for the operator reading the answer)."""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError

from cargohold.server.state import RegistryState

log = logging.getLogger(__name__)


def check_database(state: RegistryState) -> str | None:
    """Whether the metadata database answers a query (blocking: run it on the I/O pool).

    With SQLite this is a file next to the blobs and practically never fails; with PostgreSQL it is a server
    on the network that can be down, full of connections or failing over, and a replica that cannot reach it
    can serve nothing: the load balancer should send requests elsewhere."""
    try:
        state.metadata.repository_exists("healthz-probe")
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        log.warning("health check: the database is unreachable: %s", reason)
        return f"database unreachable: {reason}"
    return None
