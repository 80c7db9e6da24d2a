"""Opens a RegistryClient for a repository: endpoint choice, auth, connection reuse."""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, cast

import anyio
import httpcore
import httpx
import structlog
from anyio._backends import _asyncio as _anyio_asyncio
from httpcore._backends import anyio as httpcore_anyio

from ferryd import __version__
from ferryd.errors import RegistryUnreachableError
from ferryd.registry.auth import ANONYMOUS, Authenticator, Credentials, host_of
from ferryd.registry.client import Attempt, RegistryClient, Route
from ferryd.registry.endpoints import Endpoint, RegistryService

USER_AGENT = f"ferryd/{__version__}"

# httpcore reads a response 64 KiB per receive; a blob body then costs the event loop
# ~16 trips through httpx, anyio and h11 per MiB, which starves the worker threads of
# the GIL. Reading up to 1 MiB at once (what is in the socket buffer, no more) took a
# 1 GiB gzip layer from 117 to ~155 MB/s on two cores. A class attribute, so it is
# set once for every connection this process makes.
_READ_SIZE = 1 << 20
if hasattr(httpcore.AsyncHTTP11Connection, "READ_NUM_BYTES"):
    httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = _READ_SIZE


class _BoundedStreamProtocol(_anyio_asyncio.StreamProtocol):
    """anyio's protocol for a TCP connection, but one that stops reading the socket
    once `_READ_SIZE` bytes wait to be received.

    anyio lets the transport read only while a receive waits, but under uvloop one
    wakeup reads the socket until it is empty (libuv: up to 32 reads of 250 kB) before
    the receiver can pause it: a blob answer queued up to 8 MB per connection in front
    of a busy pipeline, 3 layers at once. Pausing here leaves the rest in the socket,
    where TCP holds it back: the 5-layer pull's peak RSS 116 -> 103 MiB.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._reading = cast(asyncio.ReadTransport, transport)

    over_tls = False

    def eof_received(self) -> bool | None:
        # Over TLS the loop's transport closes itself at the peer's close_notify whatever
        # this returns, and logs a warning for True ("has no effect when using ssl").
        keep_open = super().eof_received()
        return None if self.over_tls else keep_open

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A few chunks at most: the sum is cheap. receive() resumes reading once the
        # queue is empty, as it does after its own pause.
        if sum(map(len, self.read_queue)) >= _READ_SIZE:
            self._reading.pause_reading()


# A module attribute anyio looks up for every connection it opens.
_anyio_asyncio.StreamProtocol = _BoundedStreamProtocol  # type: ignore[misc]


_anyio_start_tls = httpcore_anyio.AnyIOStream.start_tls


async def _start_tls_on_loop(
    self: httpcore_anyio.AnyIOStream,
    ssl_context: ssl.SSLContext,
    server_hostname: str | None = None,
    timeout: float | None = None,
) -> httpcore.AsyncNetworkStream:
    """TLS by the event loop's own transport (uvloop's, in C), not anyio's TLSStream.

    TLSStream decrypts one TLS record (16 KiB) per receive, and each goes through anyio,
    httpcore, h11 and httpx on the event loop: a 173 MB blob over TLS took 0.47-0.53 s
    of CPU, against 0.08 s over plain HTTP. The loop's transport decrypts what the
    socket holds at once and hands it over whole: 0.18-0.20 s (AES-GCM itself is
    ~0.05 s of it). Everything else stays as anyio made it: the same stream, protocol
    and flow control, over the TLS transport.
    """
    stream = self._stream
    if not isinstance(stream, _anyio_asyncio.SocketStream):  # not anyio's asyncio backend
        return await _anyio_start_tls(self, ssl_context, server_hostname, timeout)
    raw, protocol = stream._transport, stream._protocol
    # TLS inside TLS (an HTTPS proxy): the inner layer starts on the outer TLS transport,
    # and reading is still paused on the TCP connection under both.
    below, tcp = (raw._tls, raw._tcp) if isinstance(raw, _ReadingBelowTLS) else (raw, raw)
    try:
        with anyio.fail_after(timeout):
            transport = await asyncio.get_running_loop().start_tls(
                below, protocol, ssl_context, server_hostname=server_hostname
            )
    except OSError as exc:  # ssl.SSLError and TimeoutError among them
        await self.aclose()
        failed = httpcore.ConnectTimeout if isinstance(exc, TimeoutError) else httpcore.ConnectError
        raise failed(str(exc) or type(exc).__name__) from exc
    except BaseException:
        await self.aclose()
        raise
    if transport is None:  # the connection closed during the handshake
        await self.aclose()
        raise httpcore.ConnectError("the connection closed during the TLS handshake")
    if isinstance(protocol, _BoundedStreamProtocol):
        protocol.over_tls = True
    reading_below = cast(asyncio.Transport, _ReadingBelowTLS(transport, tcp))
    return _TLSOnLoop(_anyio_asyncio.SocketStream(reading_below, protocol))


class _ReadingBelowTLS:
    """The loop's TLS transport, but reading pauses and resumes on the TCP transport.

    The TLS transport must never be paused itself: while it is, the TLS layer still reads
    the socket into its own buffer (up to 256 KiB), and when the FIN comes with them
    (a `Connection: close` answer) it drops that buffer undelivered and closes (uvloop's
    and CPython's sslproto: "a low-level EOF ... just close"): the end of the body is
    lost. Paused below, the bytes stay in the socket and the FIN behind them.
    """

    def __init__(self, tls: asyncio.Transport, tcp: asyncio.Transport) -> None:
        self._tls = tls
        self._tcp = tcp

    def pause_reading(self) -> None:
        self._tcp.pause_reading()

    def resume_reading(self) -> None:
        self._tcp.resume_reading()

    def is_reading(self) -> bool:
        return self._tcp.is_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tls, name)


class _TLSOnLoop(httpcore_anyio.AnyIOStream):
    """A stream over the loop's TLS transport: its SSL object is the transport's."""

    def get_extra_info(self, info: str) -> Any:
        transport = self._stream._transport  # type: ignore[attr-defined]
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if transport.get_extra_info("socket") is None:
            # The TLS transport closed and let go of its socket: anyio's attributes
            # would raise AttributeError (getpeername of None), not a transport error.
            return True if info == "is_readable" else None
        return super().get_extra_info(info)


# httpcore opens every connection through this class: TLS starts here for all of them.
httpcore_anyio.AnyIOStream.start_tls = _start_tls_on_loop  # type: ignore[method-assign]


log = structlog.get_logger("ferryd.registry")


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


_NO_COOKIES = _NoCookies()


class _RegistryHTTP(httpx.AsyncClient):
    """An httpx client that keeps no cookies, as dockerd's registry client (Go's
    http.Client without a jar) keeps none: httpx would parse every answer's headers
    for them, ~50 us of the event loop per request (a small blob's GET is ~600 us)."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        pass  # nothing is kept


# How long a connection to a registry may wait idle for the next request. httpx keeps
# one 5 s; Go's HTTP transport, which dockerd, containerd and skopeo use, 90 s. With 5 s,
# pulls a few seconds apart open new connections (on a real registry each is a TLS
# handshake, two or three round trips): a 24-layer pull 11.5 s after the last one took
# 11 % longer than one 1 s after it; with 90 s, as long (10 pairs each, loopback). A
# connection the registry closed sooner is seen closed before it is reused, and a GET
# that meets one closing anyway is sent again (client.py).
KEEP_IDLE_SECONDS = 90.0

# Below this share of its limit left, a registry's rate limit is worth a warning.
_RATE_LIMIT_LOW = 0.1
_RATE_LIMIT = re.compile(r"\s*(\d+)(?:\s*;\s*w=(\d+))?")


async def _started(request: httpx.Request) -> None:
    request.extensions["ferryd_started"] = time.monotonic()


async def _answered(response: httpx.Response) -> None:
    """One debug line per registry request (never a header: they carry secrets), and a
    warning when the registry says its rate limit is nearly spent."""
    request = response.request
    started = request.extensions.get("ferryd_started", time.monotonic())
    log.debug(
        "registry.request",
        method=request.method,
        host=request.url.netloc.decode(),
        path=request.url.path,
        status=response.status_code,
        seconds=round(time.monotonic() - started, 3),
        bytes=int(length)
        if (length := response.headers.get("content-length", "")).isdigit()
        else None,
    )
    _check_rate_limit(response)


def _check_rate_limit(response: httpx.Response) -> None:
    """Docker Hub's `ratelimit-remaining: 12;w=21600` against `ratelimit-limit`."""
    remaining = _RATE_LIMIT.match(response.headers.get("ratelimit-remaining", ""))
    limit = _RATE_LIMIT.match(response.headers.get("ratelimit-limit", ""))
    if remaining is None or limit is None or int(limit[1]) == 0:
        return
    left, of = int(remaining[1]), int(limit[1])
    if left <= of * _RATE_LIMIT_LOW:
        log.warning(
            "registry.rate_limit_low",
            host=response.request.url.netloc.decode(),
            remaining=left,
            limit=of,
            window_seconds=int(limit[2]) if limit[2] else None,
        )


class Connector:
    """Keeps one HTTP connection pool per endpoint and one authenticator per login.

    Reusing them is what lets concurrent pulls share connections and bearer tokens.
    """

    def __init__(
        self,
        service: RegistryService,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        proxy: str | None = None,
    ) -> None:
        self.service = service
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._proxy = proxy
        self._clients: dict[str, httpx.AsyncClient] = {}
        # Clients from before a reload: running transfers still use them.
        self._retired: list[httpx.AsyncClient] = []
        self._generation = 0  # counts reloads
        self._authenticators: dict[tuple[str, Credentials], Authenticator] = {}
        self._working: dict[str, Endpoint] = {}
        # First requests to one registry at once make one endpoint choice and one login.
        self._login_locks: dict[str, anyio.Lock] = {}

    async def open(
        self,
        domain: str,
        repository: str,
        credentials: Credentials,
        *,
        actions: str = "pull",
        meta_headers: Mapping[str, str] | None = None,
    ) -> RegistryClient:
        """A client for `domain/repository`. No request is made here: the first one to a
        registry this connector has not logged in to chooses its endpoint and learns its
        challenge (see `_choose`), as containerd does, instead of a `GET /v2/` first."""
        known = self._working.get(domain)
        endpoints = [known] if known is not None else await self.service.endpoints(domain)
        return self._open(
            domain, endpoints, credentials, repository, actions=actions, meta_headers=meta_headers
        )

    async def open_mirror(
        self,
        mirror: Endpoint,
        repository: str,
        *,
        meta_headers: Mapping[str, str] | None = None,
    ) -> RegistryClient:
        """A pull client on one mirror. The client's registry login is not sent to a
        mirror (another host); mirrors are used anonymously.

        Nothing here touches the registry's own endpoint (`open` and pushes never see a
        mirror); the mirror's challenge and tokens are kept per base URL until
        `reconfigure`.
        """
        return self._open(
            mirror.base_url, [mirror], ANONYMOUS, repository, meta_headers=meta_headers
        )

    def _open(
        self,
        key: str,
        endpoints: list[Endpoint],
        credentials: Credentials,
        repository: str,
        *,
        actions: str = "pull",
        meta_headers: Mapping[str, str] | None = None,
    ) -> RegistryClient:
        """A client on the endpoint known for `key` (a registry's domain, a mirror's
        base URL), else one whose first request tries `endpoints`."""
        route = self._known(key, credentials)
        choose = None
        if route is None:
            route = self._route(endpoints[0], credentials)
            choose = partial(self._choose, key, endpoints, credentials, self._generation)
        return RegistryClient(
            route, repository, actions=actions, meta_headers=meta_headers, choose=choose
        )

    async def _choose(
        self,
        key: str,
        endpoints: list[Endpoint],
        credentials: Credentials,
        generation: int,
        attempt: Callable[[Route], Awaitable[Attempt]],
    ) -> tuple[Route, Attempt | None]:
        """Make a client's first request on each endpoint in turn, until one answers.

        Any HTTP answer shows the endpoint works; only a failure to reach it (refused,
        a TLS handshake that fails) moves on. The endpoint, and the authenticator with
        the challenge a 401 taught it, serve every later client. First requests to one
        registry wait for each other, so that they share one choice and one login.
        """
        async with self._login_locks.setdefault(key, anyio.Lock()):
            known = self._known(key, credentials)
            if known is None:
                failures: list[str] = []
                for endpoint in endpoints:
                    route = self._route(endpoint, credentials)
                    try:
                        answer = await attempt(route)
                    except RegistryUnreachableError as exc:
                        failures.append(str(exc))
                        continue
                    challenge = route.auth.challenge
                    log.debug(
                        "registry.login",
                        registry=endpoint.domain,
                        endpoint=endpoint.base_url,
                        scheme=challenge.scheme if challenge else None,
                        realm=host_of(challenge.params.get("realm", "")) if challenge else None,
                    )
                    # A reload since the client was opened makes what it found stale:
                    # use it for this request, but do not remember it.
                    if generation == self._generation:
                        self._working[key] = endpoint
                        self._authenticators[(endpoint.base_url, credentials)] = route.auth
                    return route, answer
                if generation == self._generation and self._working.get(key) in endpoints:
                    # The endpoint that worked before is gone: try them all again next time.
                    del self._working[key]
                raise RegistryUnreachableError("; ".join(failures) or f"no endpoint for {key}")
        return known, None  # another first request chose while this one waited

    def _known(self, key: str, credentials: Credentials) -> Route | None:
        endpoint = self._working.get(key)
        if endpoint is None:
            return None
        auth = self._authenticators.get((endpoint.base_url, credentials))
        return Route(endpoint, self.http_client(endpoint), auth) if auth is not None else None

    def _route(self, endpoint: Endpoint, credentials: Credentials) -> Route:
        http = self.http_client(endpoint)
        # A mirror is named by its URL: its refusals are the mirror's, not the registry's.
        name = f"mirror {endpoint.base_url}" if endpoint.mirror else endpoint.domain
        auth = Authenticator(
            http, name, credentials, host=endpoint.host, insecure=self.service.is_insecure
        )
        return Route(endpoint, http, auth)

    def http_client(self, endpoint: Endpoint) -> httpx.AsyncClient:
        """The pooled HTTP client for `endpoint` (a login check talks through it too)."""
        client = self._clients.get(endpoint.base_url)
        if client is None:
            client = _RegistryHTTP(
                event_hooks={"request": [_started], "response": [_answered]},
                verify=endpoint.verify,
                timeout=self._timeout,
                follow_redirects=False,
                headers={"User-Agent": USER_AGENT},
                proxy=self._proxy,
                trust_env=False,
                limits=httpx.Limits(
                    max_connections=32,
                    max_keepalive_connections=16,
                    keepalive_expiry=KEEP_IDLE_SECONDS,
                ),
            )
            self._clients[endpoint.base_url] = client
        return client

    def reconfigure(self, service: RegistryService) -> None:
        """Use new registry settings (a reload): new requests get new endpoints, TLS
        contexts and logins; running transfers keep the clients they have."""
        self.service = service
        self._generation += 1
        self._working.clear()
        self._authenticators.clear()
        self._retired.extend(self._clients.values())
        self._clients = {}

    async def aclose(self) -> None:
        for client in [*self._clients.values(), *self._retired]:
            await client.aclose()
        self._clients.clear()
        self._retired.clear()
