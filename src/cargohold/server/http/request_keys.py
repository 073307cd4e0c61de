"""Typed keys for what one step of a request leaves on it for a later step (aiohttp request storage).

Typed :class:`aiohttp.web.RequestKey` objects rather than strings: a reader gets the value's type, and a
misspelt key is a name error instead of a silently missing entry. Keys that only one package sets and reads
live in that package (the authorised principal in ``server.auth.access``, the request ID and client address in
``cargohold.edge``); the two here are set by one plane and read by the shared plumbing (metrics, access log).
"""

from __future__ import annotations

from aiohttp import web

ROUTE_KEY = web.RequestKey("cargohold.route", str)
"""The OCI route name (``blob``, ``manifest``, ``catalog`` …) the ``/v2/`` dispatcher matched."""

USER_KEY = web.RequestKey("cargohold.user", str)
"""The authenticated caller's name, for the access log's ``user=`` field."""

__all__ = ["ROUTE_KEY", "USER_KEY"]
