"""``httpx.Auth`` for OCI registries: Basic and Bearer-token challenges.

Registries answer an unauthenticated request with ``401`` and ``WWW-Authenticate``. For ``Basic`` we
resend with credentials. For ``Bearer realm=...,service=...,scope=...`` we fetch a token from the realm
(with Basic credentials, an OAuth2 refresh token, or anonymously), cache it per scope set until shortly
before it expires, and resend.

Why scopes come from two places: the challenge only names the scope of the request that was refused,
but some operations need more. A cross-repository mount into ``X`` from ``Y`` needs
``repository:X:pull,push`` *and* ``repository:Y:pull`` in one token, and a streamed upload body cannot be
replayed after a 401. So :class:`~cargohold.client.registry.RegistryClient` attaches the scopes it knows
it needs to each request (``request.extensions["cargohold.scopes"]``); we ask for the union, and once a
host's realm is known, attach a cached token *before* sending so bodies are sent once.

Only the sync flow is implemented: the client is synchronous and parallelises with threads, and reading
the token response inside the flow needs a sync stream. The cache is guarded by a lock for those threads.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Generator, Iterable
from dataclasses import dataclass

import httpx

from cargohold.client.credentials import Credentials
from cargohold.client.errors import RegistryError
from cargohold.clock import MonotonicClock, monotonic

SCOPES_EXTENSION = "cargohold.scopes"
"""Request extension key holding a tuple of scope strings the request needs."""
DEFAULT_TOKEN_LIFETIME = 60
"""Seconds a token lives when the realm does not say (the distribution token spec's default)."""
EXPIRY_MARGIN = 10
"""Refresh this many seconds early, so a token never expires between our check and the registry's."""
CLIENT_ID = "cargohold"


@dataclass(frozen=True, slots=True)
class Challenge:
    """One parsed ``WWW-Authenticate`` challenge: the scheme (lowercased) and its parameters."""

    scheme: str
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value (RFC 7235), which may hold several challenges.

    A small tokenizer rather than a regex split, because quoted values legitimately contain commas
    (``scope="repository:a:pull,push"``) and escaped quotes.
    """
    challenges: list[Challenge] = []
    i, n = 0, len(header)
    current: Challenge | None = None

    def skip(chars: str) -> None:
        nonlocal i
        while i < n and header[i] in chars:
            i += 1

    def token() -> str:
        nonlocal i
        start = i
        while i < n and header[i] not in ' \t,="':
            i += 1
        return header[start:i]

    while i < n:
        skip(" \t,")
        if i >= n:
            break
        word = token()
        if not word:  # stray character; skip it rather than loop forever
            i += 1
            continue
        skip(" \t")
        if i < n and header[i] == "=" and current is not None:
            i += 1
            skip(" \t")
            if i < n and header[i] == '"':
                i += 1
                chars: list[str] = []
                while i < n and header[i] != '"':
                    if header[i] == "\\" and i + 1 < n:
                        i += 1
                    chars.append(header[i])
                    i += 1
                i += 1  # closing quote
                value = "".join(chars)
            else:
                value = token()
            current.params[word.lower()] = value
        elif i < n and header[i] == "=":
            # token68 or a parameter without a scheme: ignore up to the next comma
            while i < n and header[i] != ",":
                i += 1
        else:
            current = Challenge(word.lower(), {})
            challenges.append(current)
    return challenges


def merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Union of scope strings, merging actions per resource: a canonical, sorted tuple.

    ``["repository:x:pull", "repository:x:push", "repository:y:pull"]`` becomes
    ``("repository:x:pull,push", "repository:y:pull")``. Canonical form makes cache keys stable.
    """
    merged: dict[tuple[str, str], set[str]] = {}
    for scope in scopes:
        for part in scope.split(" "):
            if not part:
                continue
            resource, sep, actions = part.rpartition(":")
            if not sep:
                continue
            kind, _, name = resource.partition(":")
            merged.setdefault((kind, name), set()).update(a for a in actions.split(",") if a)
    return tuple(f"{kind}:{name}:{','.join(sorted(acts))}" for (kind, name), acts in sorted(merged.items()))


def _covers(granted: tuple[str, ...], wanted: tuple[str, ...]) -> bool:
    return merge_scopes((*granted, *wanted)) == granted


def repository_scope(repository: str, *actions: str) -> str:
    """``repository:<name>:<actions>`` as the token spec defines it."""
    return f"repository:{repository}:{','.join(actions)}"


@dataclass
class _Token:
    value: str
    expires_at: float


class RegistryAuth(httpx.Auth):
    """Answer registry auth challenges for one set of credentials (or anonymously when ``None``).

    Share one instance across threads of one client; do not share it between clients that talk to
    different registries with different credentials.
    """

    def __init__(self, credentials: Credentials | None = None, *, authorization: tuple[str, str] | None = None) -> None:
        self.credentials = credentials
        self.authorization = authorization
        """``(host, value)``: a fixed ``Authorization`` value for one host, handed to us by whoever obtained it
        (server-side push). Sent on every request to that host and to no other (an upload ``Location`` may
        point elsewhere), with no challenge handling: we hold nothing to obtain a new one with."""
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, tuple[str, ...]], _Token] = {}
        self._fetching: dict[tuple[str, str, tuple[str, ...]], threading.Lock] = {}
        self._bearer_hosts: dict[str, Challenge] = {}
        self._basic_hosts: set[str] = set()
        self._now: MonotonicClock = monotonic
        self.token_requests = 0
        """How many times a token was fetched from a realm (tests use it to prove caching)."""

    # -- helpers ------------------------------------------------------------------------------------

    def _basic_header(self) -> str | None:
        creds = self.credentials
        if creds is None or not creds.has_basic:
            return None
        raw = f"{creds.username}:{creds.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    @staticmethod
    def _wanted(request: httpx.Request, challenge: Challenge | None) -> tuple[str, ...]:
        hinted = request.extensions.get(SCOPES_EXTENSION) or ()
        from_challenge = (challenge.params.get("scope", ""),) if challenge else ()
        return merge_scopes((*from_challenge, *hinted))

    def _cached(self, challenge: Challenge, scopes: tuple[str, ...]) -> str | None:
        realm, service = challenge.params.get("realm", ""), challenge.params.get("service", "")
        now = self._now()
        with self._lock:
            for (t_realm, t_service, t_scopes), token in list(self._tokens.items()):
                if token.expires_at <= now:
                    del self._tokens[(t_realm, t_service, t_scopes)]
                    continue
                if t_realm == realm and t_service == service and _covers(t_scopes, scopes):
                    return token.value
        return None

    def _token_request(self, challenge: Challenge, scopes: tuple[str, ...]) -> httpx.Request:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError("authenticating", reason="the registry sent a Bearer challenge without a realm")
        service = challenge.params.get("service")
        creds = self.credentials
        if creds is not None and creds.identity_token:
            form: dict[str, str | list[str]] = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "client_id": CLIENT_ID,
            }
            if service:
                form["service"] = service
            if scopes:
                form["scope"] = " ".join(scopes)
            return httpx.Request("POST", realm, data=form)
        params: list[tuple[str, str]] = []
        if service:
            params.append(("service", service))
        params.extend(("scope", s) for s in scopes)
        if creds is not None and creds.username:
            params.append(("account", creds.username))
        headers = {}
        basic = self._basic_header()
        if basic:
            headers["Authorization"] = basic
        return httpx.Request("GET", realm, params=tuple(params), headers=headers)

    def _store_token(self, challenge: Challenge, scopes: tuple[str, ...], response: httpx.Response) -> str:
        if response.status_code != 200:
            who = f" as {self.credentials.username}" if self.credentials and self.credentials.username else ""
            raise RegistryError.from_response(
                f"getting a token{who} for {' '.join(scopes) or 'the registry'}", response
            )
        try:
            data = response.json()
            value = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            value = None
            data = {}
        if not isinstance(value, str) or not value:
            raise RegistryError(
                "getting a registry token",
                status=200,
                url=str(response.request.url),
                reason="the token service answered without a token",
            )
        lifetime = data.get("expires_in")
        if not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        expires_at = self._now() + max(float(lifetime) - EXPIRY_MARGIN, 1.0)
        key = (challenge.params.get("realm", ""), challenge.params.get("service", ""), scopes)
        with self._lock:
            self._tokens[key] = _Token(value, expires_at)
            self.token_requests += 1
        return value

    def _obtain(
        self, challenge: Challenge, scopes: tuple[str, ...], *, stale: str | None = None
    ) -> Generator[httpx.Request, httpx.Response, str]:
        """A token for ``scopes``: the cached one (unless it is ``stale``, i.e. just refused), else a new one.

        Single-flight: the copy runs up to ``--jobs`` requests at once, and they all meet the same 401 at
        the start; one thread fetches while the others wait on the per-scope lock and then reuse its token,
        instead of every thread asking the realm for an identical token.
        """
        key = (challenge.params.get("realm", ""), challenge.params.get("service", ""), scopes)
        with self._lock:
            fetching = self._fetching.setdefault(key, threading.Lock())
        with fetching:
            token = self._cached(challenge, scopes)
            if token is not None and token != stale:
                return token
            token_response = yield self._token_request(challenge, scopes)
            token_response.read()
            return self._store_token(challenge, scopes, token_response)

    def delegable_header(self, host: str, scopes: Iterable[str]) -> str | None:
        """The ``Authorization`` value we would send to ``host`` for ``scopes`` now, to hand to a server that
        acts for us (a Cargohold server pushing blobs to this registry itself).

        ``None`` when the host asked for no credentials. :class:`LookupError` when it wants a Bearer token
        and none is cached for these scopes: make a request with them first (the flow fetches one).
        Only valid after at least one request to ``host``, which is when we learn what it wants.
        """
        wanted = merge_scopes(scopes)
        with self._lock:
            known_bearer = self._bearer_hosts.get(host)
            known_basic = host in self._basic_hosts
        if known_bearer is not None:
            token = self._cached(known_bearer, wanted)
            if token is None:
                raise LookupError(f"no cached token for {' '.join(wanted)} at {host}")
            return f"Bearer {token}"
        return self._basic_header() if known_basic else None

    def forget_token(self, host: str, scopes: Iterable[str]) -> None:
        """Drop the cached token for ``scopes`` at ``host`` (a server we handed it to was refused with it)."""
        wanted = merge_scopes(scopes)
        with self._lock:
            known = self._bearer_hosts.get(host)
            if known is None:
                return
            realm, service = known.params.get("realm", ""), known.params.get("service", "")
            for key in [k for k in self._tokens if k[0] == realm and k[1] == service and _covers(k[2], wanted)]:
                del self._tokens[key]

    # -- the flow -----------------------------------------------------------------------------------

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.authorization is not None:
            host, value = self.authorization
            if request.url.netloc.decode() == host:
                request.headers["Authorization"] = value
            yield request
            return
        host = request.url.netloc.decode()
        with self._lock:
            known_bearer = self._bearer_hosts.get(host)
            known_basic = host in self._basic_hosts
        if known_bearer is not None:
            wanted = self._wanted(request, known_bearer)
            token = self._cached(known_bearer, wanted)
            if token is None and wanted:
                # The realm is known: get the token first instead of provoking a 401, so a streamed
                # body (which cannot be replayed) is sent exactly once.
                token = yield from self._obtain(known_bearer, wanted)
            if token:
                request.headers["Authorization"] = f"Bearer {token}"
        elif known_basic and (basic := self._basic_header()):
            request.headers["Authorization"] = basic

        response = yield request
        if response.status_code != 401:
            return
        challenges = parse_challenges(", ".join(response.headers.get_list("WWW-Authenticate")))
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic_challenge = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None:
            with self._lock:
                self._bearer_hosts[host] = Challenge(
                    "bearer", {k: v for k, v in bearer.params.items() if k in ("realm", "service")}
                )
            scopes = self._wanted(request, bearer)
            sent = request.headers.get("Authorization", "")
            response.read()
            token = yield from self._obtain(bearer, scopes, stale=sent.removeprefix("Bearer ") or None)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request
        elif basic_challenge is not None:
            header = self._basic_header()
            if header is None or request.headers.get("Authorization") == header:
                return  # nothing (new) to offer; the caller reports the 401
            with self._lock:
                self._basic_hosts.add(host)
            request.headers["Authorization"] = header
            yield request

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise NotImplementedError("RegistryAuth supports the synchronous httpx.Client only")
