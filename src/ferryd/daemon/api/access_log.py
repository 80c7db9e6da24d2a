"""One log line per API request: what was asked, by whom, the answer, how long it took."""

from __future__ import annotations

import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferryd.daemon.api.peers import Peer

log = structlog.get_logger("ferryd.api")


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

        async def remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, remember_status)
        finally:
            peer: Peer | None = scope.get("state", {}).get("peer")
            query = scope.get("query_string", b"").decode("latin-1")
            log.info(
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
