"""How many API connections, and for how long: a flood of idle or half-sent connections
must not exhaust the daemon's file descriptors or shut out `/_ping` and `ferryd ps`.

- A connection must finish sending a request's headers within `HEADER_TIMEOUT` of
  opening (or of starting the request); uvicorn's keep-alive timeout covers the wait
  between requests.
- At most `limit` connections: one over it first makes room by closing the connection
  idle the longest (no request running); when every connection is busy, up to
  `RESERVE` more are let in for the cheap routes only (the rest get 503), and beyond
  that a new connection is closed at once.
"""

from __future__ import annotations

import asyncio
import re
import resource
import time

import structlog
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ferryd.daemon.api.limits import BoundedRequestProtocol

log = structlog.get_logger("ferryd.api")

HEADER_TIMEOUT = 10.0  # seconds from connecting (or starting a request) to its last header
KEEP_ALIVE_TIMEOUT = 5  # seconds an idle keep-alive connection is kept
MAX_CONNECTIONS = 1000
RESERVE = 32
# What still answers from the reserve: the health check and what shows the daemon's state
# (a scrape is a few milliseconds: its numbers say why the daemon is so busy).
_CHEAP = re.compile(r"(?:/v\d+\.\d+)?/(?:_ping|version|info|transfers|jobs|metrics)")


def connection_limit() -> int:
    """`MAX_CONNECTIONS`, or fewer when the file descriptor limit is low: the soft limit
    is raised to the hard one first (as dockerd does), and half of it is left for
    registry connections, blobs and the database."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return max(16, min(MAX_CONNECTIONS, (soft - RESERVE) // 2))


class GuardedProtocol(BoundedRequestProtocol):
    """uvicorn's HTTP protocol with the peer's credentials, the limits on what a request
    may be (limits.py), a header deadline and a cap."""

    limit = MAX_CONNECTIONS  # set by the server from `connection_limit()`

    _since = 0.0
    _deadline: asyncio.TimerHandle | None = None
    _reserve = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._since = time.monotonic()
        if len(self.connections) > self.limit and not self._make_room():
            if len(self.connections) > self.limit + RESERVE:
                log.warning("api.connection_refused", connections=len(self.connections))
                transport.abort()
                return
            self._reserve = True
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["state"]["reserve"] = self._reserve
        self._since = time.monotonic()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    @property
    def idle(self) -> bool:
        """No request running: closing the connection loses nothing but a socket."""
        return self.cycle is None or self.cycle.response_complete

    def _make_room(self) -> bool:
        """Close the connection idle the longest; False when all of them are busy."""
        idle = [
            other
            for other in self.connections
            if other is not self and isinstance(other, GuardedProtocol) and other.idle
        ]
        if not idle:
            return False
        oldest = min(idle, key=lambda other: other._since)
        oldest.transport.close()
        return True

    def _arm(self) -> None:
        if self._deadline is None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(HEADER_TIMEOUT, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.idle and not self.transport.is_closing():
            self.transport.close()


class ReserveOnly:
    """ASGI middleware: a connection let in from the reserve gets only the cheap routes."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reserve = scope["type"] == "http" and scope.get("state", {}).get("reserve", False)
        if reserve and not _CHEAP.fullmatch(scope["path"]):
            response = JSONResponse(
                {"message": "ferryd has too many connections open: try again later"},
                status_code=503,
            )
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)
