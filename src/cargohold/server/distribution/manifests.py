"""Manifests: ``HEAD/GET/PUT/DELETE /v2/<name>/manifests/<tag-or-digest>``.

The handlers parse the reference and the body and phrase the answer (content negotiation, ``Location``,
``OCI-Subject``, ``OCI-Tag``); what a manifest PUT or DELETE must keep true is :mod:`cargohold.domain.manifests`.
Manifest bytes are stored and served exactly as pushed: their digest *is* their identity.
"""

from __future__ import annotations

from aiohttp import web

from cargohold.domain.manifests import TAG_RULE
from cargohold.metadata.store import StoredManifest
from cargohold.oci.digest import Digest, DigestError, is_digest
from cargohold.oci.manifest import MAX_MANIFEST_SIZE
from cargohold.oci.reference import is_valid_tag
from cargohold.server.auth.access import PRINCIPAL_KEY, Principal
from cargohold.server.http.bodies import BodyStalled, BodyTooLarge, read_body
from cargohold.server.http.errors import RegistryError
from cargohold.server.state import state_of


def _parse_reference(reference: str, method: str) -> tuple[str, bool]:
    """``(canonical reference, is_digest)``, or the error distribution gives for a reference that cannot exist.

    Aligned with the reference registry (tests/test_status_alignment.py compares the two): an invalid tag
    matches no manifest route there, so every method gets 404 (here with MANIFEST_UNKNOWN and the reason).
    A malformed digest is 400 DIGEST_INVALID for DELETE and PUT, as there; for GET and HEAD, where that
    registry fails with a 500, it is 404 MANIFEST_UNKNOWN: no manifest can have that digest.
    """
    if is_digest(reference):
        try:
            return str(Digest.parse(reference)), True
        except DigestError as exc:
            if method in ("GET", "HEAD"):
                raise _cannot_exist(reference, str(exc)) from None
            raise RegistryError("DIGEST_INVALID", str(exc), detail={"digest": reference}) from None
    if not is_valid_tag(reference):
        raise _cannot_exist(reference, f"tag {reference[:200]!r} is invalid: {TAG_RULE}")
    return reference, False


def _cannot_exist(reference: str, reason: str) -> RegistryError:
    return RegistryError(
        "MANIFEST_UNKNOWN",
        f"{reason}; no manifest in this registry can have that reference",
        detail={"reference": reference[:300]},
    )


def _accepts(accept_header: str, media_type: str) -> bool:
    accepted = {part.split(";")[0].strip().lower() for part in accept_header.split(",") if part.strip()}
    return not accepted or bool(accepted & {media_type, "*/*", "application/*"})


def _manifest_headers(manifest: StoredManifest) -> dict[str, str]:
    return {
        "Content-Type": manifest.media_type,
        "Docker-Content-Digest": manifest.digest,
        "ETag": f'"{manifest.digest}"',
    }


async def get_manifest(request: web.Request, name: str, reference: str) -> web.Response:
    state = state_of(request)
    canonical, by_digest = _parse_reference(reference, request.method)
    manifest = await state.manifests.get(name, canonical, by_digest=by_digest)
    accept = ",".join(request.headers.getall("Accept", []))
    # Like Docker's registry: a tag resolves only to a kind the client says it understands, so an old client
    # is not handed an OCI index it cannot parse. A digest names exact bytes and is always served.
    if not by_digest and not _accepts(accept, manifest.media_type):
        raise RegistryError(
            "MANIFEST_UNKNOWN",
            f"manifest {canonical} is a {manifest.media_type}, which the Accept header does not include",
            detail={"reference": canonical, "mediaType": manifest.media_type},
        )
    return web.Response(body=manifest.payload, headers=_manifest_headers(manifest))


async def _read_manifest_body(request: web.Request) -> bytes:
    try:
        return await read_body(request, MAX_MANIFEST_SIZE)
    except BodyTooLarge:
        raise _manifest_too_large() from None
    except BodyStalled as exc:
        raise RegistryError("MANIFEST_INVALID", f"incomplete manifest: {exc}", status=408, close=True) from None


def _manifest_too_large() -> RegistryError:
    return RegistryError(
        "SIZE_INVALID",
        f"manifest is larger than the {MAX_MANIFEST_SIZE} bytes this registry accepts",
        status=413,
        detail={"limit": MAX_MANIFEST_SIZE},
    )


async def put_manifest(request: web.Request, name: str, reference: str) -> web.Response:
    state = state_of(request)
    canonical, by_digest = _parse_reference(reference, request.method)
    payload = await _read_manifest_body(request)
    content_type = request.headers.get("Content-Type")
    if by_digest:
        pushed = await state.manifests.put(
            name, payload, content_type, digest=Digest.parse(canonical), tags=request.query.getall("tag", [])
        )
    else:
        pushed = await state.manifests.put(name, payload, content_type, tags=[canonical])
    response = web.Response(
        status=201,
        headers={"Location": f"/v2/{name}/manifests/{pushed.digest}", "Docker-Content-Digest": str(pushed.digest)},
    )
    if pushed.subject is not None:
        response.headers["OCI-Subject"] = str(pushed.subject)
    for tag in pushed.tags if by_digest else []:
        response.headers.add("OCI-Tag", tag)
    return response


async def delete_manifest(request: web.Request, name: str, reference: str) -> web.Response:
    """A saved build whose image this is gets evicted with it (see cargohold.lifecycle.registry_delete)."""
    state = state_of(request)
    canonical, by_digest = _parse_reference(reference, request.method)
    principal: Principal | None = request.get(PRINCIPAL_KEY)
    actor = principal.name if principal is not None else "anonymous"
    await state.manifests.delete(name, canonical, by_digest=by_digest, actor=actor)
    return web.Response(status=202)
