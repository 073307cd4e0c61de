"""Assembling the credential machinery of a server: keys, token signer, authenticator, OIDC exchange."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime

from cargohold.metadata.control import new_id
from cargohold.metadata.signing_keys import SigningKeyStore
from cargohold.ops.recovery import write_first_admin_token
from cargohold.server.auth.credentials import CredentialKind, new_credential
from cargohold.server.auth.oidc import OidcSettings, OidcVerifier
from cargohold.server.auth.oidc_exchange import DatabaseJtiStore, OidcExchange
from cargohold.server.auth.policy import TokenAccess, TokenAuthenticator, credential_record
from cargohold.server.auth.ratelimit import AuthFailureLimiter
from cargohold.server.auth.signing import KeyError_, RegistryTokenSigner, database_keyring, load_or_create_keyring
from cargohold.server.state import RegistryState

log = logging.getLogger(__name__)

MIN_ADMIN_TOKEN_LENGTH = 24


@dataclass(frozen=True, slots=True)
class Security:
    access: TokenAccess
    oidc: OidcExchange


def build_security(state: RegistryState) -> Security:
    settings = state.settings
    control = state.control
    assert control is not None
    if settings.admin_token is not None and len(settings.admin_token) < MIN_ADMIN_TOKEN_LENGTH:
        raise SystemExit(
            f"CARGOHOLD_ADMIN_TOKEN is shorter than {MIN_ADMIN_TOKEN_LENGTH} characters; use a long random value "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    keys = SigningKeyStore(control.db)
    try:
        keyring = load_or_create_keyring(keys, settings.data_dir)
    except KeyError_ as exc:
        raise SystemExit(f"cannot load the registry-token signing keys: {exc}") from None
    signer = RegistryTokenSigner(keyring, ttl=settings.registry_token_ttl, reload=lambda: database_keyring(keys))
    verifier = OidcVerifier(
        OidcSettings(audience=settings.resolved_oidc_audience(), issuers=tuple(settings.oidc_issuers)),
        DatabaseJtiStore(control, state.run),
    )
    oidc = OidcExchange(verifier, control, state.run, token_ttl=settings.oidc_token_ttl)
    authenticator = TokenAuthenticator(control, signer, state.run, admin_token=settings.admin_token)
    authenticator.raw_jwt_exchanger = oidc.raw_jwt_exchanger(authenticator)
    access = TokenAccess(
        authenticator,
        settings.resolved_public_url(),
        AuthFailureLimiter(),
        lambda repository, build_id: state.run(control.build_reachable, repository, build_id),
    )
    if settings.admin_token is None and control.count_admin_credentials() == 0:
        _create_first_admin(state)
    return Security(access, oidc)


def _create_first_admin(state: RegistryState) -> None:
    """An empty data dir gets one admin token, printed once: the only way in without CARGOHOLD_ADMIN_TOKEN."""
    assert state.control is not None
    now = datetime.now(UTC)
    token, stored = new_credential(CredentialKind.ADMIN, credential_id=new_id(), name="first admin", now=now)
    state.control.add_credential(credential_record(stored))
    saved = write_first_admin_token(state.settings.data_dir, token)
    banner = (
        "\n"
        "  Cargohold created the first admin token for this data directory. It is shown only now:\n\n"
        f"      {token}\n\n"
        f"  It is also in {saved} (mode 0600): move it to a secret manager and delete that file.\n"
        "  Log in with: cargohold login <url> --password-stdin < <that file>\n"
    )
    sys.stdout.write(banner)
    sys.stdout.flush()
    log.info("created the first admin token (credential %s); it is in %s, readable by this user only", stored.id, saved)
