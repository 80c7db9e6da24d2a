"""One log line per API request: what was asked, by whom, the answer, how long it took;
and the request's ID on every log line of the work it starts.

The ID is the client's `X-Request-ID` when it sends a usable one, else a new one; the
answer carries it back in `X-Request-ID`. It is bound to structlog's context for the
request, so the pull, push and transfer lines the request causes name it.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferryd.daemon.api.peers import Peer

log = structlog.get_logger("ferryd.api")

# What a request ID from a client may look like: short, and nothing a log reader could
# mistake for structure.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Health checks arrive several times a second from some clients: only at debug.
_QUIET = re.compile(r"(?:/v\d+\.\d+)?/_ping")


def request_id(scope: Scope) -> str:
    """The client's X-Request-ID when usable, else a new random one."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if _CLIENT_ID.fullmatch(text):
                return text
    return uuid.uuid4().hex[:16]


class RequestLog:
    """ASGI middleware; a streamed answer (pull, push, events) is logged when it ends.

    Only the method, path and query are logged, never headers: X-Registry-Auth and
    Authorization carry secrets.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.monotonic()
        status = 0
        rid = request_id(scope)

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=rid):
            try:
                await self._app(scope, receive, answer)
            finally:
                peer: Peer | None = scope.get("state", {}).get("peer")
                query = scope.get("query_string", b"").decode("latin-1")
                level = log.debug if _QUIET.fullmatch(scope["path"]) else log.info
                level(
                    "api.request",
                    method=scope["method"],
                    path=scope["path"],
                    query=query or None,
                    status=status or None,
                    seconds=round(time.monotonic() - started, 3),
                    uid=peer.uid if peer else None,
                    gid=peer.gid if peer else None,
                    pid=peer.pid if peer else None,
                )
