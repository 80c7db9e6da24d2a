"""Routes of the Docker-Engine-shaped API (paths, parameters and JSON as dockerd's)."""

from __future__ import annotations

import re
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ferryd.daemon.api import fsck, system
from ferryd.daemon.api.access import AccessControl, AccessMiddleware, AccessPolicy
from ferryd.daemon.api.access_log import RequestLog
from ferryd.daemon.api.shapes import image_inspect, image_summary
from ferryd.daemon.api.streaming import ProgressStream
from ferryd.daemon.api.system import API_VERSION
from ferryd.daemon.state import DaemonState
from ferryd.distribution.progress import ProgressOutput
from ferryd.distribution.service import ImageService
from ferryd.errors import BadRequestError, FerrydError
from ferryd.oci.digest import parse_digest
from ferryd.oci.platform import parse_platform
from ferryd.oci.reference import Reference, parse_reference, parse_repository
from ferryd.registry.auth import ANONYMOUS, Credentials, decode_registry_auth

_VERSION_PREFIX = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")


def _service(request: Request) -> ImageService:
    service: ImageService = request.app.state.service
    return service


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


async def create_image(request: Request) -> Response:
    """`POST /images/create?fromImage=&tag=&platform=`: pull, streaming progress."""
    query = request.query_params
    if query.get("fromSrc"):
        return _error(501, "importing images (fromSrc) is not supported by ferryd")
    from_image = query.get("fromImage", "")
    if not from_image:
        raise BadRequestError("fromImage is required")
    reference = _pull_reference(from_image, query.get("tag", ""))
    wanted = parse_platform(query["platform"]) if query.get("platform") else None
    credentials = _credentials(request)
    meta = {k: v for k, v in request.headers.items() if k.lower().startswith("x-meta-")}
    service = _service(request)

    async def job(progress: ProgressOutput) -> None:
        await service.pull(
            reference, progress, platform=wanted, credentials=credentials, meta_headers=meta
        )

    return _Asgi(ProgressStream(job, request.app.state.daemon.stop_jobs))


async def push_image(request: Request) -> Response:
    """`POST /images/{name}/push?tag=`: push, streaming progress."""
    name = request.path_params["name"]
    tag = request.query_params.get("tag", "")
    repository = parse_repository(name)
    reference = repository.with_tag(tag) if tag else repository
    credentials = _credentials(request)
    meta = {k: v for k, v in request.headers.items() if k.lower().startswith("x-meta-")}
    service = _service(request)

    async def job(progress: ProgressOutput) -> None:
        await service.push(reference, progress, credentials=credentials, meta_headers=meta)

    return _Asgi(ProgressStream(job, request.app.state.daemon.stop_jobs))


async def tag_image(request: Request) -> Response:
    """`POST /images/{name}/tag?repo=&tag=`: 201, as dockerd."""
    query = request.query_params
    repository = parse_repository(query.get("repo", ""))
    target = repository.with_tag(query.get("tag") or "latest")
    await _service(request).tag(request.path_params["name"], target)
    return Response(status_code=201)


async def delete_image(request: Request) -> Response:
    """`DELETE /images/{name}?force=`: untag, and delete what nothing names any more."""
    force = request.query_params.get("force", "").lower() in ("1", "true")
    records = await _service(request).remove(request.path_params["name"], force=force)
    return JSONResponse(records)


async def list_images(request: Request) -> Response:
    service = _service(request)

    def collect() -> list[dict[str, Any]]:
        rows = [image_summary(service.store, image_id) for image_id in service.store.images.ids()]
        return sorted(rows, key=lambda row: row["Created"], reverse=True)

    return JSONResponse(await anyio.to_thread.run_sync(collect))


async def inspect_image(request: Request) -> Response:
    service = _service(request)
    name = request.path_params["name"]

    def describe() -> dict[str, Any]:
        return image_inspect(service.store, service.store.resolve(name))

    return JSONResponse(await anyio.to_thread.run_sync(describe))


def _pull_reference(from_image: str, tag: str) -> Reference:
    """Docker's rules: `tag` may be a tag or a digest, and fromImage may carry either;
    with neither, every tag of the repository is pulled (`docker pull -a` sends that;
    a plain `docker pull` sends tag=latest)."""
    if tag:
        if ":" in tag and tag.split(":", 1)[0] in ("sha256", "sha384", "sha512"):
            parse_digest(tag)
            return parse_reference(f"{from_image}@{tag}")
        base = parse_reference(from_image, default_tag=False)
        if base.tag is None and base.digest is None:
            return base.with_tag(tag)
        return base
    return parse_reference(from_image, default_tag=False)


def _credentials(request: Request) -> Credentials:
    header = request.headers.get("x-registry-auth")
    return decode_registry_auth(header) if header else ANONYMOUS


class _Asgi(Response):
    """Lets a route return a plain ASGI callable (the progress stream)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


class StripVersion:
    """`/v1.47/images/json` → `/images/json`; refuse versions newer than ours as dockerd."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            match = _VERSION_PREFIX.match(scope["path"])
            if match is not None:
                asked = (int(match.group(1)), int(match.group(2)))
                if asked > tuple(int(x) for x in API_VERSION.split(".")):
                    response = _error(
                        400,
                        f"client version {asked[0]}.{asked[1]} is too new. "
                        f"Maximum supported API version is {API_VERSION}",
                    )
                    await response(scope, receive, send)
                    return
                scope = {**scope, "path": match.group(3), "raw_path": match.group(3).encode()}
        await self._app(scope, receive, send)


def _unversioned(path: str) -> str:
    """`/v1.47/images/json` → `/images/json`: the route a path names."""
    match = _VERSION_PREFIX.match(path)
    return match.group(3) if match is not None else path


async def _ferryd_error(request: Request, exc: Exception) -> Response:
    """The one place an error becomes an answer: its class knows the status."""
    assert isinstance(exc, FerrydError)
    return _error(exc.status, str(exc))


async def _not_found(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return _error(405, f"method {request.method} not allowed on {request.url.path}")
    return _error(exc.status_code, "page not found")


def build_app(
    service: ImageService, state: DaemonState, access: AccessControl | None = None
) -> ASGIApp:
    """The API: every route behind the request log, access control (`access`, swapped
    by a reload; by default built from the settings) and the version prefix.

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
        Route("/fsck", fsck.fsck, methods=["POST"]),
        Route("/images/create", create_image, methods=["POST"]),
        Route("/images/json", list_images, methods=["GET"]),
        Route("/images/{name:path}/json", inspect_image, methods=["GET"]),
        Route("/images/{name:path}/push", push_image, methods=["POST"]),
        Route("/images/{name:path}/tag", tag_image, methods=["POST"]),
        Route("/images/{name:path}", delete_image, methods=["DELETE"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _not_found, FerrydError: _ferryd_error},
    )
    app.state.service = service
    app.state.daemon = state
    return RequestLog(
        AccessMiddleware(StripVersion(app), access, _ferryd_error, route_path=_unversioned)
    )
