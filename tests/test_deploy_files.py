"""The deployment files are valid and say what the docs say: the systemd unit passes ``systemd-analyze
verify`` and is hardened, the alert rules pass ``promtool check rules`` and use only metrics a real server
exports, the nginx reference passes ``nginx -t``, and the Dockerfile/compose example have the properties the
issue asks for (the image itself is built and run in tests/test_container_image.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
from ruamel.yaml import YAML

from cargohold.ops import healthcheck
from fixtures_images import require_tools
from servers import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "cargohold.service"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
NGINX = ROOT / "deploy" / "nginx" / "cargohold.conf"


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    require_tools("systemd-analyze")
    text = UNIT.read_text()
    settings = unit_settings(text)
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "StateDirectory": "cargohold",
        "NoNewPrivileges": "yes",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
    }.items():
        assert value in settings.get(key, []), f"{key}={value} is missing from {UNIT.name}"
    assert "CARGOHOLD_DATA_DIR=%S/cargohold" in settings["Environment"], "the data directory is the state directory"
    timeout = int(settings["TimeoutStopSec"][0].rstrip("s"))
    assert timeout > 30, "systemd must not kill the server before its drain deadline (--shutdown-timeout 30s)"
    assert text.count("ExecStart=/opt/cargohold/bin/cargohold serve") == 1
    assert verify_problems(text, tmp_path) == []


def verify_problems(unit: str, directory: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about ``unit`` (its ExecStart pointed at this checkout's
    cargohold, since verify checks that the program exists)."""
    local = directory / "cargohold.service"
    local.write_text(unit.replace("/opt/cargohold/bin/cargohold", str(Path(sys.executable).with_name("cargohold"))))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 on some problems (an unparsable value is only a warning): any output is a problem.
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "sysinit.target not found" not in line  # no systemd as PID 1 in a container
    ]
    return problems if problems or result.returncode == 0 else [f"exit status {result.returncode}"]


def test_systemd_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: the same unit with a typo in a hardening option does."""
    require_tools("systemd-analyze")
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=strictly")
    assert any("strictly" in line for line in verify_problems(broken, tmp_path))


def test_alert_rules_pass_promtool_and_use_real_metrics(server: ServerProcess) -> None:
    require_tools("promtool")
    result = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = YAML(typ="safe").load(ALERTS.read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = {name for expr in expressions for name in re.findall(r"\b(cargohold_[a-z_]+)", expr)}
    exported = httpx.get(f"{server.url}/metrics", auth=("x-token", server.admin_token)).text
    families = set(re.findall(r"^# TYPE (\w+) ", exported, re.MULTILINE))
    names = families | {f"{family}_total" for family in families if not family.endswith("_total")}
    assert used and used <= names, f"metrics the rules use but no server exports: {sorted(used - names)}"


def test_nginx_reference_config_passes_nginx_t(tmp_path: Path) -> None:
    require_tools("nginx")
    from tls_helpers import PrivateCA

    cert, key, _ = PrivateCA.create(tmp_path / "ca").issue("nginx", ("cargohold.example.com",))
    text = NGINX.read_text()
    for directive in (
        "client_max_body_size 0;",
        "proxy_request_buffering off;",
        "proxy_buffering off;",
        "X-Forwarded-For $proxy_add_x_forwarded_for;",
        "X-Forwarded-Proto $scheme;",
        "proxy_read_timeout",
    ):
        assert directive in text, directive
    text = text.replace("/etc/nginx/tls/fullchain.pem", str(cert)).replace("/etc/nginx/tls/privkey.pem", str(key))
    (tmp_path / "cargohold.conf").write_text(text)
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{ access_log off; include {tmp_path}/cargohold.conf; }}\n"
    )
    result = subprocess.run(
        [shutil.which("nginx") or "/usr/sbin/nginx", "-t", "-c", str(main), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr


def test_dockerfile_and_compose_example() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert len(stages) == 2 and all(stage == "${BASE_IMAGE}" for stage in stages), stages
    final = dockerfile[dockerfile.rindex("\nFROM ") :]
    assert re.search(r"^USER cargohold$", final, re.MULTILINE), "the server runs as a non-root user"
    assert "VOLUME /data" in final and "CARGOHOLD_DATA_DIR=/data" in final
    assert "HEALTHCHECK" in final and "cargohold.ops.healthcheck" in final
    assert not re.search(r"\b(gcc|build-essential|python3-dev|cc)\b", dockerfile), "no compilers in the image"
    assert '"/src[server]"' in dockerfile
    compose = YAML(typ="safe").load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["cargohold"]
    assert "cargohold-data:/data" in service["volumes"]
    assert service["environment"]["CARGOHOLD_PUBLIC_URL"], "the container listens on 0.0.0.0: a public URL is needed"


def test_healthcheck_module(server: ServerProcess, tmp_path: Path) -> None:
    assert healthcheck.healthz_url({"CARGOHOLD_PORT": "6000"}) == "http://127.0.0.1:6000/healthz"
    assert healthcheck.healthz_url({"CARGOHOLD_TLS_CERT": "/c.pem"}) == "https://127.0.0.1:5000/healthz"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARGOHOLD_")}
    healthy = subprocess.run(
        [sys.executable, "-m", "cargohold.ops.healthcheck"],
        env={**env, "CARGOHOLD_PORT": str(server.port)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert healthy.returncode == 0 and '"status": "ok"' in healthy.stdout, healthy.stderr
    server.stop()
    down = subprocess.run(
        [sys.executable, "-m", "cargohold.ops.healthcheck"],
        env={**env, "CARGOHOLD_PORT": str(server.port)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert down.returncode == 1 and "unhealthy" in down.stderr
