"""The client against Cargohold's own server: round trips, copies and upload resume.

The server is started with ``CARGOHOLD_ADMIN_TOKEN`` and the client presents ``x-token:<token>`` via
Basic auth (the challenge flow), so this keeps passing once the server enforces authentication.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.client.copy import LayoutStore, RegistryRepo, copy_image
from cargohold.client.credentials import Credentials
from cargohold.client.registry import RegistryClient, bytes_source
from cargohold.client.retry import RetryPolicy
from cargohold.oci.digest import Digest
from cargohold.oci.layout import OCILayout
from cargohold.sample import write_sample_index
from servers import InProcessServer, running
from test_client_faults import Fault, FaultProxy

FAST = RetryPolicy(attempts=5, initial=0.01, maximum=0.05)


@pytest.fixture
def cargohold(tmp_path: Path) -> Iterator[tuple[InProcessServer, Credentials]]:
    token = secrets.token_urlsafe(24)
    with running(InProcessServer(data_dir=tmp_path / "data", admin_token=token)) as proc:
        assert isinstance(proc, InProcessServer)
        yield proc, Credentials("x-token", token)


def test_blob_and_image_round_trip(cargohold: tuple[InProcessServer, Credentials], tmp_path: Path) -> None:
    server, creds = cargohold
    data = os.urandom((5 << 20) + 17)
    digest = Digest.of(data)
    layout_dir = tmp_path / "src"
    info = write_sample_index(layout_dir, layers=2, layer_size=1 << 20, seed=11, ref="v1", attestations=True)
    with RegistryClient(server.host, credentials=creds, retry=FAST) as client:
        client.ping()
        assert client.upload_blob("ch/blob", digest, len(data), bytes_source(data)) == "uploaded"
        assert client.blob_exists("ch/blob", digest) == len(data)
        got = bytearray()
        client.download_blob("ch/blob", digest, got.extend, size=len(data))
        assert bytes(got) == data
        assert client.upload_blob("ch/other", digest, len(data), bytes_source(data), mount_from="ch/blob") in (
            "mounted",
            "uploaded",
        )

        pushed = copy_image(LayoutStore(OCILayout.open(layout_dir)), "v1", RegistryRepo(client, "ch/app"), ["v1"])
        assert pushed.digest == info.index.digest
        assert client.get_manifest("ch/app", "v1").digest == info.index.digest
        assert "v1" in client.list_tags("ch/app")
        out = OCILayout.create(tmp_path / "out")
        copy_image(RegistryRepo(client, "ch/app"), "v1", LayoutStore(out), ["v1"])
        assert all(out.has_blob(d) for d in info.digests)


def test_upload_resumes_from_confirmed_offset(cargohold: tuple[InProcessServer, Credentials]) -> None:
    server, creds = cargohold
    data = os.urandom(6 << 20)
    digest = Digest.of(data)
    cut = 2 << 20
    with FaultProxy(server.url) as proxy, RegistryClient(proxy.host, credentials=creds, retry=FAST) as client:
        proxy.faults.append(Fault("PATCH", "/blobs/uploads/", drop_request_after=cut))
        assert client.upload_blob("ch/resume", digest, len(data), bytes_source(data)) == "uploaded"
        assert client.blob_exists("ch/resume", digest) == len(data)
    patches = [s for s in proxy.seen if s.method == "PATCH" and s.status != 401]
    assert len(patches) == 2, [(s.method, s.path, s.status) for s in proxy.seen]
    start = int(patches[1].headers["Content-Range"].split("-")[0])
    assert 0 < start <= cut
    assert patches[1].request_bytes == len(data) - start, "only the unconfirmed tail may be re-sent"


def test_resume_after_a_lagging_status_answer_names_its_offset(cargohold: tuple[InProcessServer, Credentials]) -> None:
    """The status answer after a drop says the session is empty ("0-0": what a registry says for 0 bytes, and
    for one) while the server holds the bytes that did arrive. A resume without ``Content-Range`` would be
    appended to them (DIGEST_INVALID, and the whole blob sent again); with it, the server refuses the wrong
    offset and the client asks again."""
    server, creds = cargohold
    data = os.urandom(6 << 20)
    digest = Digest.of(data)
    with FaultProxy(server.url) as proxy, RegistryClient(proxy.host, credentials=creds, retry=FAST) as client:
        proxy.faults.append(Fault("PATCH", "/blobs/uploads/", drop_request_after=2 << 20))
        proxy.faults.append(Fault("GET", "/blobs/uploads/", status=200, headers={"Range": "0-0"}))
        assert client.upload_blob("ch/lagging", digest, len(data), bytes_source(data)) == "uploaded"
        assert client.blob_exists("ch/lagging", digest) == len(data)
    patches = [s for s in proxy.seen if s.method == "PATCH" and s.status != 401]
    starts = [int(s.headers["Content-Range"].split("-")[0]) if "Content-Range" in s.headers else None for s in patches]
    assert starts[0] is None and starts[1] == 0, starts  # fresh session: a stream; first resume: from the answer
    assert patches[1].status not in (202, 204), "a resume at the wrong offset must be refused, not appended"
    assert patches[-1].status == 202 and starts[-1] is not None and starts[-1] > 0, starts
    assert patches[-1].request_bytes == len(data) - starts[-1], "only the unconfirmed tail may be re-sent"
    sessions = [s for s in proxy.seen if s.method == "POST" and "/blobs/uploads/" in s.path and s.status == 202]
    assert len(sessions) == 1, "resumed, not started over"


def test_a_session_that_keeps_answering_empty_after_a_refusal_is_started_over(
    cargohold: tuple[InProcessServer, Credentials],
) -> None:
    """``Range: 0-0`` is what a session holding nothing says, and also one holding one byte: when a resume from 0
    is refused and the session still says ``0-0``, there is no offset to resume from, so the client starts a
    fresh session at once instead of trading 416s with it until its retries run out."""
    server, creds = cargohold
    data = os.urandom(6 << 20)
    digest = Digest.of(data)
    with FaultProxy(server.url) as proxy, RegistryClient(proxy.host, credentials=creds, retry=FAST) as client:
        proxy.faults.append(Fault("PATCH", "/blobs/uploads/", drop_request_after=2 << 20))
        proxy.faults.extend(Fault("GET", "/blobs/uploads/", status=200, headers={"Range": "0-0"}) for _ in range(12))
        assert client.upload_blob("ch/empty", digest, len(data), bytes_source(data)) == "uploaded"
        assert client.blob_exists("ch/empty", digest) == len(data)
    sessions = [s for s in proxy.seen if s.method == "POST" and "/blobs/uploads/" in s.path and s.status == 202]
    patches = [s for s in proxy.seen if s.method == "PATCH" and s.status != 401]
    assert [s.status for s in patches][1:] == [416, 202] and len(sessions) == 2
    assert "Content-Range" not in patches[-1].headers and patches[-1].request_bytes == len(data), "a fresh stream"
