"""CI jobs ride out a registry restart: the real ``cargohold`` CLI against a real ``cargohold serve`` that is
stopped mid-transfer (SIGTERM, or ``kill -9``) and started again on the same port and data directory after
a pause. Every command completes with the same digests, and what was transferred before the restart is not
transferred again (the server's byte counters say so). Then the budget: a server that stays down fails the
command after about ``--retry-for``, with one sentence; a refusal fails at once.

How the restart lands mid-transfer without guessing at timing: the test watches the bytes moving (the
server's staged uploads, the files the CLI writes, what the server sends with ``sendfile``, the
destination's upload sessions) and restarts once a few MiB have moved, while the command is still running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cargohold.client.control import ControlClient
from cargohold.client.credentials import Credentials
from cargohold.client.registry import RegistryClient
from cargohold.client.settings import Connection
from cargohold.images import DockerEngine, save_image
from cargohold.oci.layout import OCILayout
from cargohold.sample import SampleImage, write_sample_image
from refregistry import RefRegistry, refregistry_fixture
from servers import ServerProcess
from test_images_docker import dockerd

__all__ = ["dockerd", "refregistry_fixture"]

pytestmark = pytest.mark.slow

MiB = 1 << 20
PAUSE = 0.5
"""How long the registry stays down between stop and start, on top of its start-up (about 2 s): an outage the
client must notice and wait out."""
MOVED_BEFORE_RESTART = 3 * MiB
"""The restart comes once the CLI has written this much: the transfer is under way, far from done."""
SMALL_BLOBS = 64 << 10
"""Slack for small blobs (the config), retried whole rather than resumed."""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module: each test restarts it, which loses nothing (that is the point)."""
    server = ServerProcess(
        data_dir=tmp_path_factory.mktemp("restarts") / "data",
        # Loopback destinations (the reference registry) are allowed for server-side pushes.
        extra_args=["--shutdown-timeout", "5s", "--push-allow-network", "127.0.0.0/8"],
    ).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Command:
    """A ``cargohold`` CLI process and its output files."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def wait_for(self, measure: Callable[[], int], amount: int = MOVED_BEFORE_RESTART, timeout: float = 60) -> None:
        """Wait until ``measure()`` (bytes moved so far) reaches ``amount``, while the command still runs."""
        deadline = time.monotonic() + timeout
        while measure() < amount:
            assert self.process.poll() is None, f"the command ended before the restart:\n{self.errors()}"
            assert time.monotonic() < deadline, "the transfer did not start"
            time.sleep(0.002)

    def finish(self, timeout: float = 120.0) -> tuple[int, str, str]:
        code = self.process.wait(timeout=timeout)
        return code, self.stdout.read_text(), self.errors()

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace")


def cargohold(tmp_path: Path, server: ServerProcess, *args: str, env: dict[str, str] | None = None) -> Command:
    stdout, stderr = tmp_path / "cli.out", tmp_path / "cli.err"
    environment = {
        **os.environ,
        "CARGOHOLD_REGISTRY": server.url,
        "CARGOHOLD_TOKEN": server.admin_token,
        "CARGOHOLD_CONFIG": str(tmp_path / "no-login.json"),
        "CARGOHOLD_PROGRESS": "plain",
        "CARGOHOLD_RETRY_FOR": "30s",
        **(env or {}),
    }
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "cargohold", *args], stdout=out, stderr=err, env=environment)
    return Command(process, stdout, stderr)


def written(pid: int) -> int:
    """Bytes process ``pid`` wrote to files or sent with ``sendfile`` (``wchar``; plain socket sends do
    not count)."""
    with open(f"/proc/{pid}/io") as io:
        for line in io:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise AssertionError("no wchar in /proc/<pid>/io")


def served_from_now(server: ServerProcess) -> Callable[[], int]:
    """Blob bytes the server sends (``sendfile``) from now on."""
    assert server.process is not None
    pid = server.process.pid
    start = written(pid)
    return lambda: written(pid) - start


def restart(server: ServerProcess | RefRegistry, *, kill: bool) -> None:
    server.stop(kill=kill)
    time.sleep(PAUSE)  # the outage is what is being tested: the client must wait it out
    server.start()


def metric(server: ServerProcess, name: str) -> float:
    with server.client() as http:
        text = http.get("/metrics").text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} is not in /metrics"
    return float(match.group(1))


def notices(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "is unavailable (" in line and "retrying for up to" in line]


def new_project(server: ServerProcess, name: str) -> Connection:
    with ControlClient(server.url, server.admin_token) as control:
        project = control.create_project(name)
    return Connection(server.url, server.admin_token, "test", str(project.id))


def upload_sessions(server: ServerProcess) -> set[Path]:
    return set((server.data_dir / "uploads").iterdir())


def staged_bytes(server: ServerProcess, earlier_sessions: set[Path]) -> int:
    total = 0
    for path in upload_sessions(server) - earlier_sessions:
        with contextlib.suppress(FileNotFoundError):  # committed meanwhile
            total += path.stat().st_size
    return total


def kept_on_disk(server: ServerProcess, image: SampleImage, earlier_sessions: set[Path]) -> int:
    """Upload bytes the stopped server kept: the sessions this test staged, and the image's blobs it
    committed."""
    staged = staged_bytes(server, earlier_sessions)
    blobs = server.data_dir / "blobs"
    committed = sum(
        d.size for d in image.blobs if (blobs / d.digest.algorithm / d.digest.hex[:2] / d.digest.hex).exists()
    )
    return staged + committed


def total_size(image: SampleImage) -> int:
    return sum(descriptor.size for descriptor in image.blobs)


MODES = pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "kill-9"])


@MODES
def test_save_completes_across_a_restart_without_sending_anything_twice(
    registry: ServerProcess, tmp_path: Path, kill: bool
) -> None:
    image = write_sample_image(tmp_path / "image", layers=3, layer_size=16 * MiB, seed=1900 + kill, ref="v1")
    conn = new_project(registry, f"save-{'kill' if kill else 'term'}")
    earlier_sessions = upload_sessions(registry)
    command = cargohold(
        tmp_path,
        registry,
        "save",
        f"oci:{tmp_path / 'image'}:v1",
        "--json",
        env={"CARGOHOLD_PROJECT_ID": str(conn.project)},
    )
    command.wait_for(lambda: staged_bytes(registry, earlier_sessions))
    registry.stop(kill=kill)
    kept = kept_on_disk(registry, image, earlier_sessions)
    time.sleep(PAUSE)
    registry.start()

    code, out, err = command.finish()
    assert code == 0, err
    saved = json.loads(out)
    assert saved["digest"] == str(image.manifest.digest)
    with RegistryClient(registry.host, credentials=Credentials("x-token", registry.admin_token)) as client:
        assert client.get_manifest(str(conn.project), saved["build_id"]).digest == image.manifest.digest
        for descriptor in image.layers:
            assert client.download_blob(str(conn.project), descriptor.digest, lambda _chunk: None) == descriptor.size
    # Resumed, not repeated: the restarted server received only what the first one had not kept.
    received = metric(registry, "cargohold_blob_bytes_received_total")
    assert 0 < kept < total_size(image)
    assert received <= total_size(image) - kept + SMALL_BLOBS, (received, kept)
    assert len(notices(err)) == 1, err


@MODES
def test_pull_to_a_layout_completes_across_a_restart(registry: ServerProcess, tmp_path: Path, kill: bool) -> None:
    image = write_sample_image(tmp_path / "image", layers=3, layer_size=12 * MiB, seed=1910 + kill, ref="v1")
    conn = new_project(registry, f"pull-{'kill' if kill else 'term'}")
    saved = save_image(conn, f"oci:{tmp_path / 'image'}:v1")
    out_dir = tmp_path / "pulled"
    command = cargohold(tmp_path, registry, "pull", saved.build_id, "-o", f"oci:{out_dir}", "--json")
    command.wait_for(lambda: written(command.process.pid))  # blob files growing in the layout
    restart(registry, kill=kill)

    code, out, err = command.finish()
    assert code == 0, err
    assert json.loads(out)["digest"] == str(image.manifest.digest)
    layout = OCILayout.open(out_dir)
    for descriptor in image.blobs:  # each blob read back through the layout's verifying reader
        assert sum(len(chunk) for chunk in layout.iter_blob(descriptor.digest, descriptor.size)) == descriptor.size
    # What had arrived before the restart was not fetched again (ranged resumes, or finished in the drain).
    served = metric(registry, "cargohold_blob_bytes_served_total")
    assert served <= total_size(image) - MOVED_BEFORE_RESTART + SMALL_BLOBS, served


@MODES
def test_pull_into_docker_completes_across_a_restart(
    registry: ServerProcess, dockerd: str, tmp_path: Path, kill: bool
) -> None:
    image = write_sample_image(tmp_path / "image", layers=2, layer_size=12 * MiB, seed=1920 + kill, ref="v1")
    conn = new_project(registry, f"docker-{'kill' if kill else 'term'}")
    saved = save_image(conn, f"oci:{tmp_path / 'image'}:v1")
    tag = f"cargohold-restart/app:{'kill' if kill else 'term'}"
    sent = served_from_now(registry)
    command = cargohold(tmp_path, registry, "pull", saved.build_id, "-t", tag, env={"DOCKER_HOST": dockerd})
    command.wait_for(sent)
    restart(registry, kill=kill)

    code, _out, err = command.finish()
    assert code == 0, err
    with DockerEngine(dockerd) as engine:
        inspected = engine.inspect_image(tag)
    assert inspected is not None and inspected["Id"] == str(image.config.digest)
    assert inspected["RootFS"]["Layers"] == [str(d.digest) for d in image.layers]


@MODES
def test_push_completes_across_a_restart_of_cargohold(
    registry: ServerProcess, refregistry: RefRegistry, tmp_path: Path, kill: bool
) -> None:
    """Streamed through the client: the source GETs resume from the new server, the destination's uploads
    continue undisturbed."""
    image = write_sample_image(tmp_path / "image", layers=3, layer_size=12 * MiB, seed=1930 + kill, ref="v1")
    conn = new_project(registry, f"push-{'kill' if kill else 'term'}")
    saved = save_image(conn, f"oci:{tmp_path / 'image'}:v1")
    destination = f"{refregistry.host}/restarts/app:1"
    sent = served_from_now(registry)
    command = cargohold(tmp_path, registry, "push", saved.build_id, "-t", destination, "--transfer", "client")
    command.wait_for(sent)
    restart(registry, kill=kill)

    code, _out, err = command.finish()
    assert code == 0, err
    with RegistryClient(refregistry.host) as client:
        assert client.get_manifest("restarts/app", "1").digest == image.manifest.digest
        for descriptor in image.blobs:
            assert client.blob_exists("restarts/app", descriptor.digest) == descriptor.size
    served = metric(registry, "cargohold_blob_bytes_served_total")
    assert served <= total_size(image) - MOVED_BEFORE_RESTART + SMALL_BLOBS, served


def _destination_upload_bytes(destination: RefRegistry) -> int:
    """Bytes in the reference registry's upload directories right now. Its uploads finish (and their directories
    vanish) while this walks them: ``os.walk`` skips a directory that went away, a file that did counts 0."""
    total = 0
    for directory, _subdirectories, files in os.walk(destination.root / "storage"):
        if "data" in files and "_uploads" in Path(directory).parts:
            with contextlib.suppress(FileNotFoundError):
                total += (Path(directory) / "data").stat().st_size
    return total


@MODES
def test_server_side_push_waits_for_a_destination_that_restarts(
    registry: ServerProcess, refregistry: RefRegistry, tmp_path: Path, kill: bool
) -> None:
    image = write_sample_image(tmp_path / "image", layers=2, layer_size=16 * MiB, seed=1940 + kill, ref="v1")
    conn = new_project(registry, f"server-push-{'kill' if kill else 'term'}")
    saved = save_image(conn, f"oci:{tmp_path / 'image'}:v1")
    destination = f"{refregistry.host}/restarts/server:1"
    command = cargohold(tmp_path, registry, "push", saved.build_id, "-t", destination, "--transfer", "server")
    command.wait_for(lambda: _destination_upload_bytes(refregistry))  # the server's upload is under way
    restart(refregistry, kill=kill)

    code, out, err = command.finish()
    assert code == 0, err
    assert "by the Cargohold server" in out, out
    with RegistryClient(refregistry.host) as client:
        assert client.get_manifest("restarts/server", "1").digest == image.manifest.digest
        for descriptor in image.blobs:
            assert client.blob_exists("restarts/server", descriptor.digest) == descriptor.size
    assert "the Cargohold server" in err and "is retrying" in err, err


def test_a_server_down_for_longer_than_the_budget_fails_after_about_the_budget(tmp_path: Path) -> None:
    down = ServerProcess(data_dir=tmp_path / "data")  # never started: nothing listens on its port
    write_sample_image(tmp_path / "image", layers=1, layer_size=1024, seed=1950, ref="v1")
    started = time.monotonic()
    command = cargohold(
        tmp_path,
        down,
        "save",
        f"oci:{tmp_path / 'image'}:v1",
        env={"CARGOHOLD_PROJECT_ID": "p", "CARGOHOLD_RETRY_FOR": "3s"},
    )
    code, _out, err = command.finish()
    elapsed = time.monotonic() - started
    assert code == 1
    assert 3.0 <= elapsed < 3.0 + 10, f"gave up after {elapsed:.1f} s with a 3 s budget"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stayed unavailable for the whole retry budget of 3 s" in errors[0], err
    assert len(notices(err)) == 1, err


def test_a_save_whose_server_stays_down_fails_after_about_the_budget(registry: ServerProcess, tmp_path: Path) -> None:
    write_sample_image(tmp_path / "image", layers=2, layer_size=12 * MiB, seed=1955, ref="v1")
    conn = new_project(registry, "save-outlasting-the-budget")
    earlier_sessions = upload_sessions(registry)
    command = cargohold(
        tmp_path,
        registry,
        "save",
        f"oci:{tmp_path / 'image'}:v1",
        env={"CARGOHOLD_PROJECT_ID": str(conn.project), "CARGOHOLD_RETRY_FOR": "3s"},
    )
    command.wait_for(lambda: staged_bytes(registry, earlier_sessions))
    registry.stop(kill=True)
    stopped = time.monotonic()
    try:
        code, _out, err = command.finish()
        elapsed = time.monotonic() - stopped
    finally:
        registry.start()
    assert code == 1
    assert 2.9 <= elapsed < 3.0 + 8, f"gave up {elapsed:.1f} s after the server went away, with a 3 s budget"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "stayed unavailable for the whole retry budget of 3 s" in errors[0]
    assert "the build stays pending until it expires" in errors[0], "marking it failed was not possible either"
    assert len(notices(err)) == 1, err


def test_a_refusal_fails_at_once_whatever_the_budget(registry: ServerProcess, tmp_path: Path) -> None:
    write_sample_image(tmp_path / "image", layers=1, layer_size=1024, seed=1960, ref="v1")
    started = time.monotonic()
    command = cargohold(
        tmp_path,
        registry,
        "save",
        f"oci:{tmp_path / 'image'}:v1",
        env={"CARGOHOLD_PROJECT_ID": "p", "CARGOHOLD_TOKEN": "chp_not-a-valid-token", "CARGOHOLD_RETRY_FOR": "5m"},
    )
    code, _out, err = command.finish()
    assert code == 1 and "error:" in err and not notices(err), err
    assert time.monotonic() - started < 15, "a refused token must not be retried"
    started = time.monotonic()
    missing = cargohold(tmp_path, registry, "pull", "nosuchbuild0", "-o", f"oci:{tmp_path / 'out'}")
    code, _out, err = missing.finish()
    assert code == 1 and "error:" in err and not notices(err), err
    assert time.monotonic() - started < 15, "an unknown build must not be retried"
