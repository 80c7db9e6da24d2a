"""`POST /images/create?fromSrc=-`: `docker import`, as dockerd answers it.

The request body is the tarball; `repo` and `tag` name the image, `message` is its
comment, `platform` its platform (this host's by default) and each `changes` one
Dockerfile instruction. dockerd streams nothing while it imports from the body, then
says the image ID as a status: `{"status":"sha256:…"}`; a failure before that is an
HTTP error status with `{"message": …}` (400 for a bad parameter, change or tarball).

`fromSrc` naming a URL asks the daemon to download it: ferryd fetches no URL a client
names (the daemon would reach hosts the client may not), so that is refused (501)
with the way round it. The import is cancelled when the client goes away, and when
the daemon's shutdown grace period ends; what it staged is removed.
"""

from __future__ import annotations

import contextlib

import anyio
import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ferryd.concurrency import single_errors
from ferryd.daemon.api.limits import body_chunks
from ferryd.daemon.api.params import service as service_of
from ferryd.distribution.imports import DEFAULT_SOURCE, import_image
from ferryd.errors import FerrydError, InvalidReferenceError, NotSupportedError
from ferryd.oci.platform import host_platform, parse_platform
from ferryd.oci.reference import Reference, parse_reference


async def create(request: Request) -> Response:
    query = request.query_params
    source = query.get("fromSrc", "")
    if source != DEFAULT_SOURCE:
        raise NotSupportedError(
            f"importing from a URL ({source}) is not supported: ferryd fetches no URL a "
            f"client names. Download it and send it instead: curl -fsSL {source} | "
            "docker import - [REPOSITORY[:TAG]]"
        )
    reference = repo_tag_reference(query.get("repo", ""), query.get("tag", ""))
    platform = parse_platform(query["platform"]) if query.get("platform") else host_platform()
    message = query.get("message") or f"Imported from {source}"
    changes = query.getlist("changes")
    service = service_of(request)
    stopping: anyio.Event = request.app.state.daemon.stop_jobs
    cut_short = False
    result = None
    with single_errors():
        async with anyio.create_task_group() as tg:

            async def stop_when_told() -> None:
                nonlocal cut_short
                await stopping.wait()
                cut_short = True
                tg.cancel_scope.cancel()

            tg.start_soon(stop_when_told)
            with contextlib.suppress(ClientDisconnect):  # nobody is left to answer
                result = await import_image(
                    service.store,
                    service.event_logger,
                    body_chunks(request),  # no byte for a long while: a 408
                    reference=reference,
                    platform=platform,
                    message=message,
                    changes=changes,
                )
            tg.cancel_scope.cancel()
    if cut_short:
        raise FerrydError("ferryd is shutting down; run the command again")
    if result is None:  # the client went away: nobody to answer
        return Response(status_code=400)
    body = msgspec.json.encode({"status": result.image_id}) + b"\r\n"
    return Response(body, media_type="application/json")


def repo_tag_reference(repo: str, tag: str) -> Reference | None:
    """dockerd's RepoTagReference: none without `repo`; `tag` (else the repo's own tag,
    else `latest`); a digest cannot be imported to."""
    if not repo:
        return None
    reference = parse_reference(repo, default_tag=False)
    if reference.digest is not None:
        raise InvalidReferenceError("cannot import digest reference")
    if tag:
        return reference.repository().with_tag(tag)
    return reference if reference.tag is not None else reference.with_tag("latest")
