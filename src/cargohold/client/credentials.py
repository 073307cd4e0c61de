"""Finding credentials for a registry host, the way ``docker`` and Depot's CLI do.

Order of precedence (first hit wins), chosen so that the most explicit source always overrides:

1. explicit ``username``/``password`` passed by the caller (CLI flags);
2. environment variables ``<PREFIX>_USERNAME`` + ``<PREFIX>_PASSWORD`` or ``<PREFIX>_AUTH``
   (base64 ``user:pass``), where the CLI uses ``CARGOHOLD_PUSH_REGISTRY`` as the prefix for push
   destinations only (so a push credential never leaks to the source registry);
3. the Docker config (``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``): ``credHelpers`` for
   the host, then ``credsStore``, then the inline ``auths`` entry (``auth`` base64 or ``identitytoken``).

Docker Hub is looked up under all the keys people have in their configs (``https://index.docker.io/v1/``
first, as ``docker login`` writes it).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cargohold.client.errors import CargoholdError
from cargohold.oci.imageref import DOCKER_HUB, DOCKER_HUB_CONFIG_KEY, normalize_registry

PUSH_ENV_PREFIX = "CARGOHOLD_PUSH_REGISTRY"
HELPER_TIMEOUT = 30.0
"""Seconds a ``docker-credential-*`` helper may take; keychain prompts can be slow but not infinite."""


class CredentialsError(CargoholdError):
    """Credentials were configured but could not be read (bad base64, a failing helper, bad JSON)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What we can present to a registry or its token service.

    ``identity_token`` is an OAuth2 refresh token (``docker login`` with an identity provider); it is
    exchanged at the token realm with ``grant_type=refresh_token`` instead of Basic credentials.
    """

    username: str | None = None
    password: str | None = None
    identity_token: str | None = None
    source: str = "explicit"
    """Where they came from, for error messages (never includes the secret)."""

    @property
    def has_basic(self) -> bool:
        return self.username is not None and self.password is not None

    def __repr__(self) -> str:  # keep secrets out of logs and tracebacks
        return f"Credentials(username={self.username!r}, source={self.source!r})"


def decode_auth(value: str, source: str) -> tuple[str, str]:
    """Decode a base64 ``user:pass`` string, with a clear error naming where it came from."""
    try:
        decoded = base64.b64decode(value.strip(), validate=False).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise CredentialsError(f"the auth value in {source} is not valid base64") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise CredentialsError(f"the auth value in {source} does not decode to user:password")
    return user, password


def docker_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``."""
    env = os.environ if environ is None else environ
    base = env.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def config_keys(registry: str) -> list[str]:
    """Keys under which ``config.json`` may store credentials for ``registry``, most specific first."""
    host = normalize_registry(registry)
    if host == DOCKER_HUB:
        return [
            DOCKER_HUB_CONFIG_KEY,
            "index.docker.io",
            "docker.io",
            "registry-1.docker.io",
            "https://index.docker.io",
            "https://registry-1.docker.io",
        ]
    return [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]


def _key_host(key: str) -> str:
    """Host part of a config key, which may be a bare host or a URL with a path."""
    parsed = urlsplit(key if "://" in key else f"//{key}")
    return normalize_registry(parsed.netloc or key)


def resolve_credentials(
    registry: str,
    *,
    username: str | None = None,
    password: str | None = None,
    env_prefix: str | None = None,
    environ: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> Credentials | None:
    """Credentials for ``registry`` (a host[:port] or a Docker Hub alias), or ``None`` for anonymous."""
    env = os.environ if environ is None else environ
    if username is not None or password is not None:
        if username is None or password is None:
            raise CredentialsError("give both a username and a password, or neither")
        return Credentials(username, password, source="explicit")
    if env_prefix:
        user, pw, auth = (env.get(f"{env_prefix}_{n}") for n in ("USERNAME", "PASSWORD", "AUTH"))
        if user and pw:
            return Credentials(user, pw, source=f"${env_prefix}_USERNAME/PASSWORD")
        if auth:
            u, p = decode_auth(auth, f"${env_prefix}_AUTH")
            return Credentials(u, p, source=f"${env_prefix}_AUTH")
    path = config_path or docker_config_path(env)
    return credentials_from_docker_config(registry, path, env)


def credentials_from_docker_config(
    registry: str, path: Path, environ: Mapping[str, str] | None = None
) -> Credentials | None:
    """Look ``registry`` up in one Docker ``config.json``; missing file means anonymous."""
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"cannot read Docker config {path}: {exc}") from None
    if not isinstance(config, dict):
        raise CredentialsError(f"Docker config {path} is not a JSON object")
    host = normalize_registry(registry)
    keys = config_keys(registry)

    helpers = config.get("credHelpers") or {}
    for key in keys:
        helper = helpers.get(key)
        if helper:
            return run_credential_helper(helper, key, environ)
    auths: dict[str, dict[str, str]] = config.get("auths") or {}
    entry_key = next((k for k in keys if k in auths), None)
    if entry_key is None:
        entry_key = next((k for k in auths if _key_host(k) == host), None)
    store = config.get("credsStore")
    if store:
        creds = run_credential_helper(store, entry_key or keys[0], environ)
        if creds is not None:
            return creds
    if entry_key is None:
        return None
    entry = auths[entry_key] or {}
    source = f"{path} ({entry_key})"
    if entry.get("identitytoken"):
        user = entry.get("username")
        if entry.get("auth"):
            user = decode_auth(entry["auth"], source)[0]
        return Credentials(username=user, identity_token=entry["identitytoken"], source=source)
    if entry.get("auth"):
        user, pw = decode_auth(entry["auth"], source)
        return Credentials(user, pw, source=source)
    if entry.get("username") and entry.get("password"):
        return Credentials(entry["username"], entry["password"], source=source)
    return None


def run_credential_helper(helper: str, server_url: str, environ: Mapping[str, str] | None = None) -> Credentials | None:
    """Ask ``docker-credential-<helper> get`` for ``server_url``; ``None`` if it has nothing stored.

    The helper protocol: server URL on stdin, JSON ``{ServerURL, Username, Secret}`` on stdout; a
    ``Username`` of ``<token>`` means ``Secret`` is an identity token.
    """
    program = f"docker-credential-{helper}"
    env = dict(os.environ if environ is None else environ)
    executable = shutil.which(program, path=env.get("PATH"))
    if executable is None:
        raise CredentialsError(f"credential helper {program} is configured but not on PATH")
    try:
        proc = subprocess.run(
            [executable, "get"],
            input=server_url.encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CredentialsError(f"credential helper {program} did not answer in {HELPER_TIMEOUT:.0f}s") from None
    if proc.returncode != 0:
        message = (proc.stdout or proc.stderr).decode(errors="replace").strip()
        if "credentials not found" in message.lower():
            return None
        raise CredentialsError(f"credential helper {program} failed: {message or proc.returncode}")
    try:
        data = json.loads(proc.stdout)
        user, secret = data["Username"], data["Secret"]
    except (ValueError, KeyError, TypeError):
        raise CredentialsError(f"credential helper {program} printed something that is not credentials") from None
    source = f"{program} ({server_url})"
    if user == "<token>":
        return Credentials(identity_token=secret, source=source)
    return Credentials(user, secret, source=source)
