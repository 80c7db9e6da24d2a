"""What ferryd takes from uvicorn, httptools and httpcore beyond their public API.

- daemon/api/peers.py subclasses uvicorn's HttpToolsProtocol: it overrides
  `connection_made(transport)` and `on_message_begin()` and writes into
  `self.scope["state"]`.
- daemon/api/connections.py subclasses that protocol again: it overrides
  `on_headers_complete()` and `connection_lost(exc)`, and reads `self.connections` (the
  server's set of live protocols), `self.cycle.response_complete`, `self.transport` and
  `self.loop` to time out idle connections and cap their number.
- daemon/api/serve.py subclasses uvicorn.Server: it overrides `startup(sockets)`, reads
  `started`, replaces `capture_signals`, sets `should_exit`, and passes uvicorn.Config
  the keywords in CONFIG below.
- registry/streams.py raises httpcore.AsyncHTTP11Connection.READ_NUM_BYTES, guarded by
  hasattr: if the attribute went away, the daemon would only get slower, silently.
- registry/streams.py replaces anyio's asyncio StreamProtocol (a module attribute of
  anyio._backends._asyncio) with a subclass that pauses reading once a connection holds
  1 MiB nobody has received; it relies on `read_queue` and on receive() resuming
  reading when that queue is empty.
- registry/streams.py replaces httpcore's AnyIOStream.read with one that takes bytes
  already queued directly: it reads the anyio SocketStream's `_protocol` (its
  `read_queue` and `read_event`) and `_receive_guard._guarded`, and calls
  httpcore's own read otherwise.
- registry/streams.py replaces httpcore's AsyncHTTP11Connection._receive_response_body
  with one that reads a body of known length from `self._network_stream` itself and
  tells h11 what it missed: it reads h11.Connection's `_reader` (a ContentLengthReader
  from h11._readers, whose `_remaining` it lowers), `_receive_buffer` and
  `_receive_buffer_closed`, and calls httpcore's `_receive_event(timeout=)` and
  `READ_NUM_BYTES`.
- registry/streams.py replaces httpcore's AnyIOStream.start_tls (httpcore's asyncio
  streams) with TLS by the event loop's transport (`loop.start_tls`): it reads the
  stream's anyio SocketStream `_transport` and `_protocol`, builds a new SocketStream
  from a transport and a protocol, and returns an AnyIOStream over it.

- registry/blocking.py opens connections ahead in urllib3's pool: it takes them with
  HTTPConnectionPool's `_get_conn()` (an idle one, else a new one not yet connected),
  connects those whose `is_closed` says so, and gives them back with `_put_conn(conn)`.

pyproject.toml holds these libraries to the series tested here and requirements.lock
pins the exact versions. Each failure below names the library and what moved: after
`make lock UPGRADE=1` (or a bound raised in pyproject.toml), fix the code named in the
message, or keep the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import signal
import socket
import tomllib
from collections.abc import Callable, Iterator
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import anyio
import httpcore
import httptools
import httpx
import pytest
import uvicorn
from anyio._backends import _asyncio as anyio_asyncio
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

ROOT = Path(__file__).resolve().parents[1]

# What ferryd patches or reaches into: each has an upper bound in pyproject.toml.
BOUNDED = ("uvicorn", "httptools", "httpcore", "h11", "starlette", "anyio", "urllib3")

# The keywords daemon/api/serve.py gives uvicorn.Config (besides the app).
CONFIG: dict[str, Any] = {
    "loop": "none",
    "http": HttpToolsProtocol,
    "lifespan": "off",
    "log_config": None,
    "access_log": False,
    "server_header": False,
    "date_header": True,
    "timeout_graceful_shutdown": 35,
    "timeout_keep_alive": 5,
}


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _parameters(func: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(func).parameters)


@pytest.fixture(autouse=True)
def _uvicorn_access_logger() -> Iterator[None]:
    """uvicorn.Config(access_log=False) unhooks this logger process-wide: put it back."""
    logger = logging.getLogger("uvicorn.access")
    saved = logger.handlers[:], logger.propagate, logger.level
    yield
    logger.handlers[:], logger.propagate, logger.level = saved


# uvicorn: the HTTP protocol (daemon/api/peers.py)


@pytest.mark.parametrize(
    ("method", "parameters"),
    [
        ("connection_made", ["self", "transport"]),
        ("on_message_begin", ["self"]),
        ("on_headers_complete", ["self"]),
        ("connection_lost", ["self", "exc"]),
    ],
)
def test_http_protocol_has_the_methods_we_override(method: str, parameters: list[str]) -> None:
    found = getattr(HttpToolsProtocol, method, None)
    assert callable(found), (
        f"uvicorn: HttpToolsProtocol.{method} is gone; PeerCredentialsProtocol "
        "(daemon/api/peers.py) overrides it to put the peer's credentials in scope['state']"
    )
    assert _parameters(found) == parameters, (
        f"uvicorn: HttpToolsProtocol.{method}{inspect.signature(found)} changed shape "
        f"(was {method}({', '.join(parameters)})); PeerCredentialsProtocol overrides it"
    )
    assert not inspect.iscoroutinefunction(found), (
        f"uvicorn: HttpToolsProtocol.{method} is now a coroutine; PeerCredentialsProtocol "
        "calls it as a plain method"
    )


@pytest.mark.parametrize(
    ("owner", "attribute"),
    [
        (HttpToolsProtocol, "self.connections = server_state.connections"),
        (HttpToolsProtocol, "self.cycle"),
        (HttpToolsProtocol, "self.transport"),
        (HttpToolsProtocol, "self.loop"),
        (RequestResponseCycle, "self.response_complete"),
    ],
)
def test_http_protocol_keeps_what_the_connection_guard_reads(owner: type, attribute: str) -> None:
    source = inspect.getsource(owner)
    assert attribute in source, (
        f"uvicorn: {owner.__name__} no longer has `{attribute}`; GuardedProtocol "
        "(daemon/api/connections.py) reads it to find idle connections and count them"
    )


def test_httptools_calls_on_message_begin_first() -> None:
    calls: list[str] = []

    class Callbacks:
        def on_message_begin(self) -> None:
            calls.append("on_message_begin")

        def on_headers_complete(self) -> None:
            calls.append("on_headers_complete")

        def on_message_complete(self) -> None:
            calls.append("on_message_complete")

    httptools.HttpRequestParser(Callbacks()).feed_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert calls == ["on_message_begin", "on_headers_complete", "on_message_complete"], (
        "httptools: the parser no longer calls on_message_begin before the headers "
        f"(called: {calls}); PeerCredentialsProtocol fills scope['state'] there"
    )


# uvicorn: Server and Config (daemon/api/serve.py)


def test_server_has_what_we_override_and_read() -> None:
    startup = inspect.signature(uvicorn.Server.startup)
    sockets = startup.parameters.get("sockets")
    assert inspect.iscoroutinefunction(uvicorn.Server.startup), (
        "uvicorn: Server.startup is no longer a coroutine; ferryd's _Server "
        "(daemon/api/serve.py) overrides it and awaits super().startup(sockets)"
    )
    assert sockets is not None, (
        f"uvicorn: Server.startup{startup} no longer takes `sockets`; ferryd's _Server "
        "(daemon/api/serve.py) overrides it and passes them on"
    )
    assert sockets.default is None, f"uvicorn: Server.startup's sockets now defaults to {sockets}"
    assert "sockets" in inspect.signature(uvicorn.Server.serve).parameters, (
        "uvicorn: Server.serve() no longer takes sockets=; ApiServer.serve passes its socket"
    )
    assert callable(getattr(uvicorn.Server, "capture_signals", None)), (
        "uvicorn: Server.capture_signals is gone; ApiServer replaces it so that uvicorn "
        "leaves SIGTERM/SIGINT to the daemon: check how uvicorn now takes signals"
    )
    assert "capture_signals()" in inspect.getsource(uvicorn.Server.serve), (
        "uvicorn: Server.serve no longer enters self.capture_signals(); ApiServer replaces "
        "it to keep SIGTERM/SIGINT for the daemon: check how uvicorn now takes signals"
    )
    server = uvicorn.Server(uvicorn.Config(_app, **CONFIG))
    for attribute in ("started", "should_exit"):
        assert getattr(server, attribute, None) is False, (
            f"uvicorn: a new Server's `{attribute}` is {getattr(server, attribute, 'gone')!r}, "
            "not False; ApiServer reads it (and sets should_exit to stop)"
        )


def test_config_takes_the_keywords_we_pass() -> None:
    parameters = inspect.signature(uvicorn.Config).parameters
    missing = sorted(set(CONFIG) - set(parameters))
    assert not missing, f"uvicorn: Config no longer takes {missing}; ApiServer passes them"
    config = uvicorn.Config(_app, **CONFIG)
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol, (
        "uvicorn: Config(http=<a protocol class>) no longer selects that class "
        f"(got {config.http_protocol_class!r}); ApiServer passes PeerCredentialsProtocol"
    )


async def test_server_serves_on_our_socket_as_serve_py_runs_it(tmp_path: Path) -> None:
    """ApiServer's use of uvicorn end to end, with a protocol that does what
    PeerCredentialsProtocol does: one request over a Unix socket, then should_exit."""
    scopes: list[dict[str, Any]] = []

    class PeerProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.peer_socket = transport.get_extra_info("socket")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            # Kept, not asserted here: an error in a parser callback becomes a 400.
            scopes.append(self.scope)
            state = self.scope.get("state")
            if isinstance(state, dict):
                state["peer"] = self.peer_socket

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await _app(scope, receive, send)

    class Server(uvicorn.Server):
        def __init__(self, config: uvicorn.Config) -> None:
            super().__init__(config)
            self.listening = anyio.Event()

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                self.listening.set()

    path = tmp_path / "api.sock"
    server = Server(uvicorn.Config(app, **{**CONFIG, "http": PeerProtocol}))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, anyio.fail_after(10):
        sock.bind(str(path))
        sock.listen()
        sock.setblocking(False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(server.serve, sockets=[sock]))
            await server.listening.wait()
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b"GET / HTTP/1.1\r\nHost: ferryd\r\nConnection: close\r\n\r\n")
            response = (await reader.read()).decode("latin-1").lower()
            writer.close()
            await writer.wait_closed()
            now = {sig: signal.getsignal(sig) for sig in handlers}
            server.should_exit = True

    assert now == handlers, (
        "uvicorn: the server took SIGINT/SIGTERM although capture_signals was replaced "
        "with a null context; the daemon must keep them (daemon/api/serve.py)"
    )
    assert response.startswith("http/1.1 204"), f"uvicorn: unexpected response {response!r}"
    assert "\r\ndate:" in response, (
        f"uvicorn: Config(date_header=True) sent no Date header: {response!r}"
    )
    assert "\r\nserver:" not in response, (
        f"uvicorn: Config(server_header=False) still sent a Server header: {response!r}"
    )
    assert len(scopes) == 2, f"uvicorn: on_message_begin/app calls were {scopes!r}"
    begun, served = scopes
    assert isinstance(begun.get("state"), dict), (
        "uvicorn: HttpToolsProtocol.on_message_begin no longer makes self.scope with a "
        f"'state' dict (scope: {begun!r}); PeerCredentialsProtocol writes the peer there"
    )
    assert served["state"].get("peer") is not None, (
        "uvicorn: what on_message_begin put in scope['state'] did not reach the app; "
        "PeerCredentialsProtocol passes the peer's credentials that way"
    )


# httpcore (registry/streams.py; the cookie jar: registry/connector.py)


def _methods_source(cls: type) -> str:
    """The source of a class's own functions (httpcore renames its classes' __module__ to
    "httpcore", so inspect cannot find the class itself)."""
    functions = [f for f in vars(cls).values() if inspect.isfunction(f)]
    return "\n".join(inspect.getsource(f) for f in functions)


def test_httpcore_reads_read_num_bytes_per_receive() -> None:
    cls = httpcore.AsyncHTTP11Connection
    size = getattr(cls, "READ_NUM_BYTES", None)
    assert isinstance(size, int), (
        f"httpcore: AsyncHTTP11Connection.READ_NUM_BYTES is {size!r}, not an int; "
        "registry/streams.py raises it to 1 MiB, and its hasattr guard would skip it "
        "silently (blob downloads get slower)"
    )
    assert re.search(r"\.read\(\s*self\.READ_NUM_BYTES\b", _methods_source(cls)), (
        "httpcore: AsyncHTTP11Connection no longer reads self.READ_NUM_BYTES at a time; "
        "the read size set in registry/streams.py no longer has any effect"
    )


def test_httpx_talks_http11_through_httpcore() -> None:
    pool = getattr(httpx.AsyncHTTPTransport(), "_pool", None)
    assert isinstance(pool, httpcore.AsyncConnectionPool), (
        f"httpx: AsyncHTTPTransport's pool is {pool!r}, not an httpcore.AsyncConnectionPool; "
        "the READ_NUM_BYTES set on httpcore in registry/streams.py no longer applies"
    )
    assert "AsyncHTTP11Connection(" in _methods_source(httpcore.AsyncHTTPConnection), (
        "httpcore: AsyncHTTPConnection no longer makes AsyncHTTP11Connection for HTTP/1.1; "
        "the READ_NUM_BYTES set in registry/streams.py no longer applies"
    )


def test_httpcore_starts_tls_through_anyio_stream_start_tls() -> None:
    from httpcore._backends import anyio as httpcore_anyio

    from ferryd.registry import streams

    streams.install()

    assert "start_tls(" in _methods_source(httpcore.AsyncHTTPConnection), (
        "httpcore: AsyncHTTPConnection no longer calls its stream's start_tls; "
        "registry/streams.py's TLS on the event loop is never used"
    )
    assert httpcore_anyio.AnyIOStream.start_tls is streams._start_tls_on_loop, (
        "httpcore: AnyIOStream.start_tls is not the one registry/streams.py set"
    )
    parameters = list(inspect.signature(anyio_asyncio.SocketStream).parameters)
    assert parameters == ["transport", "protocol"], (
        f"anyio: SocketStream takes {parameters}, not (transport, protocol); "
        "registry/streams.py builds one over the loop's TLS transport"
    )


def test_httpcore_reads_through_anyio_stream_read() -> None:
    from httpcore._backends import anyio as httpcore_anyio

    from ferryd.registry import streams

    streams.install()
    assert re.search(
        r"self\._network_stream\.read\(", _methods_source(httpcore.AsyncHTTP11Connection)
    ), (
        "httpcore: AsyncHTTP11Connection no longer reads through its network stream's "
        "read(); registry/streams.py's read of queued bytes is never used"
    )
    assert httpcore_anyio.AnyIOStream.read is streams._read_queued_first, (
        "httpcore: AnyIOStream.read is not the one registry/streams.py set"
    )
    assert list(inspect.signature(streams._anyio_read).parameters) == [
        "self",
        "max_bytes",
        "timeout",
    ], "httpcore: AnyIOStream.read no longer takes (max_bytes, timeout)"


def test_anyio_socket_streams_keep_what_the_queued_read_takes() -> None:
    """registry/streams.py's read takes a chunk from the protocol's queue as anyio's own
    receive() does: the same attributes, the same handling of the read event."""
    from ferryd.registry import streams

    streams.install()
    receive = inspect.getsource(anyio_asyncio.SocketStream.receive)
    for needle in (
        "with self._receive_guard",
        "self._protocol.read_queue.popleft()",
        "self._protocol.read_event.clear()",
    ):
        assert needle in receive, (
            f"anyio: SocketStream.receive no longer has {needle!r}; registry/streams.py's "
            "_read_queued_first copies what receive() does with a queued chunk: compare"
        )
    guard = anyio_asyncio.ResourceGuard("reading from")
    assert getattr(guard, "_guarded", None) is False, (
        "anyio: ResourceGuard has no `_guarded` flag; registry/streams.py reads it"
    )


def test_httpcore_reads_bodies_through_the_method_streams_replaces() -> None:
    from ferryd.registry import streams

    streams.install()
    cls = httpcore.AsyncHTTP11Connection
    assert cls._receive_response_body is streams._receive_body_past_h11, (
        "httpcore: AsyncHTTP11Connection._receive_response_body is not the one "
        "registry/streams.py set"
    )
    original = inspect.getsource(streams._h11_body)
    for needle in ("self._receive_event(timeout=timeout)", "h11.Data", "h11.EndOfMessage"):
        assert needle in original, (
            f"httpcore: _receive_response_body no longer has {needle!r}; "
            "registry/streams.py's _receive_body_past_h11 does what it did: compare"
        )
    assert "_receive_response_body(" in _methods_source(
        httpcore._async.http11.HTTP11ConnectionByteStream
    ), "httpcore: the response stream no longer reads through _receive_response_body"


def test_h11_keeps_what_the_body_reader_lowers_and_reads() -> None:
    """A Content-Length body as registry/streams.py reads it: h11's reader counts down
    `_remaining`, which ends the message at 0; `_receive_buffer` and
    `_receive_buffer_closed` say what h11 holds and whether the peer closed."""
    import h11
    from h11._readers import ContentLengthReader

    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Response)
    reader = getattr(conn, "_reader", None)
    assert isinstance(reader, ContentLengthReader), (
        f"h11: a Content-Length body's reader is {reader!r}, not a ContentLengthReader"
    )
    assert len(conn._receive_buffer) == 0, "h11: Connection no longer has _receive_buffer"
    assert conn._receive_buffer_closed is False, (
        "h11: Connection no longer has _receive_buffer_closed"
    )
    assert reader._remaining == 10, "h11: ContentLengthReader no longer counts _remaining"
    reader._remaining = 0  # the ten bytes read past h11
    assert isinstance(conn.next_event(), h11.EndOfMessage), (
        "h11: a ContentLengthReader with nothing _remaining does not end the message"
    )
    assert conn.their_state is h11.DONE


def test_registry_clients_keep_no_cookies() -> None:
    """registry/connector.py's httpx client overrides the public `cookies` property so
    that no answer's headers are parsed for cookies (dockerd keeps none either)."""
    from ferryd.registry import connector

    async def main() -> int:
        async def answer(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, headers={"Set-Cookie": "session=1; Path=/"})

        async with connector._RegistryHTTP(transport=httpx.MockTransport(answer)) as client:
            await client.get("http://registry.test/v2/")
            await client.get("http://registry.test/v2/")
            return len(client.cookies)

    assert anyio.run(main) == 0, (
        "httpx: a registry client kept a cookie; registry/connector.py's _RegistryHTTP "
        "no longer replaces the client's cookie jar (check AsyncClient.cookies)"
    )


# urllib3 (registry/blocking.py)


def test_urllib3_pools_lend_connections_that_open_ahead_serve() -> None:
    """A connection taken with `_get_conn`, connected and given back with `_put_conn`
    is the one the next request uses: opening ahead saves that request its handshake."""
    import urllib3

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        pool = urllib3.HTTPConnectionPool("127.0.0.1", server.getsockname()[1], maxsize=2)
        taken = pool._get_conn()
        assert taken.is_closed, "urllib3: a new pool connection is already open"
        taken.connect()
        pool._put_conn(taken)
        lent = pool._get_conn()
        pool._put_conn(lent)
        pool.close()
        assert lent is taken, (
            "urllib3: the pool did not lend back the connection given to it; "
            "registry/blocking.py's BlockingConnections.open opens nothing of use"
        )


# anyio (registry/streams.py)


def test_anyio_connections_stop_reading_at_the_read_size() -> None:
    """Under uvloop, a connection whose reader is busy queues no more than about 1 MiB
    (unpatched: several MB, read in one wakeup), and every byte still arrives."""
    from anyio.abc import SocketAttribute

    from ferryd.registry import streams

    streams.install()

    size = 32 << 20

    async def main() -> tuple[bool, int, int]:
        async def serve(client: anyio.abc.SocketStream) -> None:
            async with client:
                await client.send(b"x" * size)

        most = received = 0
        with anyio.fail_after(10):
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
            async with listener, anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, serve)
                port = listener.extra(SocketAttribute.local_port)
                async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                    protocol = getattr(stream, "_protocol", None)
                    while received < size:
                        received += len(await stream.receive(1 << 20))
                        queue = getattr(protocol, "read_queue", ())
                        most = max(most, sum(map(len, queue)))
                        await anyio.sleep(0.001)  # a busy reader: the socket fills meanwhile
                tg.cancel_scope.cancel()
        return isinstance(protocol, streams._BoundedStreamProtocol), most, received

    bounded, most, received = anyio.run(main, backend_options={"use_uvloop": True})
    assert bounded, (
        "anyio: connect_tcp no longer makes its connections with the module's "
        "StreamProtocol; registry/streams.py replaces that class to bound what a blob "
        "download queues in memory"
    )
    assert received == size, f"anyio: {received} of {size} bytes arrived"
    assert most <= streams._READ_SIZE + (256 << 10), (
        f"anyio: {most} bytes were queued on a connection nobody read from; "
        "registry/streams.py's _BoundedStreamProtocol pauses reading at 1 MiB: check "
        "StreamProtocol.read_queue and how receive() pauses and resumes the transport"
    )


# The bounds in pyproject.toml, the lock, and what is installed


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    return {canonicalize_name(r.name): r for r in map(Requirement, listed)}


def _locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pin = Requirement(line)
            if pin.marker is None or pin.marker.evaluate():
                (spec,) = pin.specifier
                assert spec.operator == "==", f"requirements.lock: {line!r} is not a pin"
                pins[canonicalize_name(pin.name)] = spec.version
    return pins


@pytest.mark.parametrize("name", BOUNDED)
def test_what_we_reach_into_has_an_upper_bound(name: str) -> None:
    requirement = _requirements().get(name)
    assert requirement is not None, f"pyproject.toml: {name} is not a direct dependency"
    assert any(s.operator in {"<", "<=", "==", "~="} for s in requirement.specifier), (
        f"pyproject.toml: {requirement} has no upper bound; ferryd reaches into {name}'s "
        "internals, so a new series must pass tests/test_patched_internals.py first"
    )


def test_lock_satisfies_pyproject() -> None:
    locked = _locked()
    wrong = [
        f"{requirement}: locked {locked.get(name, 'nothing')}"
        for name, requirement in _requirements().items()
        if locked.get(name) is None or not requirement.specifier.contains(locked[name], True)
    ]
    assert not wrong, (
        "requirements.lock does not match pyproject.toml; run `make lock` and commit it:\n"
        + "\n".join(wrong)
    )


def test_installed_versions_satisfy_pyproject() -> None:
    wrong = []
    for requirement in _requirements().values():
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            wrong.append(f"{requirement}: not installed")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            wrong.append(f"{requirement}: installed {installed}")
    assert not wrong, (
        "installed versions outside pyproject.toml's bounds; `make` installs "
        "requirements.lock:\n" + "\n".join(wrong)
    )
