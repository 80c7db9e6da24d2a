"""`POST /auth`: check a login against a registry, as dockerd answers `docker login`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ferryd.daemon.api import limits
from ferryd.daemon.api.params import load_json
from ferryd.distribution.login import login
from ferryd.distribution.service import ImageService
from ferryd.errors import InvalidRegistryAuthError
from ferryd.registry.auth import credentials_from_entry


async def auth(request: Request) -> Response:
    """The body is docker's AuthConfig (`username`, `password`, `serveraddress`,
    `identitytoken`…); the answer `{"Status": "Login Succeeded", "IdentityToken": …}`
    (the identity token only when the registry's token service gave one), or the
    registry's refusal as dockerd words it (401)."""
    body = await limits.read_small_body(request, limits.MAX_LOGIN_BODY, "the login")
    try:
        data = load_json(body) if body.strip() else {}
    except ValueError as exc:
        raise InvalidRegistryAuthError(
            f"invalid X-Registry-Auth header: invalid JSON: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRegistryAuthError("invalid X-Registry-Auth header: expected a JSON object")
    credentials = credentials_from_entry(data, "the login")
    server = data.get("serveraddress") or ""
    service: ImageService = request.app.state.service
    identity_token = await login(service.connector, credentials, server)
    answer = {"Status": "Login Succeeded"}
    if identity_token:
        answer["IdentityToken"] = identity_token
    return JSONResponse(answer)
