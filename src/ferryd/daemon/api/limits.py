"""What a request may be, checked as its bytes arrive: a client gets a 4xx with
dockerd's `{"message": …}` naming the limit it passed, or its connection is closed,
before the daemon holds more than the limit of anything it sent.

uvicorn's httptools protocol kept whatever arrived: a URL or a header grew in memory
until its line ended (a 100 MB URL was read whole, copied again at each read, then
refused by httptools' URL parser in plain text; four clients streaming a header for
the 10 s header deadline took the daemon to 300 MB), headers and a chunked body's trailer
fields were listed without a count (the trailer's added to the running request's
headers), every request pipelined behind a running one was parsed and queued (590 MB
in 8 s from one connection), and a body its answer did not wait for was read
and dropped for as long as the client sent it. Now, per connection:

- The request line and headers (the head) take at most `MAX_HEAD` bytes, counted as
  they arrive: past it, 414 while the URL is still coming, 431 once it is the headers.
  dockerd (Go's server) allows 1 MiB; docker's real requests are far smaller (a login
  in `X-Registry-Auth` with a registry's identity token is a few KB, `filters` less),
  and httptools refuses a URL over 65,535 bytes anyway. At most `MAX_HEADERS` headers.
  A head that begins in the read that ends the request before it is counted from the
  next read on (the parser does not say where a message ended), so it may reach twice
  `MAX_HEAD`: still a bound, for a client that pipelines.
- A chunked body's framing (chunk sizes, extensions) and trailer, the bytes that are
  not body, take at most `MAX_HEAD` bytes between two pieces of body; the trailer's
  fields are dropped (no route reads them). Past it, the connection is closed.
- At most `MAX_PIPELINED` requests wait behind the running one (no docker client
  pipelines); past it, those are answered and the connection is closed.
- A body still arriving when its answer has been sent (a route that does not read it,
  a refusal) is read and dropped for up to `DRAIN_LIMIT` bytes and `DRAIN_TIMEOUT`
  seconds, so that a client still sending it gets the answer: one that ends within
  them leaves the connection as it was (kept alive, the requests behind it served),
  one that does not is closed (Go's server reads 256 KiB of such a body, then closes).

And per request, where a route reads the body (`body_chunks` and `IdleLimitedBody`
for an archive, `read_small_body` for a login):

- A body the route waits for must keep coming: no byte for `BODY_IDLE_TIMEOUT` seconds
  is a 408. It is no deadline: a `docker load` or `docker import` may stream for as
  long as it needs, at any pace, as with dockerd (which has no body timeout at all).
- A small JSON body (`POST /auth`) has `SMALL_BODY_TIMEOUT` seconds in all and a size
  limit, checked against its Content-Length first, then as it arrives (413).

And for a save's archive (`patient_send`): a piece the client has not taken within
`WRITE_IDLE_TIMEOUT` seconds aborts its connection (the requests pipelined behind it go
with it, unanswered) and ends the save, letting go of the images' layers it holds
(which an rmi meanwhile cannot free). dockerd waits for such a client for ever.
Progress streams have no such limit: a suspended `docker pull` (Ctrl-Z) must not cancel
its pull, and what waits for it is a few lines a layer (streaming.py).

The head itself must arrive within the header deadline (connections.HEADER_TIMEOUT).
"""

from __future__ import annotations

import asyncio
import functools
import http
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio
import httptools
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from ferryd.daemon.api.peers import PeerCredentialsProtocol
from ferryd.errors import ClientStalledError, PayloadTooLargeError, RequestTimeoutError
from ferryd.untrusted import decimal

if TYPE_CHECKING:
    from uvicorn._types import ASGI3Application

log = structlog.get_logger("ferryd.api")

MAX_HEAD = 64 * 1024  # bytes of request line and headers
MAX_HEADERS = 100  # header fields in a request
MAX_PIPELINED = 16  # requests waiting behind a running one on a connection
DRAIN_LIMIT = 256 * 1024  # bytes of a body read and dropped after its answer
DRAIN_TIMEOUT = 5.0  # seconds the rest of such a body may take
BODY_IDLE_TIMEOUT = 600.0  # seconds without a byte of a body the route waits for
SMALL_BODY_TIMEOUT = 10.0  # seconds a small JSON body (a login) may take in all
MAX_LOGIN_BODY = 64 * 1024  # a login is a few hundred bytes; an identity token a few KB
WRITE_IDLE_TIMEOUT = 600.0  # seconds a streamed answer waits for its client to take more


class _Stop(Exception):
    """Raised in a parser callback to stop the parser where it is (httptools turns it
    into an HttpParserCallbackError out of feed_data)."""


class BoundedRequestProtocol(PeerCredentialsProtocol):
    """uvicorn's HTTP protocol with the limits of the module on what a connection sends."""

    _head_bytes = 0  # bytes of the head being received so far
    _header_count = 0
    _url_parts: list[bytes]
    _url_length = 0
    _in_body = False  # headers complete, message not yet
    _completed = False  # a message completed in the piece being fed
    _body_bytes = 0  # body bytes in the piece being fed
    _framing = 0  # bytes of a body that were no body, since the last piece of body
    _running: RequestResponseCycle | None = None  # the request whose answer is being sent
    _refusal: tuple[int, str] | None = None
    _stopped = False  # the parser is done with this connection
    _draining: asyncio.TimerHandle | None = None  # while an answered body's rest is dropped
    _drained = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._url_parts = []
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_draining()
        # uvicorn tells only the connection's last request that its client is gone: one
        # answering ahead of requests pipelined behind it would write on to no one (a
        # save, its whole archive), never see the disconnect, and, once aborted by
        # `patient_send`, be logged as an application that left its answer unfinished.
        running = self._running
        if running is not None and not running.response_complete:
            running.disconnected = True
            running.message_event.set()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    # What arrives: fed to the parser in pieces no bigger than what is still allowed.

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        self._unset_keepalive_if_required()
        try:
            self._feed(memoryview(data))
        except httptools.HttpParserUpgrade:
            # No protocol is switched to: the request is answered as a plain one, and
            # what followed its head in this read is dropped, as uvicorn drops it.
            pass
        except httptools.HttpParserError as exc:
            if self._refusal is not None:
                self._refuse(*self._refusal)
            else:
                reason = "" if isinstance(exc, httptools.HttpParserCallbackError) else f": {exc}"
                self._refuse(400, f"invalid HTTP request{reason}")

    def _feed(self, view: memoryview) -> None:
        while view and not self._stopped:
            in_head = not self._in_body
            size = MAX_HEAD - self._head_bytes if in_head else MAX_HEAD
            piece, view = view[:size], view[size:]
            self._completed = False
            self._body_bytes = 0
            self.parser.feed_data(piece)
            if self._draining is not None:
                self._drained += len(piece)
                if self._completed:
                    self._stop_draining()  # it ended in time: the connection goes on
                elif self._drained > DRAIN_LIMIT:
                    self._close_drained()
                    return
            if self._completed or (in_head and self._in_body):
                continue  # the head or the message ended in the piece: counted anew
            if in_head:
                self._head_bytes += len(piece)
                if self._head_bytes >= MAX_HEAD:  # not ended within MAX_HEAD bytes: longer
                    self._refuse(*self._head_too_large())
                    return
            elif self._body_bytes:
                self._framing = 0
            else:
                self._framing += len(piece)
                if self._framing > MAX_HEAD:
                    self._refuse(
                        431, f"the request body's chunk framing or trailer is over {MAX_HEAD} bytes"
                    )
                    return

    def _head_too_large(self) -> tuple[int, str]:
        if self._url_length * 2 > self._head_bytes:
            return 414, f"the request's URL is too long: with its headers, over {MAX_HEAD} bytes"
        return 431, f"the request's headers are too large: over {MAX_HEAD} bytes"

    # The parser's callbacks.

    def on_message_begin(self) -> None:
        self._header_count = 0
        self._url_parts = []
        self._url_length = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        # Kept in parts: uvicorn's `self.url += url` copied the whole URL at each read.
        self._url_parts.append(url)
        self._url_length += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_body:
            return  # a trailer field: read for no one
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            self._stop(431, f"the request has more than {MAX_HEADERS} headers")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        busy = self.cycle is not None and not self.cycle.response_complete
        if busy and len(self.pipeline) >= MAX_PIPELINED:
            self._stop(503, f"more than {MAX_PIPELINED} requests wait on the connection")
        self.url = b"".join(self._url_parts)
        self._url_parts = []
        super().on_headers_complete()
        self._in_body = True
        # For `patient_send`: a streamed answer whose client stalls ends its connection.
        self.scope["state"][_ABORT] = functools.partial(self._abort, self.cycle)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._head_bytes = 0
        self._framing = 0
        self._completed = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # The answered request's body is still arriving (no queued request is the
        # parser's: this answer's request is): take the rest for a while, then close.
        unread = self._in_body and not self.pipeline
        super().on_response_complete()
        if unread and not self.transport.is_closing() and self._draining is None:
            self._drained = 0
            self._draining = self.loop.call_later(DRAIN_TIMEOUT, self._close_drained)

    # Refusing.

    def _stop(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        raise _Stop

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with `message` and close; when answers are still due on the
        connection, those go first and then it closes, unanswered further."""
        self._stopped = True
        peer = self._peer
        log.warning(
            "api.request_refused",
            status=status,
            reason=message,
            uid=peer.uid if peer else None,
            gid=peer.gid if peer else None,
            pid=peer.pid if peer else None,
        )
        if self.transport.is_closing():
            return
        if self._in_body:
            # Its body cannot be read to its end: the route reading it sees the client gone.
            self.transport.close()
            return
        due = self.pipeline[0][0] if self.pipeline else self.cycle
        if due is not None and not due.response_complete:
            due.keep_alive = False
            self.flow.pause_reading()
            return
        body = json.dumps({"message": message}, separators=(",", ":")).encode()
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode()]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def _abort(self, cycle: RequestResponseCycle) -> None:
        """End the connection at once, `cycle`'s answer unfinished (`patient_send`)."""
        # Gone as of now for the answer's task, which may end before the loss is told.
        cycle.disconnected = True
        self.transport.abort()

    def _close_drained(self) -> None:
        self._stop_draining()
        self._stopped = True
        if not self.transport.is_closing():
            self.transport.close()

    def _stop_draining(self) -> None:
        if self._draining is not None:
            self._draining.cancel()
            self._draining = None


_ABORT = "ferryd.abort_connection"


def patient_send(send: Send, scope: Scope) -> Send:
    """`send` for an answer that streams: a message the client has not taken within
    WRITE_IDLE_TIMEOUT seconds aborts the connection (a close would wait for the client
    to read what is buffered) and raises ClientStalledError."""

    async def limited(message: Message) -> None:
        timeout = WRITE_IDLE_TIMEOUT
        with anyio.move_on_after(timeout):
            await send(message)
            return
        abort = scope.get("state", {}).get(_ABORT)
        if abort is not None:
            abort()
        raise ClientStalledError(f"the client took nothing of the answer for {timeout:g} seconds")

    return limited


class IdleLimitedBody:
    """ASGI wrapper of a route that reads its request's body while its answer streams
    (`POST /images/load`): the route's waits for more of the body are limited as
    `idle_limited` says."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, idle_limited(receive), send)


def idle_limited(receive: Receive) -> Receive:
    """`receive`, where a wait for more of the body ends in RequestTimeoutError (408)
    when no byte came for BODY_IDLE_TIMEOUT seconds. Only for a route's body reader:
    waiting once the body is whole (for the client to go) has no limit, but other
    waits (Starlette's for a disconnect, beside a streamed answer) must not get it."""
    whole = False

    async def limited() -> Message:
        nonlocal whole
        if whole:
            return await receive()
        timeout = BODY_IDLE_TIMEOUT
        with anyio.move_on_after(timeout):
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                whole = True
            return message
        raise RequestTimeoutError(f"no byte of the request body for {timeout:g} seconds")

    return limited


async def body_chunks(request: Request) -> AsyncIterator[bytes]:
    """`request.stream()`, with the waits for more of it limited as `idle_limited`
    says (ClientDisconnect when the client goes, as there)."""
    receive = idle_limited(request.receive)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        body: bytes = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return


async def read_small_body(request: Request, limit: int, what: str) -> bytes:
    """The whole body of a small request (`what`: "the login"), refused past `limit`
    bytes (413: by its Content-Length at once, else as it arrives) or when it has not
    arrived within SMALL_BODY_TIMEOUT seconds (408)."""
    declared = decimal(request.headers.get("content-length", ""))
    if declared is not None and declared > limit:
        raise PayloadTooLargeError(f"{what} is over {limit} bytes")
    timeout = SMALL_BODY_TIMEOUT
    body = bytearray()
    with anyio.move_on_after(timeout):
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLargeError(f"{what} is over {limit} bytes")
        return bytes(body)
    raise RequestTimeoutError(f"{what} did not arrive within {timeout:g} seconds")
