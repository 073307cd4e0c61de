"""Helpers shared by the control-plane and authentication tests.

* the modules' servers are ``servers.module_server()``: one in-process server per test module; tests
  isolate themselves by creating their own projects.
* :func:`fresh_address` — a new 127.x.y.z source address. The server throttles failed authentications
  per client address, and these modules fail on purpose many times; giving each attacking client its own
  loopback address keeps one test's failures from turning another test's requests into 429s.
* :func:`push_image` — a real image pushed with the project's own client code (``copy_image``).
"""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path
from typing import Any

import httpx

from cargohold.client.control import ControlClient
from cargohold.client.copy import LayoutStore, RegistryRepo, copy_image
from cargohold.client.credentials import Credentials
from cargohold.client.registry import RegistryClient
from cargohold.client.retry import RetryPolicy
from cargohold.oci.layout import OCILayout
from cargohold.sample import SampleImage, write_sample_image
from cargohold.schemas import Project
from servers import Server

NO_RETRY = RetryPolicy(attempts=1)
FAST = RetryPolicy(attempts=3, initial=0.01, maximum=0.05)
_ADDRESSES = itertools.count(1)


def fresh_address() -> str:
    """A loopback source address no other client of this test run has used."""
    n = next(_ADDRESSES)
    return f"127.42.{n // 250}.{n % 250 + 1}"


def http(server: Server, token: str | None = None, *, bearer: bool = False, address: str | None = None) -> httpx.Client:
    """An httpx client from its own loopback address; ``token`` as Basic x-token (or Bearer), none if None."""
    headers = {}
    if token is not None:
        if bearer:
            headers["Authorization"] = f"Bearer {token}"
        else:
            headers["Authorization"] = "Basic " + base64.b64encode(f"x-token:{token}".encode()).decode()
    transport = httpx.HTTPTransport(local_address=address or fresh_address())
    return httpx.Client(base_url=server.url, headers=headers, timeout=30, transport=transport)


def api(server: Server, token: str | None = None) -> ControlClient:
    """The project's typed control client (admin unless ``token``), without retries so errors surface at once."""
    transport = httpx.HTTPTransport(local_address=fresh_address())
    return ControlClient(server.url, token or server.admin_token, retry=NO_RETRY, transport=transport)


def error_of(response: httpx.Response) -> tuple[str, str]:
    """``(code, message)`` of an OCI/control-API JSON error body."""
    body = response.json()
    first = body["errors"][0]
    return first["code"], first["message"]


def new_project(server: Server, name: str, **settings: Any) -> Project:
    with api(server) as control:
        return control.create_project(name, **settings)


def push_image(
    server: Server,
    repository: str,
    tag: str,
    token: str,
    layout_dir: Path,
    *,
    seed: int = 1,
    platform: tuple[str, ...] = ("linux", "amd64"),
    layers: int = 1,
) -> SampleImage:
    """Write a small sample image and push it as ``repository:tag`` with ``token`` (Basic x-token)."""
    image = write_sample_image(layout_dir, layers=layers, layer_size=2048, seed=seed, platform=platform, ref="img")
    with RegistryClient(server.host, credentials=Credentials("x-token", token), retry=FAST) as client:
        copy_image(LayoutStore(OCILayout.open(layout_dir)), "img", RegistryRepo(client, repository), [tag])
    return image


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Header and payload of a JWT (unverified) and its signature segment."""
    head, body, signature = token.split(".")
    return (
        json.loads(base64.urlsafe_b64decode(head + "==")),
        json.loads(base64.urlsafe_b64decode(body + "==")),
        signature,
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
