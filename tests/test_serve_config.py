"""``cargohold serve`` settings: the ``--config`` file, precedence, ``--print-config``, every variable in
``--help``, and the public URL (required off loopback; the only address clients are ever handed)."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import click
import httpx
import pytest
from click.testing import CliRunner

from cargohold.cli import main as cli_main
from cargohold.cli.serve import serve
from servers import ServerProcess

SRC = Path(__file__).resolve().parent.parent / "src" / "cargohold"


def print_config(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli_main.app, ["serve", *args, "--print-config"], env=env or {})
    return result.exit_code, result.output


def effective(output: str) -> dict[str, tuple[str, str]]:
    """``key -> (value as printed, source)`` from ``--print-config``."""
    found = {}
    for line in output.splitlines():
        if match := re.match(r"^(\w+) = (.*)  # (.+)$", line):
            found[match[1]] = (match[2], match[3])
    return found


def test_precedence_is_flag_then_env_then_file_then_default(tmp_path: Path) -> None:
    config = tmp_path / "cargohold.toml"
    config.write_text(
        'port = 6001\nhost = "127.0.0.2"\nlog_format = "json"\ngc_grace = "2h"\n'
        'trusted_proxies = ["10.0.0.0/8", "192.168.0.0/16"]\nmax_blob_size = 1048576\n'
    )
    code, output = print_config(
        "--config", str(config), "--port", "6003", env={"CARGOHOLD_PORT": "6002", "CARGOHOLD_GC_GRACE": "3h"}
    )
    assert code == 0, output
    values = effective(output)
    assert values["port"] == ("6003", "flag")
    assert values["gc_grace"] == ('"3h"', "env")
    assert values["host"] == ('"127.0.0.2"', "file")
    assert values["log_format"] == ('"json"', "file")
    assert values["trusted_proxies"] == ('["10.0.0.0/8", "192.168.0.0/16"]', "file")
    assert values["max_blob_size"] == ('"1048576"', "file")
    assert values["upload_ttl"] == ('"24h"', "default")
    assert values["public_url"] == ('"http://127.0.0.2:6003"', "default, derived")
    # The config file may also come from the environment.
    code, output = print_config(env={"CARGOHOLD_SERVER_CONFIG": str(config)})
    assert effective(output)["port"] == ("6001", "file")


def test_print_config_redacts_secrets_and_is_itself_a_config_file(tmp_path: Path) -> None:
    secret = "s3cret-admin-token-that-is-long-enough"
    code, output = print_config(
        "--database-url",
        "postgresql://cargo:dbpassword@db.internal/cargohold",
        env={"CARGOHOLD_ADMIN_TOKEN": secret},
    )
    assert code == 0, output
    assert secret not in output and "dbpassword" not in output
    values = effective(output)
    assert values["admin_token"] == ('"<redacted>"', "env")
    assert values["database_url"] == ('"postgresql://cargo:<redacted>@db.internal/cargohold"', "flag")
    # Printed, saved and used as --config: the same settings (the redacted ones dropped).
    reused = tmp_path / "printed.toml"
    reused.write_text("\n".join(line for line in output.splitlines() if "<redacted>" not in line) + "\n")
    code, again = print_config("--config", str(reused))
    assert code == 0, again
    assert {k: v[0] for k, v in effective(again).items() if k not in ("admin_token", "database_url")} == {
        k: v[0] for k, v in values.items() if k not in ("admin_token", "database_url")
    }


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("prot = 5000\n", "unknown setting 'prot'; did you mean port?"),
        ("trusted-proxies = []\n", "unknown setting 'trusted-proxies'; did you mean trusted_proxies?"),
        ("trusted_proxy = ['10.0.0.0/8']\n", "did you mean trusted_proxies?"),
        ('port = "5000"\n', "port must be a whole number, not a string ('5000')"),
        ("fsync = 1\n", "fsync must be true or false, not a whole number (1)"),
        ("trusted_proxies = [1]\n", "trusted_proxies must be a list of strings"),
        ("port = 70000\n", "port: 70000 is not in the range"),
        ('log_format = "xml"\n', "log_format: 'xml' is not one of 'text', 'json'"),
        ("[server]\nport = 1\n", "[server] is a table, but the settings are plain keys"),
        ("port = \n", "is not valid TOML"),
        ('gc_grace = "soon"\n', "--gc-grace (gc_grace): 'soon' is not a duration"),
        ('trusted_proxies = ["10.0.0.0/33"]\n', "--trusted-proxy (trusted_proxies): '10.0.0.0/33' is not a network"),
    ],
)
def test_a_bad_config_file_is_one_sentence_naming_the_key(tmp_path: Path, content: str, expected: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    code, output = print_config("--config", str(config))
    assert code == 2, output
    error = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and expected in error[0], output


def test_every_setting_is_a_config_key_and_settings_field() -> None:
    from cargohold.config import ServerSettings
    from cargohold.config.settings import ServerSettings as Same

    assert ServerSettings is Same
    fields = set(ServerSettings.__dataclass_fields__)
    keys = {param.name for param in serve.params if isinstance(param, click.Option)} - {"config_file", "print_config"}
    assert keys <= fields, f"config keys that are not settings: {sorted(keys - fields)}"
    for issue_key in ("port", "data_dir", "public_url", "tls_cert", "tls_key", "log_format", "trusted_proxies"):
        assert issue_key in keys


def test_every_environment_variable_is_in_serve_help() -> None:
    """Each option names its variable, and every ``CARGOHOLD_*`` variable the server reads is an option."""
    result = CliRunner().invoke(cli_main.app, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    help_text = " ".join(result.output.split())
    for param in serve.params:
        if isinstance(param, click.Option) and param.name not in ("print_config", "help"):
            assert param.envvar, f"--{param.name} has no environment variable"
            assert f"env var: {param.envvar}" in help_text, param.envvar
    read_by_server = set()
    for package in ("registry", "config", "edge", "ops", "storage", "metadata", "lifecycle"):
        for path in (SRC / package).rglob("*.py"):
            read_by_server |= set(re.findall(r"\"(CARGOHOLD_[A-Z_]+)\"", path.read_text()))
    read_by_server = {name for name in read_by_server if "_TEST_" not in name}  # test hooks
    read_by_server -= {"CARGOHOLD_CA_CERT"}  # the client side's (server-side pushes share the client's TLS)
    assert "CARGOHOLD_ADMIN_TOKEN" in help_text
    missing = {name for name in read_by_server if name not in help_text}
    assert not missing, f"read by the server but not in serve --help: {sorted(missing)}"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3"])
def test_binding_beyond_loopback_needs_a_public_url(tmp_path: Path, host: str) -> None:
    result = CliRunner().invoke(cli_main.app, ["serve", "--host", host, "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: --host"), result.output
    assert "--public-url" in lines[0]
    assert not (tmp_path / "d").exists()


def test_a_public_url_must_be_a_base_url(tmp_path: Path) -> None:
    for bad in ("cargohold.example.com", "https://cargohold.example.com/registry", "ftp://x"):
        result = CliRunner().invoke(
            cli_main.app, ["serve", "--host", "0.0.0.0", "--public-url", bad, "--data-dir", str(tmp_path / "d")]
        )
        assert result.exit_code == 1 and "--public-url" in result.output, result.output


def test_everything_a_client_sees_comes_from_the_public_url(tmp_path: Path) -> None:
    public = "https://registry.example.test:8443"
    server = ServerProcess(data_dir=tmp_path / "data", extra_args=["--public-url", public]).start()
    try:
        with server.anonymous() as anonymous:
            challenge = anonymous.get("/v2/p/manifests/latest").headers["WWW-Authenticate"]
            assert f'realm="{public}/token"' in challenge
            discovery = anonymous.get("/api/v1/oidc").json()
            assert discovery["audience"] == public
            assert discovery["exchange_url"] == f"{public}/auth/oidc/github-actions"
        with server.client() as http:
            project = http.post("/api/v1/projects", json={"name": "pub"}).json()
            assert project["registry"] == f"registry.example.test:8443/{project['id']}"
            build = http.post(f"/api/v1/projects/{project['id']}/builds", json={}).json()
            assert build["registry"] == "registry.example.test:8443"
            assert build["reference"].startswith(f"registry.example.test:8443/{project['id']}:")
            upload = http.post(f"/v2/{project['id']}/blobs/uploads/")
            assert upload.status_code == 202 and upload.headers["Location"].startswith(f"/v2/{project['id']}/")
            # Relative: the client resolves it against the URL it used (the proxy's), never 127.0.0.1.
            assert "127.0.0.1" not in str(upload.headers) and "127.0.0.1" not in str(build)
            data = b"x" * 10
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            put = http.put(upload.headers["Location"], params={"digest": digest}, content=data)
            assert put.status_code == 201 and put.headers["Location"] == f"/v2/{project['id']}/blobs/{digest}"
        token = httpx.get(
            f"{server.url}/token",
            params={"service": "cargohold", "scope": f"repository:{project['id']}:pull"},
            headers={"Authorization": "Basic " + base64.b64encode(f"x-token:{server.admin_token}".encode()).decode()},
        ).json()
        assert token["token"]
    finally:
        server.stop()


def test_an_explicit_public_url_allows_any_address(tmp_path: Path) -> None:
    from cargohold.config import ServerSettings
    from cargohold.config.validate import check_startup

    for host in ("0.0.0.0", "::", "10.1.2.3"):
        check_startup(ServerSettings(host=host, data_dir=tmp_path, public_url="https://cargohold.example.com:5000"))
    for host in ("127.0.0.1", "localhost", "::1", "127.3.4.5"):
        check_startup(ServerSettings(host=host, data_dir=tmp_path))  # loopback: the derived URL is fine
