"""Background passes across replicas sharing a database: exactly one replica runs each sweep.

The lease lives in the database, so a ``Lease`` object with another holder stands in for another replica.
"""

from __future__ import annotations

from datetime import timedelta

from cargohold.lifecycle.lease import Lease
from cargohold.server.control.lifecycle import SWEEP_LEASE
from servers import InProcessServer


def test_a_sweep_runs_only_on_the_replica_holding_the_sweep_lease(server: InProcessServer) -> None:
    lifecycle = server.lifecycle
    other_replica = Lease(lifecycle.retention.db, SWEEP_LEASE, ttl=timedelta(minutes=5), holder="elsewhere:1:x")
    assert other_replica.acquire()
    try:
        assert lifecycle.scheduled_sweep(timedelta(days=30)) is False
    finally:
        other_replica.release()
    assert lifecycle.scheduled_sweep(timedelta(days=30)) is True
    assert other_replica.acquire()  # the sweep released its lease when done
    other_replica.release()
