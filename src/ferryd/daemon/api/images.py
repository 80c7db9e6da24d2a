"""The image routes: pull, push, tag, remove and inspect, as dockerd answers them (the
list, history and prune are in inventory.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ferryd.daemon.api import imports
from ferryd.daemon.api.archives import platform_param
from ferryd.daemon.api.params import flag, meta_headers, registry_auth
from ferryd.daemon.api.params import service as service_of
from ferryd.daemon.api.shapes import image_inspect, with_legacy_inspect_fields
from ferryd.daemon.api.streaming import ProgressStream
from ferryd.daemon.api.versions import asked_version
from ferryd.distribution.progress import ProgressOutput
from ferryd.errors import BadRequestError
from ferryd.oci.digest import parse_digest
from ferryd.oci.platform import parse_platform
from ferryd.oci.reference import Reference, parse_reference, parse_repository
from ferryd.registry.auth import Credentials


async def create(request: Request) -> Response:
    """`POST /images/create?fromImage=&tag=&platform=`: pull, streaming progress; with
    `fromSrc` and no `fromImage`, an import (`imports.create`).

    ferryd's own parameters, for an index (a multi-platform image): `platforms=A,B`
    pulls each of those platforms, `all-platforms=1` every platform (and the
    attestations of those pulled). dockerd's `platform` pulls one.
    """
    query = request.query_params
    if not query.get("fromImage") and query.get("fromSrc"):
        return await imports.create(request)  # dockerd: no fromImage is an import
    from_image = query.get("fromImage", "")
    if not from_image:
        raise BadRequestError("fromImage is required")
    reference = _pull_reference(from_image, query.get("tag", ""))
    wanted = platform_param(query.get("platform", ""))
    several = tuple(
        parse_platform(text)
        for value in query.getlist("platforms")
        for text in value.split(",")
        if text.strip()
    )
    every = flag(query.get("all-platforms", ""))
    if every and (wanted is not None or several):
        raise BadRequestError(
            "all-platforms pulls every platform: platform and platforms cannot be given with it"
        )
    if several and wanted is not None:
        several = tuple(dict.fromkeys((wanted, *several)))
        wanted = None
    service = service_of(request)
    return _streamed(
        request,
        lambda progress, credentials, meta: service.pull(
            reference,
            progress,
            platform=wanted,
            platforms=several,
            all_platforms=every,
            credentials=credentials,
            meta_headers=meta,
        ),
    )


async def push(request: Request) -> Response:
    """`POST /images/{name}/push?tag=&platform=`: push, streaming progress. A tag that
    names an index pushes every platform and the index (its own bytes: its digest is
    kept); `platform` (API 1.46+, JSON or os/arch) pushes that platform's image alone,
    ferryd's `reduced-index=1` a new index of the platforms stored."""
    name = request.path_params["name"]
    tag = request.query_params.get("tag", "")
    platform = platform_param(request.query_params.get("platform", ""))
    reduced = flag(request.query_params.get("reduced-index", ""))
    if platform is not None and reduced:
        raise BadRequestError("platform pushes one image: reduced-index cannot be given with it")
    repository = parse_repository(name)
    reference = repository.with_tag(tag) if tag else repository
    service = service_of(request)
    return _streamed(
        request,
        lambda progress, credentials, meta: service.push(
            reference,
            progress,
            platform=platform,
            reduced_index=reduced,
            credentials=credentials,
            meta_headers=meta,
        ),
    )


async def tag(request: Request) -> Response:
    """`POST /images/{name}/tag?repo=&tag=`: 201, as dockerd."""
    query = request.query_params
    repository = parse_repository(query.get("repo", ""))
    target = repository.with_tag(query.get("tag") or "latest")
    await service_of(request).tag(request.path_params["name"], target)
    return Response(status_code=201)


async def delete(request: Request) -> Response:
    """`DELETE /images/{name}?force=`: untag, and delete what nothing names any more."""
    force = flag(request.query_params.get("force", ""))
    records = await service_of(request).remove(request.path_params["name"], force=force)
    return JSONResponse(records)


async def inspect(request: Request) -> Response:
    """`GET /images/{name}/json?manifests=`: a name of an index shows its `Descriptor`
    and `Manifests`; `manifests=1` shows a single image's too."""
    service = service_of(request)
    name = request.path_params["name"]
    manifests = flag(request.query_params.get("manifests", ""))
    version = asked_version(request)

    def describe() -> dict[str, Any]:
        store = service.store
        shape = image_inspect(store, store.resolve_target(name), manifests=manifests)
        return with_legacy_inspect_fields(shape, version) if version < (1, 45) else shape

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


def _streamed(
    request: Request,
    run: Callable[[ProgressOutput, Credentials, dict[str, str]], Awaitable[object]],
) -> Response:
    """A pull or push as a progress stream, with the client's login and `X-Meta-*`
    headers; a login header it cannot read is refused here, before the stream starts."""
    credentials = _credentials(request)
    meta = meta_headers(request)

    async def job(progress: ProgressOutput) -> None:
        await run(progress, credentials, meta)

    return _Asgi(ProgressStream(job, request.app.state.daemon.stop_jobs))


def _credentials(request: Request) -> Credentials:
    return registry_auth(request.headers.get("x-registry-auth"))


class _Asgi(Response):
    """Lets a route return a plain ASGI callable (the progress stream)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)
