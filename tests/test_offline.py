"""No test back-end sends a packet off this machine, and each works with no network at all.

The PostgreSQL cluster, the moto S3 server and Chromium (asked to load an image from a non-loopback address)
run in a private network namespace whose default route ends in a packet counter (tests/netns.py). The trap
itself is checked first: a plain connection attempt must show up in its counter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from browser import chromium_binary
from netns import run_counting, unavailable_reason
from pgcluster import postgres_bin_dir
from s3server import require_moto
from tooling import tool_missing

PROBE = Path(__file__).resolve().parent / "offline_probe.py"


@pytest.fixture(autouse=True)
def _namespace_available() -> None:
    if reason := unavailable_reason():
        tool_missing(reason)


def test_the_trap_counts_an_attempt_to_leave_the_machine() -> None:
    attempt = (
        "import socket\n"
        "s = socket.socket(); s.settimeout(0.5)\n"
        "try: s.connect(('192.0.2.1', 80))\n"
        "except OSError: pass\n"
    )
    counted = run_counting([sys.executable, "-c", attempt], timeout=30)
    assert counted.process.returncode == 0, counted.process.stderr
    assert counted.packets_off_machine > 0


def test_postgres_moto_and_chromium_send_nothing_off_the_machine() -> None:
    if postgres_bin_dir() is None:
        tool_missing("needs the PostgreSQL server (Debian: apt-get install postgresql)")
    if chromium_binary() is None:
        tool_missing("needs Chromium (Debian: apt-get install chromium)")
    require_moto()
    counted = run_counting([sys.executable, str(PROBE)], timeout=240)
    assert counted.process.returncode == 0, counted.process.stdout + counted.process.stderr
    report = json.loads(counted.process.stdout.strip().splitlines()[-1])
    assert report["postgres"] == {"answer": 42}
    assert report["s3"] == {"presigned_get": "stored"}
    outside = "http://192.0.2.1/tracker.png"
    # Refused by the fixture's route before the network is involved...
    assert report["chromium"]["guarded"] == {
        "title": "outside",
        "failures": {outside: "net::ERR_BLOCKED_BY_CLIENT.Inspector"},
        "refused": [outside],
    }
    # ...and without the route, the launch flags send it to a closed loopback proxy instead of the network.
    assert report["chromium"]["flags only"] == {
        "title": "outside",
        "failures": {outside: "net::ERR_PROXY_CONNECTION_FAILED"},
    }
    assert counted.packets_off_machine == 0
