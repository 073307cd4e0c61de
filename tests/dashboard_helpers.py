"""Helpers for the dashboard tests: a saved build with a chosen image config, and a signed-in browser-like
client (cookies kept, the CSRF token read from the page as a browser's form would carry it)."""

from __future__ import annotations

import re
from typing import Any

import httpx

from control_helpers import fresh_address, http
from protocol_helpers import descriptor, image_manifest, push_blob, push_manifest, to_bytes
from servers import Server

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def save_build(
    server: Server,
    project_id: str,
    *,
    labels: dict[str, str] | None = None,
    env: list[str] | None = None,
    save_tags: list[str] | None = None,
    salt: str = "",
) -> str:
    """Create a build, push a one-layer image with this config under its ID (its own token), save it."""
    with http(server, server.admin_token) as admin:
        created = admin.post(f"/api/v1/projects/{project_id}/builds")
        assert created.status_code == 201, created.text
        build_id, token = created.json()["build_id"], created.json()["token"]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/app", "--serve"], "Env": env or [], "Labels": labels or {}},
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    config_bytes = to_bytes(config, pretty=False)
    layer = f"layer of {build_id} {salt}".encode() * 40
    with http(server, token) as pusher:
        push_blob(pusher, project_id, config_bytes)
        push_blob(pusher, project_id, layer)
        manifest = image_manifest(descriptor(OCI_CONFIG, config_bytes), [descriptor(OCI_LAYER, layer)])
        push_manifest(pusher, project_id, build_id, to_bytes(manifest), OCI_MANIFEST)
        saved = pusher.post(f"/api/v1/builds/{build_id}/save", json={"save_tags": save_tags or []})
        assert saved.status_code == 200, saved.text
    return str(build_id)


class Browser:
    """An httpx client that behaves like a browser on the dashboard: cookies, forms, no redirects followed."""

    def __init__(self, server: Server, address: str | None = None) -> None:
        transport = httpx.HTTPTransport(local_address=address or fresh_address())
        self.client = httpx.Client(base_url=server.url, transport=transport, timeout=30)
        self.csrf = ""

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def sign_in(self, token: str) -> httpx.Response:
        response = self.client.post("/ui/sign-in", data={"token": token, "next": "/ui/projects"})
        if response.status_code == 303:
            self.get("/ui/projects")
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        response = self.client.get(path, **kwargs)
        if (found := CSRF_RE.search(response.text)) is not None:
            self.csrf = found.group(1)
        return response

    def post(self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True) -> httpx.Response:
        form = dict(data or {})
        if csrf:
            form["csrf"] = self.csrf
        return self.client.post(path, data=form)
