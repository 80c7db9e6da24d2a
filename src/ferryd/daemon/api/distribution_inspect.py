"""`GET /distribution/{name}/json`: a registry's descriptor of a reference and the
platforms it offers, without pulling (dockerd's distribution router)."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ferryd.daemon.api.params import meta_headers, registry_auth
from ferryd.daemon.api.params import service as service_of
from ferryd.distribution.inspect import inspect_distribution
from ferryd.errors import BadRequestError, InvalidRegistryAuthError
from ferryd.oci.reference import parse_reference
from ferryd.registry.auth import ANONYMOUS, Credentials

_IMAGE_ID = re.compile(r"(?:sha256:)?[a-f0-9]{64}")


async def inspect(request: Request) -> Response:
    """`{"Descriptor": {mediaType, digest, size}, "Platforms": [...]}`; the login is the
    client's `X-Registry-Auth` (one it cannot read is ignored, as dockerd ignores it),
    else the daemon's own, as for a pull."""
    name = request.path_params["name"]
    if _IMAGE_ID.fullmatch(name):
        # The client's mistake (an ID names no registry's manifest): a 400, as dockerd.
        raise BadRequestError("no manifest found for full image ID")
    reference = parse_reference(name)
    service = service_of(request)
    credentials = await service.credentials_for(reference.domain, _credentials(request))
    answer = await inspect_distribution(
        service.connector, reference, credentials, meta_headers=meta_headers(request)
    )
    return JSONResponse(answer)


def _credentials(request: Request) -> Credentials:
    try:
        return registry_auth(request.headers.get("x-registry-auth"))
    except InvalidRegistryAuthError:
        return ANONYMOUS
