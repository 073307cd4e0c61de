"""HTTPS in the server (``--tls-cert``/``--tls-key``) and a private CA in the client (``--ca-cert``).

One server with a certificate from a test CA serves the round trips: skopeo pushes and pulls with
``--dest-cert-dir``/``--src-cert-dir``, the CLI saves and pulls with ``--ca-cert``, and without the CA the
CLI says which flag fixes it. The reload test starts its own server: it replaces the certificate under a
keep-alive connection that must survive.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from cargohold.client.control import ControlClient
from cargohold.sample import write_sample_image
from servers import ServerProcess
from tls_helpers import PrivateCA

pytestmark = pytest.mark.tools


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    return PrivateCA.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_server(ca: PrivateCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    cert, key, _serial = ca.issue("server")
    proc = ServerProcess(
        data_dir=tmp_path_factory.mktemp("tls") / "data",
        extra_args=["--tls-cert", str(cert), "--tls-key", str(key)],
        ca_cert=ca.cert_path,
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CARGOHOLD_", "SSL_CERT_"))}
    return subprocess.run(
        [sys.executable, "-m", "cargohold", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, "CARGOHOLD_RETRY_FOR": "0", **(env or {})},
        check=False,
    )


def _peer_certificate_serial(port: int, ca: PrivateCA) -> int:
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request("GET", "/healthz")
        connection.getresponse().read()
        assert connection.sock is not None
        der = connection.sock.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        connection.close()


def test_cli_round_trip_with_ca_cert_and_the_hint_without_it(
    tls_server: ServerProcess, ca: PrivateCA, tmp_path: Path
) -> None:
    with ControlClient(tls_server.url, tls_server.admin_token, verify=tls_server.verify()) as control:  # type: ignore[arg-type]
        project = str(control.create_project("tls").id)
    image = write_sample_image(tmp_path / "img", layers=2, layer_size=32 << 10, seed=7, ref="latest")
    common = ["--registry", tls_server.url, "--token", tls_server.admin_token, "--project", project]

    refused = cli("save", f"oci:{tmp_path / 'img'}", *common)
    assert refused.returncode == 1, refused.stderr
    assert "--ca-cert" in refused.stderr and "CARGOHOLD_CA_CERT" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr

    saved = cli("--ca-cert", str(ca.cert_path), "save", f"oci:{tmp_path / 'img'}", *common, "--json")
    assert saved.returncode == 0, saved.stderr
    build_id = json.loads(saved.stdout)["build_id"]
    pulled = cli(
        "pull", build_id, "-o", f"oci:{tmp_path / 'out'}", *common, env={"CARGOHOLD_CA_CERT": str(ca.cert_path)}
    )
    assert pulled.returncode == 0, pulled.stderr
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == str(image.manifest.digest)


def test_actions_take_a_ca_cert_input(tls_server: ServerProcess, ca: PrivateCA, tmp_path: Path) -> None:
    with ControlClient(tls_server.url, tls_server.admin_token, verify=tls_server.verify()) as control:  # type: ignore[arg-type]
        project = str(control.create_project("tls-action").id)
    write_sample_image(tmp_path / "img", layers=1, layer_size=8 << 10, seed=9, ref="latest")
    common = ["--registry", tls_server.url, "--token", tls_server.admin_token, "--project", project]
    saved = cli("--ca-cert", str(ca.cert_path), "save", f"oci:{tmp_path / 'img'}", *common, "--json")
    build_id = json.loads(saved.stdout)["build_id"]

    def step(**inputs: str) -> subprocess.CompletedProcess[str]:
        for name in ("output", "summary"):
            (tmp_path / name).write_text("")
        env = {
            "GITHUB_ACTIONS": "true",
            "GITHUB_OUTPUT": str(tmp_path / "output"),
            "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
            "INPUT_REGISTRY": tls_server.url,
            "INPUT_TOKEN": tls_server.admin_token,
            "INPUT_BUILD-ID": build_id,
            "INPUT_OUTPUT": f"oci:{tmp_path / 'pulled'}",
            **{f"INPUT_{name.upper().replace('_', '-')}": value for name, value in inputs.items()},
        }
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("CARGOHOLD_", "SSL_CERT_", "INPUT_"))}
        return subprocess.run(
            [sys.executable, "-X", "utf8", "-I", "-m", "cargohold.actions.pull"],
            capture_output=True, text=True, timeout=120, env={**clean, "CARGOHOLD_RETRY_FOR": "0", **env}, check=False,
        )  # fmt: skip

    untrusted = step()
    assert untrusted.returncode != 0 and "ca-cert input" in untrusted.stdout + untrusted.stderr
    trusted = step(ca_cert=str(ca.cert_path))
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert (tmp_path / "pulled" / "index.json").is_file()
    missing = step(ca_cert=str(tmp_path / "nope.pem"))
    assert missing.returncode != 0 and "'ca-cert'" in missing.stdout + missing.stderr


def test_skopeo_round_trip_with_a_cert_dir(tls_server: ServerProcess, ca: PrivateCA, tmp_path: Path) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(ca.cert_path, certs / "ca.crt")
    write_sample_image(tmp_path / "img", layers=1, layer_size=16 << 10, seed=8, ref="latest")
    creds = f"x-token:{tls_server.admin_token}"
    pushed = subprocess.run(
        ["skopeo", "copy", "--dest-cert-dir", str(certs), "--dest-creds", creds, f"oci:{tmp_path / 'img'}:latest",
         f"docker://{tls_server.host}/skopeo/tls:1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    pulled = subprocess.run(
        ["skopeo", "copy", "--src-cert-dir", str(certs), "--src-creds", creds, f"docker://{tls_server.host}/skopeo/tls:1",
         f"oci:{tmp_path / 'back'}:1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    untrusted = subprocess.run(
        ["skopeo", "inspect", "--creds", creds, f"docker://{tls_server.host}/skopeo/tls:1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr


def test_policy_is_tls12_or_newer_with_http11_keepalive(tls_server: ServerProcess, ca: PrivateCA) -> None:
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    connection = http.client.HTTPSConnection("127.0.0.1", tls_server.port, context=context, timeout=10)
    try:
        for _ in range(3):  # one connection, three requests: keep-alive
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            assert response.status == 200 and response.version == 11
            response.read()
        assert connection.sock is not None
        assert connection.sock.version() in ("TLSv1.2", "TLSv1.3")
        cipher = connection.sock.cipher()
        assert cipher is not None and ("GCM" in cipher[0] or "CHACHA20" in cipher[0])
    finally:
        connection.close()
    old = ssl.create_default_context(cafile=str(ca.cert_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # exactly what the server must refuse
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    refused = http.client.HTTPSConnection("127.0.0.1", tls_server.port, context=old, timeout=10)
    with pytest.raises(ssl.SSLError):
        refused.request("GET", "/healthz")
    refused.close()


def test_sighup_reloads_the_certificate_without_dropping_connections(ca: PrivateCA, tmp_path: Path) -> None:
    first_cert, first_key, first_serial = ca.issue("first")
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(first_cert, live_cert)
    shutil.copy(first_key, live_key)
    server = ServerProcess(
        data_dir=tmp_path / "data",
        extra_args=["--tls-cert", str(live_cert), "--tls-key", str(live_key)],
        ca_cert=ca.cert_path,
    ).start()
    try:
        context = ssl.create_default_context(cafile=str(ca.cert_path))
        kept = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
        kept.request("GET", "/healthz")
        assert kept.getresponse().read()
        kept_socket = kept.sock
        assert _peer_certificate_serial(server.port, ca) == first_serial

        second_cert, second_key, second_serial = ca.issue("second")
        shutil.copy(second_cert, live_cert)
        shutil.copy(second_key, live_key)
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded the TLS certificate" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        assert _peer_certificate_serial(server.port, ca) == second_serial

        kept.request("GET", "/healthz")  # the connection opened before the reload still works
        response = kept.getresponse()
        assert response.status == 200 and response.read()
        assert kept.sock is kept_socket, "the keep-alive connection was not replaced"
        kept.close()

        live_key.write_text("not a key\n")  # a broken reload keeps the current certificate
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "keeping the current TLS certificate" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        assert _peer_certificate_serial(server.port, ca) == second_serial
        assert server.process.poll() is None
    finally:
        server.stop()


def test_unusable_tls_files_refuse_start_in_one_sentence(ca: PrivateCA, tmp_path: Path) -> None:
    cert, _key, _ = ca.issue("lonely")
    _other_cert, other_key, _ = ca.issue("other")
    only_cert = cli("serve", "--data-dir", str(tmp_path / "d1"), "--tls-cert", str(cert))
    assert only_cert.returncode == 1 and "--tls-cert needs --tls-key" in only_cert.stderr
    mismatch = cli("serve", "--data-dir", str(tmp_path / "d2"), "--tls-cert", str(cert), "--tls-key", str(other_key))
    assert mismatch.returncode == 1 and "does not belong to the certificate" in mismatch.stderr, mismatch.stderr
    assert "Traceback" not in mismatch.stderr
    assert not (tmp_path / "d2").exists(), "nothing is created before the settings are known to work"


def test_sighup_without_tls_is_harmless(server_process: ServerProcess) -> None:
    """``systemctl reload`` sends SIGHUP whatever the configuration; its default action would end the server."""
    server = server_process  # a real process: the signal is the point (the `server` fixture is in-process)
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "nothing to reload" not in server.log():
        assert server.process.poll() is None, server.log()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with server.anonymous() as http:
        assert http.get("/healthz").status_code == 200
