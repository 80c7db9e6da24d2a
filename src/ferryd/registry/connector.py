"""Opens a RegistryClient for a repository: endpoint choice, auth, connection reuse."""

from __future__ import annotations

import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

import anyio
import httpx
import structlog

from ferryd import __version__
from ferryd.errors import NoEndpointAnsweredError, RegistryUnreachableError
from ferryd.registry import heads, requestlog, streams
from ferryd.registry.auth import ANONYMOUS, Authenticator, Credentials, host_of
from ferryd.registry.blocking import BlockingConnections
from ferryd.registry.client import Attempt, RegistryClient, Route
from ferryd.registry.endpoints import Endpoint, RegistryService
from ferryd.registry.wire import DEFAULT_READ_TIMEOUT

USER_AGENT = f"ferryd/{__version__}"

# Every registry connection of this process reads through the cheaper streams, and
# receives each answer's head within its deadline and size.
streams.install()
heads.install()

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
# one 5 s; Go's HTTP transport, which dockerd and containerd use, 90 s. With 5 s,
# pulls a few seconds apart open new connections (on a real registry each is a TLS
# handshake, two or three round trips): a 24-layer pull 11.5 s after the last one took
# 11 % longer than one 1 s after it; with 90 s, as long (10 pairs each, loopback). A
# connection the registry closed sooner is seen closed before it is reused, and a GET
# that meets one closing anyway is sent again (client.py).
KEEP_IDLE_SECONDS = 90.0


async def _started(request: httpx.Request) -> None:
    request.extensions["ferryd_started"] = time.monotonic()


async def _answered(response: httpx.Response) -> None:
    request = response.request
    started = request.extensions.get("ferryd_started", time.monotonic())
    requestlog.answered(
        request.method,
        request.url.netloc.decode(),
        request.url.path,
        response.status_code,
        response.headers,
        time.monotonic() - started,
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
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        proxy: str | None = None,
    ) -> None:
        self.service = service
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._proxy = proxy
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._blocking: dict[str, BlockingConnections] = {}
        # Clients from before a reload: running transfers still use them.
        self._retired: list[httpx.AsyncClient] = []
        self._retired_blocking: list[BlockingConnections] = []
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
                raise NoEndpointAnsweredError("; ".join(failures) or f"no endpoint for {key}")
        return known, None  # another first request chose while this one waited

    def _known(self, key: str, credentials: Credentials) -> Route | None:
        endpoint = self._working.get(key)
        if endpoint is None:
            return None
        auth = self._authenticators.get((endpoint.base_url, credentials))
        if auth is None:
            return None
        return Route(endpoint, self.http_client(endpoint), auth, self._blocking_for(endpoint))

    def _route(self, endpoint: Endpoint, credentials: Credentials) -> Route:
        http = self.http_client(endpoint)
        # A mirror is named by its URL: its refusals are the mirror's, not the registry's.
        name = f"mirror {endpoint.base_url}" if endpoint.mirror else endpoint.domain
        auth = Authenticator(
            http, name, credentials, host=endpoint.host, insecure=self.service.is_insecure
        )
        return Route(endpoint, http, auth, self._blocking_for(endpoint))

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

    def _blocking_for(self, endpoint: Endpoint) -> BlockingConnections | None:
        """The blocking connections small blobs are read over (`blocking`); none through
        a proxy, which only the async client is set up for."""
        if self._proxy is not None or not isinstance(endpoint.verify, ssl.SSLContext):
            return None
        connections = self._blocking.get(endpoint.base_url)
        if connections is None:
            connections = BlockingConnections(
                endpoint.base_url,
                endpoint.verify,
                self._timeout,
                {"User-Agent": USER_AGENT},
                KEEP_IDLE_SECONDS,
            )
            self._blocking[endpoint.base_url] = connections
        return connections

    def reconfigure(self, service: RegistryService) -> None:
        """Use new registry settings (a reload): new requests get new endpoints, TLS
        contexts and logins; running transfers keep the clients they have."""
        self.service = service
        self._generation += 1
        self._working.clear()
        self._authenticators.clear()
        self._retired.extend(self._clients.values())
        self._clients = {}
        self._retired_blocking.extend(self._blocking.values())
        self._blocking = {}

    async def aclose(self) -> None:
        for client in [*self._clients.values(), *self._retired]:
            await client.aclose()
        self._clients.clear()
        self._retired.clear()
        for connections in [*self._blocking.values(), *self._retired_blocking]:
            connections.close()
        self._blocking.clear()
        self._retired_blocking.clear()
