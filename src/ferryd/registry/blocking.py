"""Small blobs read whole in a worker thread, over blocking connections to one endpoint.

A blob GET through the async client costs the event loop ~1.7 ms of CPU (httpx,
httpcore, h11 and anyio's streams); through urllib3's blocking pool it costs ~0.85 ms,
in a worker thread. For a layer of a few hundred KB the GET is most of what its transfer
costs, so a small blob asked for from its first byte is read here
(`RegistryClient.open_blob(whole=…)`) and then written, hashed and inflated in the
transfer's next worker call. A big blob streams through the async client, which hands
each MiB on as it arrives.

This only fetches: the client sends the login it holds and decides what an answer that
is not the blob (a redirect, a 401, an error) means.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import httpx
import urllib3
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

if TYPE_CHECKING:
    from urllib3._base_connection import BaseHTTPConnection

# A kept connection the registry closed just as the GET went out gets no answer at all;
# the GET then goes once more, on a new connection, as in the async client (`client._send`).
_SENDS = 2
# One read takes what the socket has, up to this: what came before a cut is kept for the
# next attempt to resume after (a read of the whole body would lose it).
_PIECE = 1 << 20
# Connections kept idle per endpoint: as many as the transfers that may run at once.
_KEPT = 16


@dataclass(frozen=True, slots=True)
class Answer:
    """A registry's answer, read: its body up to the limit, and what cut the body short."""

    status: int
    headers: Mapping[str, str]  # urllib3's HTTPHeaderDict: case-insensitive
    body: bytes
    cut: httpx.TransportError | None
    seconds: float  # from the request to the answer's headers


class BlockingConnections:
    """urllib3's thread-safe pool of connections to one endpoint (`base_url`), and what
    the endpoint taught it."""

    def __init__(
        self,
        base_url: str,
        context: ssl.SSLContext,
        timeout: httpx.Timeout,
        headers: Mapping[str, str],
    ) -> None:
        self._headers = dict(headers)
        self._timeouts = timeout.as_dict()
        tls = {"ssl_context": context} if base_url.startswith("https:") else {}
        self._pool = urllib3.connection_from_url(
            base_url,
            maxsize=_KEPT,
            block=False,  # more at once than are kept: a connection each, closed after
            timeout=urllib3.Timeout(connect=timeout.connect, read=timeout.read),
            retries=False,
            **tls,
        )
        # The endpoint answered a blob GET with a redirect (Docker Hub sends each to a
        # storage service): its blobs go through the async client, which follows them.
        self.redirects = False

    async def get(self, url: str, headers: Mapping[str, str], limit: int) -> Answer:
        """GET `url` in a worker thread; a successful answer's body is read up to one
        byte past `limit` (so that a longer one shows), another's up to MAX_ERROR_BODY.
        No answer at all raises the error httpx would have (`client.transport_error`
        names them)."""
        call = _Call()
        try:
            return await anyio.to_thread.run_sync(
                self._get, url, {**self._headers, **headers}, limit, call, abandon_on_cancel=True
            )
        except anyio.get_cancelled_exc_class():
            call.abandon()  # a stalled registry must not keep the thread to the read timeout
            raise
        except HTTPError as exc:
            raise self._as_httpx(exc, url) from exc

    async def open(self, count: int) -> None:
        """Have `count` connections open for the reads to come (the transfers a pull
        runs at once): behind latency each new one costs a handshake's round trip, which
        then overlaps what the pull waits for meanwhile (its image config). A failure
        is left for the reads, which say what it is."""
        taken = [self._pool._get_conn() for _ in range(count)]  # idle ones first
        try:
            async with anyio.create_task_group() as group:
                for connection in taken:
                    if connection.is_closed:  # new, or dropped
                        group.start_soon(_connect, connection)
        finally:
            for connection in taken:
                self._pool._put_conn(connection)

    def close(self) -> None:
        self._pool.close()

    def _get(self, url: str, headers: dict[str, str], limit: int, call: _Call) -> Answer:
        target = parse_url(url).request_uri  # the request line's origin form, not the URL
        started = time.monotonic()
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
            except ProtocolError:  # closed before any answer came
                if send == _SENDS - 1:
                    raise
        seconds = time.monotonic() - started
        call.hold(response)
        pieces: list[bytes] = []
        taken, most = 0, limit + 1 if response.status < 300 else MAX_ERROR_BODY
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
        return Answer(response.status, response.headers, b"".join(pieces), cut, seconds)

    def _as_httpx(self, exc: HTTPError, url: str) -> httpx.TransportError:
        """urllib3's failure as httpx's: one mapping (`client.transport_error`) turns them
        into errors a user can act on, with the timeouts that were waited for."""
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
        request = httpx.Request("GET", url, extensions={"timeout": self._timeouts})
        error = kind(_reason(exc), request=request)
        error.__cause__ = exc
        return error


class _Call:
    """One GET in a worker thread, as far as the event loop may reach into it: an
    abandoned call's connection is shut, which wakes a read that waits on it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._response: urllib3.BaseHTTPResponse | None = None
        self._abandoned = False

    def hold(self, response: urllib3.BaseHTTPResponse) -> None:
        with self._lock:
            self._response = response
            if self._abandoned:
                _shut(response)

    def let_go(self, response: urllib3.BaseHTTPResponse, *, keep: bool) -> None:
        """Back to the pool, or closed; under the lock, so that `abandon` never shuts a
        connection another call took from the pool meanwhile."""
        with self._lock:
            self._response = None
            if not keep:
                response.close()
            response.release_conn()

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            if self._response is not None:
                _shut(self._response)


async def _connect(connection: BaseHTTPConnection) -> None:
    # Not abandoned when cancelled: the connection goes back to the pool once this ends
    # (the connect timeout bounds it).
    with contextlib.suppress(OSError, HTTPError):
        await anyio.to_thread.run_sync(connection.connect)


def _reason(exc: HTTPError) -> str:
    """What failed, once: urllib3 gives the cause again after its own words."""
    said, *causes = [str(arg) for arg in exc.args] or [type(exc).__name__]
    for cause in causes:
        if cause and cause not in said:
            said = f"{said.rstrip('.')}: {cause}"
    return said


def _shut(response: urllib3.BaseHTTPResponse) -> None:
    with contextlib.suppress(OSError, RuntimeError, ValueError):  # closed: nothing waits
        response.shutdown()
