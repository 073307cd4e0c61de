"""Where to connect and as whom: registry URL, project and token resolution, and the stored login.

Resolution order (first hit wins), the same for the CLI and the GitHub Actions:

* registry: ``--registry``, ``CARGOHOLD_REGISTRY``, ``cargohold.json`` ``registry``, the stored login;
* project: ``--project``, ``CARGOHOLD_PROJECT_ID``, ``cargohold.json`` ``id`` next to the build context;
* token: ``--token``, ``CARGOHOLD_TOKEN``, the stored login (for that registry), then — inside GitHub
  Actions — a fresh OIDC ID token for the server's audience, exchanged for a short-lived Cargohold token.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cargohold.client import oidc
from cargohold.client.control import ControlClient
from cargohold.client.errors import CargoholdError
from cargohold.client.retry import RetryPolicy

PROJECT_FILE = "cargohold.json"


class SettingsError(CargoholdError):
    """Something needed to connect is missing or unreadable; the message says how to provide it."""


def config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if explicit := env.get("CARGOHOLD_CONFIG"):
        return Path(explicit)
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cargohold" / "config.json"


def normalize_registry_url(value: str) -> str:
    """``host[:port]`` or a URL -> a base URL. Plain HTTP only for loopback hosts unless given explicitly."""
    text = value.strip().rstrip("/")
    if not text:
        raise SettingsError("the registry address is empty; pass --registry https://cargohold.example.com")
    if "://" not in text:
        host = urlsplit(f"//{text}").hostname or ""
        scheme = "http" if host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.") else "https"
        text = f"{scheme}://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"{value!r} is not a registry address; use host:port or https://host")
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def registry_host(url: str) -> str:
    """The ``host[:port]`` part used in image references."""
    return urlsplit(url).netloc


@dataclass(frozen=True, slots=True)
class StoredLogin:
    registry: str
    token: str


def load_login(env: Mapping[str, str] | None = None) -> StoredLogin | None:
    path = config_path(env)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SettingsError(f"cannot read the stored login {path}: {exc}; run cargohold login again") from None
    registry, token = data.get("registry"), data.get("token")
    if not isinstance(registry, str) or not isinstance(token, str):
        raise SettingsError(f"the stored login {path} is incomplete; run cargohold login again")
    return StoredLogin(registry, token)


def save_login(registry: str, token: str, env: Mapping[str, str] | None = None) -> Path:
    """Store the login readable by this user only (0600), written atomically."""
    path = config_path(env)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".json")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"registry": registry, "token": token}, handle)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return path


def clear_login(env: Mapping[str, str] | None = None) -> bool:
    try:
        config_path(env).unlink()
        return True
    except FileNotFoundError:
        return False


def read_project_file(directory: Path | None) -> dict[str, str]:
    """``cargohold.json`` next to the build context (or in the current directory)."""
    for candidate in ([directory] if directory else []) + [Path.cwd()]:
        path = candidate / PROJECT_FILE
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise SettingsError(
                    f'{path} is not valid JSON ({exc}); it should look like {{"id": "<project>"}}'
                ) from None
            if not isinstance(data, dict):
                raise SettingsError(f'{path} must be a JSON object like {{"id": "<project>"}}')
            return {key: str(value) for key, value in data.items() if isinstance(value, str)}
    return {}


@dataclass(frozen=True, slots=True)
class Connection:
    registry: str
    """Base URL of the Cargohold server."""
    token: str | None
    token_source: str
    project: str | None
    retry: RetryPolicy = field(default_factory=RetryPolicy, compare=False)
    """The retry policy (budget, outage notices) every client of this connection shares."""

    @property
    def host(self) -> str:
        return registry_host(self.registry)

    def control(self) -> ControlClient:
        return ControlClient(self.registry, self.token, retry=self.retry)


def exchange_github_oidc(
    registry: str, env: Mapping[str, str], audience: str | None = None, *, retry: RetryPolicy | None = None
) -> str:
    """A short-lived Cargohold token for this GitHub Actions job, through the server's trust relationships
    (the one OIDC exchange, :mod:`cargohold.client.oidc`, worded for the CLI)."""
    try:
        return oidc.exchange_github_oidc(registry, env, retry=retry or RetryPolicy(), audience=audience).token
    except oidc.NoIdToken:
        raise SettingsError(
            "no Cargohold token and no GitHub OIDC token available: add `permissions: id-token: write` to the job, "
            "or, for a pull request from a fork, pass a token (CARGOHOLD_TOKEN) instead"
        ) from None
    except oidc.OidcError as exc:
        if exc.step == "id-token":
            raise SettingsError(f"requesting a GitHub OIDC ID token failed: {exc.reason}") from None
        raise SettingsError(f"exchanging the GitHub OIDC token at {registry} failed: {exc.reason}") from None


def resolve(
    *,
    registry: str | None = None,
    project: str | None = None,
    token: str | None = None,
    context_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    need_token: bool = True,
    retry: RetryPolicy | None = None,
) -> Connection:
    env = os.environ if env is None else env
    project_file = read_project_file(context_dir)
    login = load_login(env)
    raw_registry = registry or env.get("CARGOHOLD_REGISTRY") or project_file.get("registry")
    if raw_registry is None and login is not None:
        raw_registry = login.registry
    if raw_registry is None:
        raise SettingsError(
            "no registry configured: pass --registry URL, set CARGOHOLD_REGISTRY, or run cargohold login URL"
        )
    url = normalize_registry_url(raw_registry)
    project_id = project or env.get("CARGOHOLD_PROJECT_ID") or project_file.get("id")
    policy = retry or RetryPolicy()

    if token:
        return Connection(url, token, "--token", project_id, policy)
    if env_token := env.get("CARGOHOLD_TOKEN"):
        return Connection(url, env_token, "CARGOHOLD_TOKEN", project_id, policy)
    if login is not None and normalize_registry_url(login.registry) == url:
        return Connection(url, login.token, "stored login", project_id, policy)
    if env.get("GITHUB_ACTIONS") == "true" and env.get("ACTIONS_ID_TOKEN_REQUEST_URL"):
        return Connection(url, exchange_github_oidc(url, env, retry=policy), "GitHub Actions OIDC", project_id, policy)
    if need_token:
        raise SettingsError(
            f"no token for {url}: pass --token, set CARGOHOLD_TOKEN, run cargohold login {url}, or in GitHub "
            "Actions grant `permissions: id-token: write`"
        )
    return Connection(url, None, "none", project_id, policy)
