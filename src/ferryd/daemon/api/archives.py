"""The archive routes, as dockerd answers them: save (`GET /images/get?names=…`,
`GET /images/{name}/get`) streams a tar as the client reads it; load
(`POST /images/load?quiet=&platform=`) reads the request body as it arrives while its
answer streams docker's messages (`Loading layer`, `{"stream": "Loaded image: …"}`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ferryd.concurrency import single_errors
from ferryd.daemon.api.limits import patient_send
from ferryd.daemon.api.params import flag
from ferryd.daemon.api.params import service as service_of
from ferryd.daemon.api.streaming import ProgressStream, cancel_on_disconnect
from ferryd.distribution.archives import Export, load_archive, prepare_export
from ferryd.distribution.progress import ProgressOutput
from ferryd.distribution.service import ImageService
from ferryd.errors import BadRequestError, FerrydError
from ferryd.oci.platform import Platform, parse_platform, platform_of_parts
from ferryd.untrusted import loads

log = structlog.get_logger("ferryd.api")


async def save_images(request: Request) -> Response:
    """`GET /images/get?names=A&names=B`: the images, in one archive."""
    return await _export(request, request.query_params.getlist("names"))


async def save_image(request: Request) -> Response:
    """`GET /images/{name}/get`: one image (or every tag of a repository)."""
    return await _export(request, [request.path_params["name"]])


async def _export(request: Request, names: list[str]) -> Response:
    platform = platform_param(request.query_params.get("platform", ""))
    service = service_of(request)
    # Unknown names (404) and other platforms' images are refused before any byte.
    # Shielded: what it holds must reach the response, which lets go of it.
    with anyio.CancelScope(shield=True):
        export = await anyio.to_thread.run_sync(prepare_export, service.store, names, platform)
    return _TarResponse(export, service)


async def load_images(request: Request) -> Response:
    """`POST /images/load?quiet=&platform=`: load the archive the body streams in."""
    query = request.query_params
    quiet = flag(query.get("quiet", "1"))
    platform = platform_param(query.get("platform", ""))
    return _LoadResponse(service_of(request), quiet, platform, request.app.state.daemon.stop_jobs)


def platform_param(text: str) -> Platform | None:
    """dockerd's `platform`: an OCI platform as JSON (API 1.48+), or `os/arch[/variant]`."""
    if not text.strip():
        return None
    if not text.lstrip().startswith("{"):
        return parse_platform(text)
    try:
        value = loads(text)
    except ValueError:
        raise BadRequestError(f"failed to parse platform: {text!r} is not JSON") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BadRequestError(f"failed to parse platform: {text!r}")
    if not value.get("os") or not value.get("architecture"):
        raise BadRequestError("both OS and Architecture must be provided")
    variant = value.get("variant") or None
    return platform_of_parts(value["os"], value["architecture"], variant, given=text)


class _TarResponse(Response):
    """200 `application/x-tar`, produced as the client reads it. A failure once it has
    begun (a stored blob gone bad) leaves it unfinished: the client sees the transfer cut,
    never an archive that looks whole."""

    def __init__(self, export: Export, service: ImageService) -> None:
        self._export = export
        self._service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        send = patient_send(send, scope)  # a client that stops reading lets go of the layers
        started = time.monotonic()
        sent = 0
        finished = False
        try:
            with single_errors():
                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel_on_disconnect, receive, tg.cancel_scope)
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [(b"content-type", b"application/x-tar")],
                        }
                    )
                    async for piece in self._export.chunks():
                        await send({"type": "http.response.body", "body": piece, "more_body": True})
                        sent += len(piece)
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    finished = True
                    tg.cancel_scope.cancel()
        except FerrydError as exc:
            log.warning(
                "image.save_failed",
                images=self._export.images,
                error=str(exc),
                bytes=sent,
                seconds=round(time.monotonic() - started, 3),
            )
            return
        finally:
            self._export.release()
        if not finished:
            log.warning("image.save_failed", images=self._export.images, error="cancelled")
            return
        for image_id in self._export.images:
            self._service.event_logger(
                image_id, image_id, "save", bytes=sent, seconds=round(time.monotonic() - started, 3)
            )


class _RequestBody:
    """The request body for a job that reads it while its answer streams.

    The answer's disconnect watcher must not take body messages: it is given `watch`,
    which says the client is gone when the body reader has seen it go, and once the body
    has been read whole, waits for the disconnect itself.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._changed = anyio.Event()
        self._gone = False

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._gone = True
                self._changed.set()
                await anyio.sleep_forever()  # the watcher cancels the job
            body: bytes = message.get("body", b"")
            if body:
                yield body
            if not message.get("more_body", False):
                self._changed.set()
                return

    async def watch(self) -> Message:
        await self._changed.wait()
        if self._gone:
            return {"type": "http.disconnect"}
        return await self._receive()


class _LoadResponse(Response):
    def __init__(
        self,
        service: ImageService,
        quiet: bool,
        platform: Platform | None,
        deadline: anyio.Event,
    ) -> None:
        self._service = service
        self._quiet = quiet
        self._platform = platform
        self._deadline = deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = _RequestBody(receive)
        service = self._service

        async def job(progress: ProgressOutput) -> None:
            await load_archive(
                service.store,
                body.chunks(),
                progress,
                service.event_logger,
                quiet=self._quiet,
                platform=self._platform,
                default_platform=service.default_platform,
            )

        await ProgressStream(job, self._deadline)(scope, body.watch, send)
