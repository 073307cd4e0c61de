"""Who a request is, for code far from the HTTP layer: the request ID and the client's address.

They live in context variables set by the outermost middleware (:mod:`cargohold.edge.requestid`), so the audit
log and log records can read them without having them passed down; the server's thread pool runs each call in
a copy of the caller's context (:meth:`cargohold.server.state.RegistryState.run`). Pure standard library, so
the lifecycle and domain layers may import it.
"""

from __future__ import annotations

import contextvars
import random
import re

_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("cargohold_request_id", default=None)
_client_address: contextvars.ContextVar[str | None] = contextvars.ContextVar("cargohold_client", default=None)


def new_request_id() -> str:
    """24 hex digits. A request ID must be unique, not unguessable (it is printed in logs and answers), so it
    comes from the standard PRNG, which the ``random`` module reseeds in every forked worker, rather than from
    the kernel: a ``getrandbits`` call costs a fraction of a ``getrandom`` system call on every request."""
    return f"{random.getrandbits(96):024x}"


def accepted_request_id(incoming: str | None) -> str:
    """The incoming ID when it is sane, else a new one."""
    if incoming is not None and _SANE.match(incoming):
        return incoming
    return new_request_id()


def current_request_id() -> str | None:
    """The ID of the request being handled in this context (None outside a request)."""
    return _request_id.get()


def current_client_address() -> str | None:
    return _client_address.get()


def set_client_address(address: str | None) -> None:
    _client_address.set(address)


def set_request_id(request_id: str | None) -> None:
    _request_id.set(request_id)
