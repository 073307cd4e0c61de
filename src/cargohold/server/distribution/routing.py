"""Maps ``/v2/…`` paths onto handlers.

Repository names contain slashes, so aiohttp's router cannot split them; one catch-all route hands the
tail here, where the OCI path grammar is matched, the name is validated, and the access policy is asked for
the actions the route needs *before* any handler runs.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from cargohold.oci.reference import NAME_MAX_LENGTH, is_valid_name
from cargohold.server.auth.access import PRINCIPAL_KEY, Target
from cargohold.server.distribution import blobs, listing, manifests, uploads
from cargohold.server.http.errors import RegistryError
from cargohold.server.http.request_keys import ROUTE_KEY
from cargohold.server.state import state_of

Handler = Callable[..., Awaitable[web.StreamResponse]]

ACTION_FOR_METHOD = {"GET": "pull", "HEAD": "pull", "POST": "push", "PATCH": "push", "PUT": "push", "DELETE": "delete"}
ACTION_OVERRIDES = {("upload", "DELETE"): "push"}
"""Cancelling an upload session is part of pushing, not deleting content: any push credential may cancel the
sessions it opened (the handler checks whose session it is; ``delete`` cancels anyone's)."""


@dataclass(frozen=True)
class Route:
    name: str
    pattern: re.Pattern[str]
    handlers: dict[str, Handler]


ROUTES = [
    Route("uploads", re.compile(r"^(?P<name>.+)/blobs/uploads/?$"), {"POST": uploads.start_upload}),
    Route(
        "upload",
        re.compile(r"^(?P<name>.+)/blobs/uploads/(?P<id>[^/]+)$"),
        {
            "GET": uploads.upload_status,
            "PATCH": uploads.patch_upload,
            "PUT": uploads.finish_upload,
            "DELETE": uploads.cancel_upload,
        },
    ),
    Route(
        "blob",
        re.compile(r"^(?P<name>.+)/blobs/(?P<digest>[^/]+)$"),
        {"GET": blobs.get_blob, "HEAD": blobs.get_blob, "DELETE": blobs.delete_blob},
    ),
    Route(
        "manifest",
        re.compile(r"^(?P<name>.+)/manifests/(?P<reference>[^/]+)$"),
        {
            "GET": manifests.get_manifest,
            "HEAD": manifests.get_manifest,
            "PUT": manifests.put_manifest,
            "DELETE": manifests.delete_manifest,
        },
    ),
    Route("tags", re.compile(r"^(?P<name>.+)/tags/list$"), {"GET": listing.list_tags}),
    Route("referrers", re.compile(r"^(?P<name>.+)/referrers/(?P<digest>[^/]+)$"), {"GET": listing.referrers}),
]


def match(path: str) -> tuple[Route, dict[str, str]] | None:
    for route in ROUTES:
        found = route.pattern.match(path)
        if found:
            return route, found.groupdict()
    return None


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Handle every ``/v2/<anything>`` request."""
    path = request.match_info["tail"]
    state = state_of(request)
    if path in ("_catalog", "_catalog/"):
        request[ROUTE_KEY] = "catalog"
        if request.method != "GET":
            raise _method_not_allowed(request.method, "the catalog")
        await state.access.authorize(request, None, frozenset({"catalog"}))
        return await listing.catalog(request)

    found = match(path)
    if found is None:
        raise RegistryError("NAME_UNKNOWN", f"no registry API at /v2/{path}", status=404, detail={"path": path})
    route, params = found
    request[ROUTE_KEY] = route.name
    name = params.pop("name")
    if not is_valid_name(name):
        raise RegistryError(
            "NAME_INVALID",
            f"repository name {name[:300]!r} is invalid: lowercase letters, digits and the separators '.', '_', "
            f"'__', '-' in '/'-separated components, at most {NAME_MAX_LENGTH} characters",
            detail={"name": name[:300]},
        )
    handler = route.handlers.get(request.method)
    if handler is None:
        raise _method_not_allowed(request.method, f"/v2/<name>/{route.name}")
    reference = next(iter(params.values()), "")
    target = Target(route.name, reference)
    action = ACTION_OVERRIDES.get((route.name, request.method), ACTION_FOR_METHOD[request.method])
    request[PRINCIPAL_KEY] = await state.access.authorize(request, name, frozenset({action}), target)
    return await handler(request, name, *params.values())


def _method_not_allowed(method: str, what: str) -> RegistryError:
    return RegistryError("UNSUPPORTED", f"{method} is not supported on {what}", status=405)
