"""Exchanging a CI job's OIDC token for a short-lived Cargohold credential through trust relationships."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from cargohold.domain.threads import Runner
from cargohold.metadata.control import ControlStore, CredentialRecord, new_id
from cargohold.metadata.errors import ParentInactive
from cargohold.server.auth import trust
from cargohold.server.auth.credentials import CredentialKind, hash_token, new_credential
from cargohold.server.auth.oidc import OidcError, OidcVerifier, ReplayedTokenError
from cargohold.server.auth.policy import AuthError, Identity, TokenAuthenticator, credential_record, principal_of

Run = Runner

REFUSAL_MEMORY_SECONDS = 900.0
"""Longer than any OIDC token we accept can live (max token age 600 s plus leeway)."""


class ExchangeDenied(Exception):
    """The token verified, but no trust relationship lets it in; the message says which fields differ."""


class DatabaseJtiStore:
    """Single-use ``jti`` claims in the metadata database, so several server processes agree."""

    def __init__(self, control: ControlStore, run: Run) -> None:
        self.control = control
        self.run = run

    async def claim(self, issuer: str, jti: str, expires_at: float) -> bool:
        moment = datetime.fromtimestamp(expires_at, UTC)
        return bool(await self.run(self.control.claim_jti, issuer, jti, moment))


@dataclass(frozen=True, slots=True)
class Exchanged:
    token: str
    """The new credential's plaintext (or the raw JWT itself when it is remembered by hash)."""
    expires_at: datetime
    projects: list[str]
    identity: Identity


class OidcExchange:
    def __init__(self, verifier: OidcVerifier, control: ControlStore, run: Run, *, token_ttl: timedelta) -> None:
        self.verifier = verifier
        self.control = control
        self.run = run
        self.token_ttl = token_ttl

    async def exchange(self, jwt_text: str, *, remember_raw: bool = False) -> Exchanged:
        """Verify, match, and mint. Raises :class:`OidcError` or :class:`ExchangeDenied` with the reason."""
        claims = await self.verifier.verify(jwt_text)
        owner, _, name = claims.repository.partition("/")
        rows = await self.run(self.control.trust_for_repository, claims.issuer, owner, name)
        result = trust.match([trust.TrustRelationship.from_record(record) for record in rows], claims)
        if not result.ok:
            raise ExchangeDenied(result.denial or f"no trust relationship for repository {claims.repository}")
        for learned in result.learned:
            await self.run(
                self.control.learn_trust_ids,
                learned.relationship_id,
                learned.repository_owner_id,
                learned.repository_id,
            )
        now = datetime.now(UTC)
        name_text = f"github:{claims.repository}"
        if claims.run_id:
            name_text += f" run {claims.run_id}/{claims.run_attempt or 1}"
        plaintext, stored = new_credential(
            CredentialKind.OIDC,
            credential_id=new_id(),
            name=name_text,
            now=now,
            permissions=result.permissions,
            ttl=self.token_ttl,
            trust_ids=tuple(rel.id for rel in result.matched),
        )
        if remember_raw:
            plaintext, stored = jwt_text, replace(stored, token_hash=hash_token(jwt_text))
        audit = {key: value for key, value in claims.audit_fields().items() if value is not None}
        if claims.workflow:
            audit["workflow"] = claims.workflow
        projects = sorted({permission.project for permission in result.permissions})
        record = credential_record(
            replace(stored, metadata=audit), project_id=projects[0] if len(projects) == 1 else None
        )
        try:
            # Linked to the relationships that matched: deleting one of them revokes this credential.
            await self.run(self.control.add_credential, record, stored.trust_ids)
        except ParentInactive as exc:
            raise ExchangeDenied(str(exc)) from None
        assert stored.expires_at is not None
        return Exchanged(plaintext, stored.expires_at, projects, Identity(stored.principal(), claims=audit))

    def raw_jwt_exchanger(self, authenticator: TokenAuthenticator) -> Callable[[str], Awaitable[Identity]]:
        """For :class:`TokenAuthenticator`: accept a raw OIDC JWT as a credential, exchanging it once.

        A refused JWT has already spent its single-use ``jti``; the refusal is remembered (by the JWT's hash,
        for as long as the JWT could verify) so every later request with it gets the real reason again
        instead of "already exchanged".
        """
        refusals: dict[str, tuple[float, str]] = {}

        async def identity_for(jwt_text: str) -> Identity:
            token_hash = hash_token(jwt_text)
            existing = await self.run(self.control.credential_by_hash, token_hash)
            if existing is None:
                remembered = refusals.get(token_hash)
                if remembered is not None and remembered[0] > time.monotonic():
                    raise AuthError(remembered[1])
                try:
                    return (await self.exchange(jwt_text, remember_raw=True)).identity
                except ReplayedTokenError:
                    # A concurrent request with the same JWT won the exchange; use what it stored.
                    existing = await self.run(self.control.credential_by_hash, token_hash)
                    if existing is None:
                        raise AuthError("this OIDC token was already exchanged; request a fresh one") from None
                except (OidcError, ExchangeDenied) as exc:
                    if len(refusals) > 10_000:
                        refusals.clear()
                    refusals[token_hash] = (time.monotonic() + REFUSAL_MEMORY_SECONDS, str(exc))
                    raise AuthError(str(exc)) from None
            return identity_from_oidc_record(existing)

        return identity_for


def identity_from_oidc_record(record: CredentialRecord) -> Identity:
    if record.kind != CredentialKind.OIDC.value:
        raise AuthError("the credential is not valid")
    now = datetime.now(UTC)
    if record.revoked_at is not None:
        raise AuthError(f"the OIDC credential {record.name!r} was revoked")
    if record.expires_at is not None and record.expires_at <= now:
        raise AuthError(f"the OIDC credential {record.name!r} has expired; request a fresh ID token")
    return Identity(principal_of(record), claims=dict(record.metadata) if record.metadata else None)
