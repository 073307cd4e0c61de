"""Dashboard sessions: a token is exchanged once for a random session ID held in an HttpOnly cookie.

* The database keeps only the SHA-256 of the session ID (:mod:`cargohold.metadata.sessions`), so replicas
  share sessions and a database copy signs nobody in.
* A session ends after :data:`IDLE` without a request, at :data:`ABSOLUTE` after sign-in (or when its
  credential expires, if sooner), on sign-out, and as soon as its credential is revoked or expires (checked
  on every request through the same authenticator the API uses).
* Each session has its own CSRF token (the synchronizer-token pattern): every state-changing form carries it,
  and a POST without the session's token is refused before anything happens.
* The cookie is ``HttpOnly``, ``SameSite=Strict``, scoped to ``/ui/``, and ``Secure`` whenever the browser
  reached us over HTTPS (directly, or through a trusted proxy: :func:`cargohold.edge.proxies.client_scheme`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web

from cargohold.edge.proxies import client_scheme
from cargohold.metadata.sessions import SessionRecord, SessionStore
from cargohold.server.auth.policy import Identity
from cargohold.server.drain import background_loop
from cargohold.server.state import STATE_KEY, RegistryState

log = logging.getLogger(__name__)

COOKIE = "cargohold_session"
COOKIE_PATH = "/ui/"
IDLE = timedelta(hours=1)
"""A session unused for this long is over."""
ABSOLUTE = timedelta(hours=12)
"""No session lasts longer than this after sign-in, however active."""
TOUCH_EVERY = timedelta(minutes=1)
"""Activity is written at most this often per session (a page view is a read, not a write)."""

SESSIONS_KEY = web.AppKey("cargohold_ui_sessions", SessionStore)


def hash_session_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A request's live session and the caller it acts as."""

    session: SessionRecord
    identity: Identity

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token

    def csrf_ok(self, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(sent.encode(), self.session.csrf_token.encode())


def clock() -> datetime:
    return datetime.now(UTC)


async def start(state: RegistryState, store: SessionStore, identity: Identity) -> tuple[str, SessionRecord]:
    """A new session for ``identity``: its secret ID (for the cookie only) and its record."""
    now = clock()
    session_id = secrets.token_urlsafe(32)
    expires_at = now + ABSOLUTE
    if identity.principal.expires_at is not None:
        expires_at = min(expires_at, identity.principal.expires_at)
    record = SessionRecord(
        id_hash=hash_session_id(session_id),
        credential_id=identity.credential_id,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        last_seen_at=now,
        expires_at=expires_at,
    )
    await state.run(store.create, record)
    return session_id, record


async def current(request: web.Request, state: RegistryState, store: SessionStore) -> SignedIn | None:
    """The request's live session, or None (no cookie, unknown, idle, expired, or its credential is gone)."""
    session_id = request.cookies.get(COOKIE)
    if not session_id or len(session_id) > 100 or state.auth is None:
        return None
    id_hash = hash_session_id(session_id)
    now = clock()
    record = await state.run(store.live, id_hash, now, IDLE)
    if record is None:
        return None
    identity = await state.auth.authenticator.identity_for_id(record.credential_id)
    if identity is None:  # revoked or expired since sign-in: this browser is signed out, everywhere
        await state.run(store.end_for_credential, record.credential_id)
        return None
    if now - record.last_seen_at >= TOUCH_EVERY:
        await state.run(store.touch, id_hash, now)
    return SignedIn(record, identity)


async def end(request: web.Request, state: RegistryState, store: SessionStore) -> None:
    session_id = request.cookies.get(COOKIE)
    if session_id and len(session_id) <= 100:
        await state.run(store.end, hash_session_id(session_id))


def set_cookie(request: web.Request, response: web.StreamResponse, session_id: str, record: SessionRecord) -> None:
    response.set_cookie(
        COOKIE,
        session_id,
        path=COOKIE_PATH,
        httponly=True,
        secure=client_scheme(request) == "https",
        samesite="Strict",
        max_age=int((record.expires_at - record.created_at).total_seconds()),
    )


PRUNE_EVERY = timedelta(minutes=10)


async def prune_periodically(app: web.Application) -> AsyncIterator[None]:
    """Delete ended sessions now and then (an ended session is refused anyway; this only keeps the table small)."""
    state, store = app[STATE_KEY], app[SESSIONS_KEY]

    async def loop() -> None:
        while True:
            try:
                await state.run(store.prune, clock(), IDLE)
            except Exception:  # a full disk or a locked database: try again next time
                log.warning("pruning dashboard sessions failed; will retry in %.0f s", PRUNE_EVERY.total_seconds())
            await asyncio.sleep(PRUNE_EVERY.total_seconds())

    async with background_loop(app, loop()):
        yield


def clear_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(
        COOKIE, path=COOKIE_PATH, secure=client_scheme(request) == "https", httponly=True, samesite="Strict"
    )
