"""No credential ever reaches the server's log: after a full save / pull / push / OIDC flow at debug level,
the log holds no Cargohold token, no OIDC ID token, no registry JWT and no destination password.

Tokens minted inside the flows (build tokens, build-scoped pull tokens, registry JWTs, the server's
destination token) are never seen by the test, so besides the ones it knows the log is searched for
anything shaped like a token or a JWT at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cargohold.client.control import ControlClient
from cargohold.client.settings import Connection
from cargohold.images import pull_image, push_image, save_image
from cargohold.sample import write_sample_image
from oidc_issuer import REPO, LoopbackOidcIssuer
from refregistry import RefRegistry, refregistry_auth_fixture
from servers import ServerProcess

__all__ = ["refregistry_auth_fixture"]

TOKEN_SHAPE = re.compile(r"ch[aplo]_[A-Za-z0-9]{30,}")
JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+")


@pytest.fixture
def issuer() -> Iterator[LoopbackOidcIssuer]:
    with LoopbackOidcIssuer() as running:
        yield running


def test_a_full_flow_leaves_no_credential_in_the_log(
    issuer: LoopbackOidcIssuer, refregistry_auth: RefRegistry, tmp_path: Path
) -> None:
    server = ServerProcess(
        data_dir=tmp_path / "data",
        extra_args=["--log-level", "debug", "--oidc-issuer", issuer.url, "--push-allow-network", "127.0.0.0/8"],
    )
    issuer.audience = server.url
    server.start()
    seen: list[str] = [server.admin_token, "s3cret-pass"]
    try:
        with ControlClient(server.url, server.admin_token) as admin:
            project = str(admin.create_project("secrets").id)
            admin.add_trust(project, repository=REPO)
            project_token = admin.create_token("project", "ci", project_id=project).token
            seen.append(project_token)

        # OIDC: an exchange, and a raw ID token used as a password (exchanged on first sight).
        id_token = issuer.mint("push")
        seen.append(id_token)
        exchanged = httpx.post(f"{server.url}/auth/oidc/github-actions", json={"token": id_token}).json()["token"]
        seen.append(exchanged)
        raw = issuer.mint("push")
        seen.append(raw)
        registry_jwt = httpx.get(
            f"{server.url}/token",
            params={"service": "cargohold", "scope": f"repository:{project}:pull"},
            auth=("x-token", raw),
        ).json()["token"]
        seen.append(registry_jwt)
        bad = httpx.get(f"{server.url}/v2/", auth=("x-token", "cha_" + "Z" * 36))  # refused, not logged either
        assert bad.status_code == 401
        seen.append("cha_" + "Z" * 36)

        # Save with the exchanged token, pull (pull-info mints a build-scoped token), push server-side.
        write_sample_image(tmp_path / "img", layers=2, layer_size=32 << 10, seed=3, ref="latest")
        conn = Connection(server.url, exchanged, "test", project)
        saved = save_image(conn, f"oci:{tmp_path / 'img'}")
        pull_image(
            Connection(server.url, project_token, "test", project), saved.build_id, output=f"oci:{tmp_path / 'out'}"
        )
        pushed = push_image(
            conn,
            saved.build_id,
            [f"{refregistry_auth.host}/secure/app:1"],
            username="ci",
            password="s3cret-pass",
            insecure_registries=[refregistry_auth.host],
        )
        assert pushed.digest
        with ControlClient(server.url, project_token) as control:
            pull_token = control.create_token("pull", "reader", project_id=project).token
            seen.append(pull_token)
            assert httpx.get(f"{server.url}/v2/{project}/tags/list", auth=("x-token", pull_token)).status_code == 200
    finally:
        server.stop()
    log = server.log()
    assert "authentication failed" in log and "issued registry token" in log, "the flows ran and were logged"
    for secret in seen:
        assert secret not in log, f"a credential ({secret[:6]}…) is in the server log"
    assert not TOKEN_SHAPE.findall(log), TOKEN_SHAPE.findall(log)[:3]
    assert not JWT_SHAPE.findall(log), JWT_SHAPE.findall(log)[:3]
