"""Run a command in a private network namespace that counts every packet aimed off the machine.

The namespace has its own loopback (up) and one veth pair whose both ends stay inside it, with the default
route pointing at it. A process that tries to reach any non-loopback address (a DNS server, a browser's update
service) therefore sends its packets (or the ARP request for the "gateway") into the veth, where they are
counted and dropped: nothing can leave the namespace, yet every attempt shows in the transmit counter. A
command that needs no network passes with a count of zero.

Needs root (or CAP_SYS_ADMIN) for ``unshare --net`` and iproute2's ``ip``; callers skip or fail otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEVICE = "chtrap0"
_SETUP = f"""
set -e
ip link set lo up
ip link add {DEVICE} type veth peer name chtrap1
# No IPv6 on the trap: its router solicitations would count as traffic nobody asked for.
for device in {DEVICE} chtrap1; do
    knob=/proc/sys/net/ipv6/conf/$device/disable_ipv6
    if [ -w "$knob" ]; then echo 1 > "$knob"; fi
done
ip addr add 10.253.0.1/24 dev {DEVICE}
ip link set {DEVICE} up
ip link set chtrap1 up
ip route add default via 10.253.0.2 dev {DEVICE}
set +e
"$@"
rc=$?
ip -s -j link show {DEVICE} > "$CARGOHOLD_NETNS_COUNTER"
exit $rc
"""


def unavailable_reason() -> str | None:
    """Why ``run_counting`` cannot work here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root for a private network namespace (unshare --net)"
    missing = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (Debian: util-linux, iproute2)"
    return None


@dataclass(frozen=True)
class CountedRun:
    process: subprocess.CompletedProcess[str]
    packets_off_machine: int
    """Packets the command sent towards any non-loopback address (all counted inside the namespace)."""


def run_counting(command: Sequence[str], *, timeout: float = 300, env: dict[str, str] | None = None) -> CountedRun:
    """Run ``command`` in a fresh private network namespace and count what it tried to send off the machine."""
    with tempfile.TemporaryDirectory(prefix="cargohold-netns-") as scratch:
        counter = Path(scratch) / "counter.json"
        process = subprocess.run(
            ["unshare", "--net", "sh", "-c", _SETUP, "netns", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **(env or {}), "CARGOHOLD_NETNS_COUNTER": str(counter)},
        )
        if not counter.exists():
            raise RuntimeError(f"network namespace set-up failed:\n{process.stdout}\n{process.stderr}")
        stats = json.loads(counter.read_text())[0]
        packets = int(stats.get("stats64", stats.get("stats", {}))["tx"]["packets"])
    return CountedRun(process=process, packets_off_machine=packets)
