"""Small blobs read whole in a worker thread, over blocking connections to one endpoint.

A blob GET through the async client costs the event loop ~1.7 ms of CPU (httpx,
httpcore, h11 and anyio's streams); through urllib3's blocking pool it costs ~0.85 ms,
in a worker thread. For a layer of a few hundred KB the GET is most of what its transfer
costs, so a small blob asked for from its first byte is read here
(`RegistryClient.open_blob(whole=…)`) and, when the whole of it came, written, hashed
and inflated by the transfer's `then` in the same worker call (else in the transfer's
next one). A big blob wanted from its first byte is read here too, a MiB at a time, each
handed to the transfer's `into` in the worker thread that read it: through the async
client every MiB crossed the event loop (httpcore, anyio's stream, a worker call to hand
it on), which cost more CPU than receiving it.

This only fetches: the client sends the login it holds and decides what an answer that
is not the blob (a redirect, a 401, an error) means.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util import parse_url

from ferryd.registry.bodies import MAX_ERROR_BODY
from ferryd.registry.heads import (
    HeadCrowded,
    HeadHuge,
    HeadLate,
    HeadTooLarge,
    HeadTooManyFields,
    HeadTooSlow,
    TimedResponse,
)

if TYPE_CHECKING:
    from urllib3._base_connection import BaseHTTPConnection

# A kept connection the registry closed just as the GET went out gets no answer at all;
# the GET then goes once more, on a new connection, as in the async client (`client._send`).
_SENDS = 2
# One read takes what the socket has, up to this: what came before a cut is kept for the
# next attempt to resume after (a read of the whole body would lose it).
_PIECE = 1 << 20
# Connections kept idle per endpoint, and reads at once: more transfers than this wait
# for a thread (a read waiting on the network holds one).
_KEPT = 16
REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))


@dataclass(frozen=True, slots=True)
class Answer:
    """A registry's answer, read: its body up to the limit, and what cut the body short."""

    status: int
    headers: Mapping[str, str]  # urllib3's HTTPHeaderDict: case-insensitive
    body: bytes
    cut: httpx.TransportError | None
    seconds: float  # from the request to the answer's headers
    kept: Kept | None = None  # what `then` made of a whole body, in the same worker call
    streamed: bool = False  # the body went to `into` as it came, and is not here


@dataclass(frozen=True, slots=True)
class Kept:
    """What a caller's `then` returned for a body read whole, or the error it raised."""

    value: object
    error: Exception | None = None

    def result(self) -> object:
        if self.error is not None:
            raise self.error
        return self.value


class BlockingConnections:
    """urllib3's thread-safe pool of connections to one endpoint (`base_url`), and what
    the endpoint taught it."""

    def __init__(
        self,
        base_url: str,
        context: ssl.SSLContext,
        timeout: httpx.Timeout,
        headers: Mapping[str, str],
        keep_idle: float,
    ) -> None:
        self._headers = {"Accept": "*/*", **headers}
        self._timeouts = timeout.as_dict()
        self._keep_idle = keep_idle  # seconds a connection may wait idle and be used again
        self._reads = anyio.CapacityLimiter(_KEPT)
        https = base_url.startswith("https:")
        tls = {"ssl_context": context} if https else {}
        self._pool = urllib3.connection_from_url(
            base_url,
            maxsize=_KEPT,
            block=False,
            timeout=urllib3.Timeout(connect=timeout.connect, read=timeout.read),
            retries=False,
            **tls,
        )
        self._pool.ConnectionCls = _ReachableHTTPS if https else _Reachable
        # The endpoint answered a blob GET with a redirect (Docker Hub sends each to a
        # storage service): its blobs go through the async client, which follows them.
        self.redirects = False

    async def get(
        self,
        url: str,
        headers: Mapping[str, str],
        limit: int,
        then: Callable[[bytes], object] | None = None,
        into: Callable[[bytes], None] | None = None,
    ) -> Answer:
        """GET `url` in a worker thread; a successful answer's body is read up to one
        byte past `limit` (so that a longer one shows), another's up to MAX_ERROR_BODY.
        No answer at all raises the error httpx would have (`client.transport_error`
        names them).

        `then`: called in the same worker call with a 200's body of exactly `limit`
        bytes (`Answer.kept`): a small blob is written and verified without a thread
        hop of its own. `into`: takes a 200's body instead, as it is read, a MiB at a
        time (the last piece shorter), up to one byte past `limit`; what it raises
        ends the read and is raised here (`Answer.streamed`; another 2xx or a 3xx that
        is not a redirect is not read: the async client asks again). Cancelled while
        either runs, this waits for it to end: it writes the caller's files."""
        call = _Call(self._keep_idle)
        try:
            return await anyio.to_thread.run_sync(
                self._get,
                url,
                {**self._headers, **headers},
                limit,
                call,
                then,
                into,
                abandon_on_cancel=True,
                limiter=self._reads,
            )
        except anyio.get_cancelled_exc_class():
            # A stalled registry must not keep the thread to the read timeout.
            if call.abandon():
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(call.kept.wait)
            raise
        except HTTPError as exc:
            raise self._as_httpx(exc, url) from exc

    async def open(self, count: int) -> None:
        """Have `count` connections open for the reads to come (the transfers a pull
        runs at once): behind latency each new one costs a handshake's round trip, which
        then overlaps what the pull waits for meanwhile (its image config). A failure
        is left for the reads, which say what it is."""
        taken = [self._pool._get_conn() for _ in range(min(count, _KEPT))]  # idle first
        for connection in taken:
            if isinstance(connection, _Reachable) and connection.stale(self._keep_idle):
                connection.close()
        opening = [connection for connection in taken if connection.is_closed]
        try:
            async with anyio.create_task_group() as group:
                for connection in opening:
                    group.start_soon(_connect, connection, self._reads)
        finally:
            for connection in opening:
                if isinstance(connection, _Reachable):
                    connection.idle_since = time.monotonic()
            for connection in taken:
                self._pool._put_conn(connection)

    def close(self) -> None:
        self._pool.close()

    def _get(
        self,
        url: str,
        headers: dict[str, str],
        limit: int,
        call: _Call,
        then: Callable[[bytes], object] | None = None,
        into: Callable[[bytes], None] | None = None,
    ) -> Answer:
        target = parse_url(url).request_uri  # the request line's origin form, not the URL
        started = time.monotonic()
        _current.call = call  # for the connection the request goes out on to say which
        try:
            for send in range(_SENDS):
                try:
                    response = self._pool.urlopen(
                        "GET",
                        target,
                        headers=headers,
                        redirect=False,
                        retries=False,
                        preload_content=False,
                        decode_content=False,  # a digest covers the bytes as sent
                        release_conn=False,
                    )
                    break
                except ProtocolError as exc:
                    if send == _SENDS - 1 or call.abandoned or not _unanswered(exc):
                        raise
        finally:
            _current.call = None
        seconds = time.monotonic() - started
        status, location = response.status, response.headers.get("location")
        if status < 200:
            # An informational answer (103 Early Hints) before the real one: http.client
            # takes it for the answer (h11, under the async client, skips it).
            call.let_go(response, keep=False)
            return Answer(status, response.headers, b"", None, seconds)
        redirect = status in REDIRECT_STATUSES and bool(location)
        if into is not None and status == 200:
            return self._stream(response, url, limit, call, into, seconds)
        if into is not None and status < 400 and not redirect:
            # Another success, or a 3xx that is not a redirect: not read (its body could
            # be a blob's size), the async client asks again.
            call.let_go(response, keep=False)
            return Answer(status, response.headers, b"", None, seconds)
        pieces: list[bytes] = []
        taken, most = 0, limit + 1
        if status >= 400 or redirect:
            most = MAX_ERROR_BODY  # read for what it says, not kept
        cut: httpx.TransportError | None = None
        try:
            while taken < most:
                piece = response.read1(min(_PIECE, most - taken))
                if not piece:
                    break
                pieces.append(piece)
                taken += len(piece)
        except HTTPError as exc:
            cut = self._as_httpx(exc, url)
        # A connection with the body's end unread, or broken, is not used again.
        call.let_go(response, keep=cut is None and taken < most)
        body = b"".join(pieces)
        kept = None
        if then is not None and status == 200 and cut is None and taken == limit:
            kept = call.keep(then, body)
        return Answer(status, response.headers, body, cut, seconds, kept)

    def _stream(
        self,
        response: urllib3.BaseHTTPResponse,
        url: str,
        limit: int,
        call: _Call,
        into: Callable[[bytes], None],
        seconds: float,
    ) -> Answer:
        """A 200's body handed to `into` as it is read (`get`), a MiB at a time: one call
        fills a MiB, in C (a read of what the socket has would bring one 16 KiB record
        per Python call over TLS), and each stage after pays per piece; a MiB costs a
        few Python calls here, not the trips through the event loop it cost there. A
        cut or stall loses what came of the MiB being filled (pieces of 256 KiB lost
        less, but cost the 5-layer pull 7-10 % more CPU, joined or not: 6 of 6 pairs
        each). Once the call is abandoned nothing more is handed on (the shut socket may
        still give what it had received)."""
        status, headers = response.status, response.headers
        if not call.begin():  # abandoned already
            call.let_go(response, keep=False)
            return Answer(status, headers, b"", None, seconds, streamed=True)
        taken, most = 0, limit + 1
        cut: httpx.TransportError | None = None
        try:
            while taken < most:
                piece = response.read(min(_PIECE, most - taken), decode_content=False)
                if not piece or call.abandoned:
                    break
                taken += len(piece)
                into(piece)
        except HTTPError as exc:
            cut = self._as_httpx(exc, url)
        except BaseException:
            call.let_go(response, keep=False)
            raise
        finally:
            call.kept.set()
        call.let_go(response, keep=cut is None and taken < most and not call.abandoned)
        return Answer(status, headers, b"", cut, seconds, streamed=True)

    def _as_httpx(self, exc: HTTPError, url: str) -> httpx.TransportError:
        """urllib3's failure as httpx's: one mapping (`client.transport_error`) turns them
        into errors a user can act on, with the timeouts that were waited for; a head
        that failed its deadline, size or count of fields (`heads.TimedResponse`) as the
        async client's."""
        request = httpx.Request("GET", url, extensions={"timeout": self._timeouts})
        failed: httpx.TransportError | None = None
        # urllib3 raises its ReadTimeoutError from the one, ProtocolError with the other.
        for cause in (exc.__cause__, *exc.args):
            if isinstance(cause, HeadLate):
                failed = HeadTooSlow(cause.deadline)
            elif isinstance(cause, HeadCrowded):
                failed = HeadTooManyFields()
            elif isinstance(cause, HeadHuge):
                failed = HeadTooLarge()
            if failed is not None:
                failed.request = request
                failed.__cause__ = exc
                return failed
        kind: type[httpx.TransportError]
        if isinstance(exc, NewConnectionError | SSLError):
            kind = httpx.ConnectError
        elif isinstance(exc, ConnectTimeoutError):
            kind = httpx.ConnectTimeout
        elif isinstance(exc, ReadTimeoutError):
            kind = httpx.ReadTimeout
        elif isinstance(exc, ProtocolError):
            kind = httpx.RemoteProtocolError
        else:
            kind = httpx.ReadError
        error = kind(_reason(exc), request=request)
        error.__cause__ = exc
        return error


class _Call:
    """One GET in a worker thread, as far as the event loop may reach into it: an
    abandoned call's connection is shut, which wakes the read that waits on it."""

    def __init__(self, keep_idle: float) -> None:
        self.keep_idle = keep_idle
        self.abandoned = False
        self._connection: _Reachable | None = None
        # The socket the request went out on: http.client lets go of it (the
        # connection's `sock` is None) when the answer will close the connection.
        self._socket: socket.socket | None = None
        self._keeping = False
        self.kept = threading.Event()  # set once a `keep` that began has ended

    def keep(self, then: Callable[[bytes], object], body: bytes) -> Kept | None:
        """`then(body)`, unless the call was abandoned first (None): once begun, an
        abandoning caller waits for it (`abandon`)."""
        if not self.begin():
            return None
        try:
            return Kept(then(body))
        except Exception as exc:  # the caller's to raise, on the loop
            return Kept(None, exc)
        finally:
            self.kept.set()

    def begin(self) -> bool:
        """Whether the caller's work on the body may begin (not abandoned): once it has,
        an abandoning caller waits for `kept`, which the worker sets when it ends."""
        with _owners:
            if self.abandoned:
                return False
            self._keeping = True
            return True

    def reach(self, connection: _Reachable) -> None:
        """The request goes out on `connection` (in the worker thread)."""
        with _owners:
            connection.owner = self
            self._connection = connection
            if self.abandoned:
                _shut(connection.sock)

    def sent(self, connection: _Reachable) -> None:
        """The request went out on `connection` (in the worker thread): its socket is
        the one the answer comes on."""
        with _owners:
            if connection.owner is self:
                self._socket = connection.sock
                if self.abandoned:
                    _shut(self._socket)

    def let_go(self, response: urllib3.BaseHTTPResponse, *, keep: bool) -> None:
        """Back to the pool (urllib3 puts it back itself once the body has ended), or
        closed."""
        with _owners:
            self._socket = None  # another call may send on it from now on
            connection, self._connection = self._connection, None
            if keep and connection is not None and connection.owner is self:
                connection.idle_since = time.monotonic()
        if not keep:
            response.close()
        response.release_conn()

    def abandon(self) -> bool:
        """Shut the call's connection; whether a `keep` has begun (wait for `kept`)."""
        with _owners:
            self.abandoned = True
            connection = self._connection
            # Not one put back in the pool and taken by another call meanwhile.
            if connection is not None and connection.owner is self:
                _shut(self._socket or connection.sock)
            return self._keeping


# Which call sends on which connection, changed and read under this lock only.
_owners = threading.Lock()
_current = threading.local()  # the `_Call` a worker thread makes


class _Reachable(HTTPConnection):
    """A connection that says which call sends on it (`_Call.reach`), and is not used
    again after the call's `keep_idle` seconds idle, as the async client's are not: a
    firewall or NAT may have forgotten it, and a request on it would wait for the read
    timeout."""

    idle_since: float | None = None
    owner: _Call | None = None
    # Its answer's head held to a deadline and a size (`heads`).
    response_class = TimedResponse

    def stale(self, keep_idle: float) -> bool:
        """Whether it has waited idle longer than `keep_idle` seconds."""
        return self.idle_since is not None and time.monotonic() - self.idle_since > keep_idle

    def request(self, *args: Any, **kwargs: Any) -> None:
        call: _Call | None = getattr(_current, "call", None)
        if call is not None:
            if self.stale(call.keep_idle):
                self.close()  # http.client connects anew as the request goes out
            call.reach(self)
        self.idle_since = None
        super().request(*args, **kwargs)
        if call is not None:
            call.sent(self)


class _ReachableHTTPS(_Reachable, HTTPSConnection):
    pass


def _shut(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):  # closed already: nothing waits on it
            sock.shutdown(socket.SHUT_RDWR)


def _unanswered(exc: ProtocolError) -> bool:
    """Whether the connection closed before any answer came (a kept one the registry had
    closed): not a malformed answer, which the same request would get again."""
    return any(isinstance(arg, ConnectionError) for arg in exc.args)


async def _connect(connection: BaseHTTPConnection, limiter: anyio.CapacityLimiter) -> None:
    # Not abandoned when cancelled: the connection goes back to the pool once this ends
    # (the connect timeout bounds it).
    with contextlib.suppress(OSError, HTTPError):
        await anyio.to_thread.run_sync(connection.connect, limiter=limiter)


def _reason(exc: HTTPError) -> str:
    """What failed, once: urllib3 gives the cause again after its own words."""
    said, *causes = [str(arg).strip() for arg in exc.args] or [type(exc).__name__]
    for cause in causes:
        if cause and cause not in said:
            said = f"{said.rstrip('.')}: {cause}"
    return said
