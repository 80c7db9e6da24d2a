"""The Docker-Engine-shaped API: its route table, the version prefix, and how errors
become answers (paths, parameters and JSON as dockerd's)."""

from __future__ import annotations

import re

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, request_response
from starlette.types import ASGIApp, Receive, Scope, Send

from ferryd.daemon.api import auth, distribution_inspect, fsck, images, inventory, system
from ferryd.daemon.api.access import AccessControl, AccessMiddleware, AccessPolicy
from ferryd.daemon.api.access_log import RequestLog
from ferryd.daemon.api.archives import load_images, save_image, save_images
from ferryd.daemon.api.limits import IdleLimitedBody
from ferryd.daemon.api.metrics import RequestMetrics, metrics
from ferryd.daemon.api.routing import NotSupported, OwnMethodsRoute
from ferryd.daemon.api.system import API_VERSION, MIN_API_VERSION
from ferryd.daemon.api.versions import CURRENT, MINIMUM, SCOPE_KEY
from ferryd.daemon.state import DaemonState
from ferryd.distribution.service import ImageService
from ferryd.errors import FerrydError

_VERSION_PREFIX = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


class StripVersion:
    """`/v1.47/images/json` → `/images/json`, the version left in the scope for the
    routes (`versions.asked_version`); versions newer than ours or older than the
    minimum refused with dockerd's 400."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            match = _VERSION_PREFIX.match(scope["path"])
            if match is not None:
                asked = (_version_part(match.group(1)), _version_part(match.group(2)))
                refusal = _refusal(asked, f"{match.group(1)[:20]}.{match.group(2)[:20]}")
                if refusal is not None:
                    await _error(400, refusal)(scope, receive, send)
                    return
                path = match.group(3)
                scope = {**scope, "path": path, "raw_path": path.encode(), SCOPE_KEY: asked}
        await self._app(scope, receive, send)


def _refusal(asked: tuple[int, int], shown: str) -> str | None:
    """dockerd's message for a version it does not serve (`shown` as the client wrote
    it), or None."""
    if asked > CURRENT:
        return f"client version {shown} is too new. Maximum supported API version is {API_VERSION}"
    if asked < MINIMUM:
        return (
            f"client version {shown} is too old. Minimum supported API version is "
            f"{MIN_API_VERSION}, please upgrade your client to a newer version"
        )
    return None


def _version_part(digits: str) -> int:
    """One number of `/v1.47`: a run of digits too long for `int()` (over 4300, a
    ValueError) is a version far newer than any, not a crash."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 9 else 10**9


def _unversioned(path: str) -> str:
    """`/v1.47/images/json` → `/images/json`: the route a path names."""
    match = _VERSION_PREFIX.match(path)
    return match.group(3) if match is not None else path


async def _ferryd_error(request: Request, exc: Exception) -> Response:
    """The one place an error becomes an answer: its class knows the status."""
    assert isinstance(exc, FerrydError)
    return _error(exc.status, str(exc))


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client left while its request's body was read: nobody reads the answer, and
    it is no error of the daemon's (it was a 500 with a traceback in the log). 400, as
    an import its client left (imports.py)."""
    return Response(status_code=400)


async def _not_found(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return _error(405, f"method {request.method} not allowed on {request.url.path}")
    return _error(exc.status_code, "page not found")


def build_app(
    service: ImageService, state: DaemonState, access: AccessControl | None = None
) -> ASGIApp:
    """The API: every route behind the request count (GET /metrics), the request log,
    access control (`access`, swapped by a reload; by default built from the settings)
    and the version prefix.

    Each route needs a permission: `access.ROUTES` lists them, and a route added here
    needs its line there (a route the table does not know needs `all`).
    """
    if access is None:
        access = AccessControl(AccessPolicy(state.settings.access))
    routes = [
        Route("/_ping", system.ping, methods=["GET", "HEAD"]),
        Route("/version", system.version, methods=["GET"]),
        Route("/info", system.info, methods=["GET"]),
        Route("/events", system.events, methods=["GET"]),
        Route("/transfers", system.transfers, methods=["GET"]),
        Route("/jobs", system.jobs, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/fsck", fsck.fsck, methods=["POST"]),
        Route("/system/df", inventory.disk_usage, methods=["GET"]),
        Route("/auth", auth.auth, methods=["POST"]),
        Route("/distribution/{name:path}/json", distribution_inspect.inspect, methods=["GET"]),
        Route("/images/create", images.create, methods=["POST"]),
        Route("/images/json", inventory.images, methods=["GET"]),
        Route("/images/prune", inventory.prune_images, methods=["POST"]),
        # Nothing of these to prune: `docker system prune` goes on to the images. Other
        # methods on these paths are the 501s of NotSupported.
        OwnMethodsRoute("/containers/prune", inventory.prune_containers, methods=["POST"]),
        OwnMethodsRoute("/networks/prune", inventory.prune_networks, methods=["POST"]),
        OwnMethodsRoute("/volumes/prune", inventory.prune_volumes, methods=["POST"]),
        OwnMethodsRoute("/build/prune", inventory.prune_build_cache, methods=["POST"]),
        Route("/images/get", save_images, methods=["GET"]),
        # Its body is read while its answer streams: the waits for it limited here.
        Route("/images/load", IdleLimitedBody(request_response(load_images)), methods=["POST"]),
        Route("/images/{name:path}/json", images.inspect, methods=["GET"]),
        Route("/images/{name:path}/history", inventory.history, methods=["GET"]),
        Route("/images/{name:path}/push", images.push, methods=["POST"]),
        Route("/images/{name:path}/tag", images.tag, methods=["POST"]),
        Route("/images/{name:path}/get", save_image, methods=["GET"]),
        # Every path under /images/: after the specific image routes, and a 404 (not a
        # 405) for other methods on paths no route serves.
        OwnMethodsRoute("/images/{name:path}", images.delete, methods=["DELETE"]),
        NotSupported(),  # containers, volumes, builds…: 501 with one sentence
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: _not_found,
            FerrydError: _ferryd_error,
            ClientDisconnect: _client_gone,
        },
    )
    app.state.service = service
    app.state.daemon = state
    return RequestMetrics(
        RequestLog(
            AccessMiddleware(StripVersion(app), access, _ferryd_error, route_path=_unversioned)
        ),
        state.metrics,
        routes,
        route_path=_unversioned,
    )
