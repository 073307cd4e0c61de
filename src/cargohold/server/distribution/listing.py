"""Listings: ``/v2/<name>/tags/list``, ``/v2/_catalog`` and the referrers API."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from aiohttp import web

from cargohold.oci import mediatypes as mt
from cargohold.server.distribution.blobs import parse_digest
from cargohold.server.http.errors import RegistryError, name_unknown
from cargohold.server.http.query_limits import LimitError, page_size
from cargohold.server.state import state_of

MAX_PAGE = 10_000
"""Largest page served; a client asking for more gets this many and a ``Link`` to the rest."""


def _page_size(request: web.Request) -> int | None:
    value = request.query.get("n")
    if value is None:
        return None
    try:
        return page_size(value, name="n", default=MAX_PAGE, maximum=MAX_PAGE, minimum=0)
    except LimitError as exc:
        raise RegistryError("UNSUPPORTED", str(exc), status=400) from None


def _paginate(items: list[str], limit: int | None) -> tuple[list[str], bool]:
    """Items were fetched with one extra row so we know whether a next page exists."""
    if limit is None or len(items) <= limit:
        return items, False
    return items[:limit], True


def _json(
    body: object, *, content_type: str = "application/json", headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), content_type=content_type, headers=headers)


async def list_tags(request: web.Request, name: str) -> web.Response:
    state = state_of(request)
    limit = _page_size(request)
    last = request.query.get("last")
    if limit == 0:
        if not await state.run(state.metadata.repository_exists, name):
            raise name_unknown(name)
        return _json({"name": name, "tags": []})
    fetched = await state.run(state.metadata.list_tags, name, last=last, limit=None if limit is None else limit + 1)
    if fetched is None:
        raise name_unknown(name)
    tags, more = _paginate(fetched, limit)
    headers = {}
    if more and tags:
        query = urlencode({"n": limit, "last": tags[-1]})
        headers["Link"] = f'</v2/{name}/tags/list?{query}>; rel="next"'
    return _json({"name": name, "tags": tags}, headers=headers)


async def catalog(request: web.Request) -> web.Response:
    state = state_of(request)
    limit = _page_size(request)
    if limit == 0:
        return _json({"repositories": []})
    fetched = await state.run(
        state.metadata.list_repositories, last=request.query.get("last"), limit=None if limit is None else limit + 1
    )
    repositories, more = _paginate(fetched, limit)
    # Each caller sees only the repositories it may pull from (an admin sees all).
    repositories = [name for name in repositories if await state.access.allows(request, name, "pull")]
    headers = {}
    if more and repositories:
        query = urlencode({"n": limit, "last": repositories[-1]})
        headers["Link"] = f'</v2/_catalog?{query}>; rel="next"'
    return _json({"repositories": repositories}, headers=headers)


async def referrers(request: web.Request, name: str, digest_text: str) -> web.Response:
    state = state_of(request)
    subject = parse_digest(digest_text)
    artifact_type = request.query.get("artifactType")
    descriptors = await state.run(state.metadata.referrers, name, str(subject), artifact_type)
    index = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [descriptor.to_json() for descriptor in descriptors],
    }
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
    return _json(index, content_type=mt.OCI_INDEX, headers=headers)
