"""Registries whose answers' status line and headers never finish coming: sent a byte at
a time, each byte well inside the read timeout, or as endless interim answers
(`100 Continue`), or as a header block past any sane size or count of fields.

The read timeout bounds one wait only; the body deadline (tests/test_registry_bounds.py)
starts at the body. Every answer (a manifest, a blob, a token, a login's ping, a push's
POST, PATCH, PUT and HEAD; through the async client or read whole in a worker thread)
must have its head whole within its own deadline (registry/heads.py), else end in a
retryable timeout naming the sender and what it was too slow to send, its connection
closed, never in a read that goes on for days; a head over the size limit (in all, or in
one line) or over the limit of header fields is refused, naming the limit, the same on
either way.
"""

from __future__ import annotations

import http.client
import inspect
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import anyio
import httpcore
import pytest
from anyio.abc import SocketAttribute, SocketStream

from ferryd.errors import TooLargeError, TransientRegistryError
from ferryd.oci.digest import Digest
from ferryd.oci.mediatypes import OCI_MANIFEST
from ferryd.registry import heads
from ferryd.registry.auth import ANONYMOUS
from ferryd.registry.blocking import _Reachable
from ferryd.registry.client import BlobResponse, ReadBlob, RegistryClient
from ferryd.registry.connector import Connector
from ferryd.registry.endpoints import RegistryService
from ferryd.registry.heads import TimedResponse
from ferryd.registry.login import check_login
from support.digests import sha256
from support.fakes import FakeRegistry, Reply, Request, UploadRegistry, background
from support.waiting import await_until

REPO = "team/app"
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()
# The read timeout the clients run with: far longer than a drip's pause, so that only a
# deadline on the whole head can end a dripping one.
READ_TIMEOUT = 2.0
# The headers deadline the tests run with: half a read timeout, 1 s.
DEADLINE_READS = 0.5
DEADLINE = DEADLINE_READS * READ_TIMEOUT
# A dripping server's pause between bytes (or interim answers), well inside the timeout.
DRIP = 0.05
# What a request may take before the test calls it endless (without the deadline, it is).
ENDLESS = 10.0
# The longest line http.client takes (its `_MAXLINE`), a header's among them.
HTTP_CLIENT_LINE: int = http.client._MAXLINE  # type: ignore[attr-defined]

Misbehaviour = Literal["drip", "interim", "huge", "long", "fields"]


@dataclass
class HeadDripper:
    """A registry on loopback: `registry` answers every request, except those `slow`
    picks, whose answer's head is sent as `how` says:

    "drip": `HTTP/1.1 200 OK` and header lines one byte every `DRIP` s, without end;
    "interim": `HTTP/1.1 100 Continue` answers, one every `DRIP` s, without end;
    "huge": the registry's answer at once, its head filled to `huge` bytes with header
    lines of 2 KB;
    "long": the same, filled with one header line;
    "fields": the registry's answer at once, with `fields` header fields in all.
    """

    registry: FakeRegistry
    slow: Callable[[Request], bool]
    how: Misbehaviour = "drip"
    huge: int = 0
    fields: int = 0
    port: int = 0
    connections: int = 0
    # When a connection the server was dripping on was found closed by the client.
    dropped: list[float] = field(default_factory=list)
    # Each request's connection (numbered from 1) and path.
    served: list[tuple[int, str]] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def connection(self, stream: SocketStream) -> None:
        self.connections += 1
        number = self.connections
        buffer = b""
        async with stream:
            try:
                while True:
                    while b"\r\n\r\n" not in buffer:
                        buffer += await stream.receive()
                        if not buffer[:1].isalpha():
                            return  # a TLS handshake: this server speaks plain HTTP only
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    request_line, *lines = head.decode("latin-1").split("\r\n")
                    method, target, _ = request_line.split(" ", 2)
                    headers = {}
                    for line in lines:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                    assert "chunked" not in headers.get("transfer-encoding", "")
                    length = int(headers.get("content-length", "0"))
                    while len(buffer) < length:
                        buffer += await stream.receive()
                    body, buffer = buffer[:length], buffer[length:]
                    request = Request(method, target, headers, body)
                    self.served.append((number, request.path))
                    if self.slow(request):
                        await self._misbehave(stream, request)
                        return
                    await stream.send(_serialized(request, await self.registry(request)))
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                self.dropped.append(time.monotonic())

    async def _misbehave(self, stream: SocketStream, request: Request) -> None:
        if self.how in ("huge", "long", "fields"):
            head, _, body = _serialized(request, await self.registry(request)).partition(
                b"\r\n\r\n"
            )
            head += b"\r\n"
            if self.how == "fields":
                filler = _fields(self.fields - (head.count(b"\r\n") - 1))  # less the status line
            else:
                filler = _filler(self.huge - len(head) - 2, one_line=self.how == "long")
            await stream.send(head + filler + b"\r\n" + body)
            await stream.receive()  # until the client closes
            return
        self.registry.requests.append(request)
        if self.how == "interim":
            while True:
                await stream.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                await anyio.sleep(DRIP)
        await _drip(stream, b"HTTP/1.1 200 OK\r\n")
        for number in range(1_000_000):
            await _drip(stream, b"X-Drip-%d: a\r\n" % number)


def _filler(size: int, one_line: bool = False) -> bytes:
    """Header lines of `size` bytes in all: 2000 each, the last what is left; or one."""
    sizes = [size] if one_line else [2000] * (size // 2000) + [size % 2000]
    if sizes[-1] < 30:  # too short for a line of its own: the one before takes it
        sizes[-2:] = [sizes[-2] + sizes[-1] - 100, 100] if len(sizes) > 1 else [sizes[-1]]
    lines = []
    for number, length in enumerate(sizes):
        name = b"X-Filler-%05d: " % number
        lines.append(name + b"a" * (length - len(name) - 2) + b"\r\n")
    return b"".join(lines)


def _fields(count: int) -> bytes:
    return b"".join(b"X-Field-%05d: a\r\n" % number for number in range(count))


async def _drip(stream: SocketStream, data: bytes) -> None:
    for byte in data:
        await stream.send(bytes((byte,)))
        await anyio.sleep(DRIP)


def _serialized(request: Request, reply: Reply) -> bytes:
    headers = {**reply.headers, "Content-Length": str(len(reply.body))}
    head = f"HTTP/1.1 {reply.status} OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    body = b"" if request.method == "HEAD" else reply.body
    return head.encode("latin-1") + b"\r\n" + body


@asynccontextmanager
async def serving(
    registry: FakeRegistry,
    slow: Callable[[Request], bool],
    how: Misbehaviour = "drip",
    huge: int = 0,
    fields: int = 0,
) -> AsyncIterator[HeadDripper]:
    server = HeadDripper(registry, slow, how, huge, fields)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, background() as tg:
        server.port = listener.extra(SocketAttribute.local_port)
        registry.base_url = f"http://{server.host}"
        tg.start_soon(listener.serve, server.connection)
        yield server


@asynccontextmanager
async def client_of(host: str, read_timeout: float = READ_TIMEOUT) -> AsyncIterator[RegistryClient]:
    connector = Connector(RegistryService(), connect_timeout=5, read_timeout=read_timeout)
    try:
        yield await connector.open(host, REPO, ANONYMOUS, actions="pull,push")
    finally:
        await connector.aclose()


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heads, "HEAD_DEADLINE_READS", DEADLINE_READS)


def blob_registry(size: int = 3000) -> tuple[FakeRegistry, Digest]:
    registry = FakeRegistry()
    registry.add_manifest(MANIFEST, OCI_MANIFEST, "v1")
    return registry, registry.add_blob(random.Random(size).randbytes(size))


def gets(part: str) -> Callable[[Request], bool]:
    return lambda request: request.method == "GET" and f"/{part}/" in request.path


async def failing(call: Callable[[], object]) -> tuple[TransientRegistryError, float]:
    """What `call` raised (it must be a TransientRegistryError), and how long it took;
    fails the test if it goes on for `ENDLESS` s."""
    started = time.monotonic()
    with anyio.fail_after(ENDLESS), pytest.raises(TransientRegistryError) as caught:
        await call()  # type: ignore[misc]
    return caught.value, time.monotonic() - started


def assert_too_slow(error: Exception, deadline: float, what: str) -> None:
    message = str(error)
    assert message.startswith(
        f"timed out: 127.0.0.1 took over {deadline:g} s to send the status line and headers "
    ), message
    assert what in message
    assert "times read_timeout" in message
    assert "Traceback" not in message


async def read_blob(client: RegistryClient, digest: Digest, whole: int | None) -> type:
    async with client.open_blob(digest, whole=whole) as blob:
        async for _ in blob.chunks():
            pass
        return type(blob)


# -- the async client ---------------------------------------------------------------------


async def test_a_manifest_whose_headers_drip_times_out_within_ten_read_timeouts() -> None:
    # The default deadline: 10 read timeouts (here of 0.25 s, so 2.5 s in all), though
    # no byte of the head is later than a fifth of one.
    registry, _ = blob_registry()
    async with (
        serving(registry, gets("manifests")) as server,
        client_of(server.host, read_timeout=0.25) as client,
    ):
        error, elapsed = await failing(lambda: client.get_manifest("v1"))
    assert_too_slow(error, 2.5, f"manifest for {server.host}/{REPO}:v1")
    assert "(10 times read_timeout)" in str(error)
    assert 2.5 <= elapsed < 2.5 + 2


@pytest.mark.usefixtures("short_deadline")
async def test_a_blob_whose_headers_drip_times_out_at_the_headers_deadline() -> None:
    # A blob's body may take long; its head may not.
    registry, digest = blob_registry()
    async with serving(registry, gets("blobs")) as server, client_of(server.host) as client:
        error, elapsed = await failing(lambda: read_blob(client, digest, None))
    assert_too_slow(error, DEADLINE, f"blob {digest}")
    assert DEADLINE <= elapsed < DEADLINE + 2


@pytest.mark.usefixtures("short_deadline")
async def test_a_blob_read_in_a_worker_thread_whose_headers_drip_times_out() -> None:
    registry, digest = blob_registry()
    async with serving(registry, gets("blobs")) as server, client_of(server.host) as client:
        await client.get_manifest("v1")  # the endpoint chosen: blobs are read in threads
        assert client.reads_in_worker()
        error, elapsed = await failing(lambda: read_blob(client, digest, 3000))
    assert_too_slow(error, DEADLINE, f"blob {digest}")
    assert DEADLINE <= elapsed < DEADLINE + 2
    # One GET: the worker thread's, not sent again by the async client.
    assert len(registry.seen("GET", f"/v2/{REPO}/blobs/.+")) == 1


@pytest.mark.usefixtures("short_deadline")
async def test_a_token_answer_whose_headers_drip_times_out_naming_the_token_service() -> None:
    registry = FakeRegistry(auth="bearer")
    registry.add_manifest(MANIFEST, OCI_MANIFEST, "v1")
    token = lambda request: request.path == "/token"  # noqa: E731
    async with serving(registry, token) as server, client_of(server.host) as client:
        error, elapsed = await failing(lambda: client.get_manifest("v1"))
    assert_too_slow(error, DEADLINE, f"{server.host}: the token service's answer")
    assert elapsed < DEADLINE + 2


@pytest.mark.usefixtures("short_deadline")
async def test_a_login_whose_ping_headers_drip_times_out() -> None:
    registry = FakeRegistry()
    ping = lambda request: request.path == "/v2/"  # noqa: E731
    async with serving(registry, ping) as server:
        connector = Connector(RegistryService(), connect_timeout=5, read_timeout=READ_TIMEOUT)
        try:
            error, elapsed = await failing(lambda: check_login(connector, server.host, ANONYMOUS))
        finally:
            await connector.aclose()
    assert_too_slow(error, DEADLINE, "login")
    assert elapsed < DEADLINE + 2


@pytest.mark.usefixtures("short_deadline")
@pytest.mark.parametrize("method", ["HEAD", "POST", "PATCH", "PUT"])
async def test_a_push_answer_whose_headers_drip_times_out(method: str) -> None:
    registry = UploadRegistry()
    data = b"a blob to push" * 1000
    digest = sha256(data)
    slow = lambda request: request.method == method  # noqa: E731
    async with serving(registry, slow) as server, client_of(server.host) as client:

        async def call() -> object:
            if method == "HEAD":
                return await client.blob_size(digest)
            return await client.upload_blob(digest, len(data), data)

        error, elapsed = await failing(call)
    named = {"HEAD": f"blob {digest}", "PUT": f"upload of {digest}"}.get(method, "blob upload")
    assert_too_slow(error, DEADLINE, named)
    assert elapsed < DEADLINE + 2
    assert digest not in registry.repo_blobs(REPO)


# -- either way to a blob -------------------------------------------------------------


@pytest.mark.usefixtures("short_deadline")
@pytest.mark.parametrize("worker", [False, True], ids=["async", "worker-thread"])
async def test_endless_interim_answers_time_out_at_the_headers_deadline(worker: bool) -> None:
    registry, digest = blob_registry()
    async with (
        serving(registry, gets("blobs"), how="interim") as server,
        client_of(server.host) as client,
    ):
        await client.get_manifest("v1")
        error, elapsed = await failing(lambda: read_blob(client, digest, 3000 if worker else None))
    assert_too_slow(error, DEADLINE, f"blob {digest}")
    assert DEADLINE <= elapsed < DEADLINE + 2


@pytest.mark.usefixtures("short_deadline")
@pytest.mark.parametrize("worker", [False, True], ids=["async", "worker-thread"])
async def test_a_connection_whose_headers_came_too_slowly_is_closed_not_used_again(
    worker: bool,
) -> None:
    registry, digest = blob_registry()
    dripping = True
    slow = lambda request: dripping and gets("blobs")(request)  # noqa: E731
    async with serving(registry, slow) as server, client_of(server.host) as client:
        await client.get_manifest("v1")
        whole = 3000 if worker else None
        await failing(lambda: read_blob(client, digest, whole))
        failed = time.monotonic()
        # The server, still dripping, finds the connection closed by the client.
        await await_until(lambda: server.dropped, 2, what="the dripping connection closed")
        assert server.dropped[0] - failed < 1
        dripping = False
        expected = ReadBlob if worker else BlobResponse
        assert await read_blob(client, digest, whole) is expected
    first, _ = [i for i, (_, path) in enumerate(server.served) if "/blobs/" in path]
    closed = server.served[first][0]
    # Nothing more went over the connection whose head came too slowly.
    assert [n for n, _ in server.served[first + 1 :]] != []
    assert closed not in [n for n, _ in server.served[first + 1 :]]


@pytest.mark.parametrize(
    "size", [heads.MAX_HEAD + 1, 80_000, 1_000_000], ids=["limit+1", "80KB", "1MB"]
)
@pytest.mark.parametrize("worker", [False, True], ids=["async", "worker-thread"])
async def test_a_head_past_the_header_limit_is_refused_naming_the_limit(
    worker: bool, size: int
) -> None:
    # 80 KB: a head h11 took whole (it comes in one read); 1 MB: one h11 refuses as too
    # long before its end. http.client took 100 lines of 64 KiB.
    registry, digest = blob_registry()
    async with (
        serving(registry, gets("blobs"), how="huge", huge=size) as server,
        client_of(server.host) as client,
    ):
        await client.get_manifest("v1")
        with anyio.fail_after(ENDLESS), pytest.raises(TooLargeError) as caught:
            await read_blob(client, digest, 3000 if worker else None)
    message = str(caught.value)
    assert message.startswith("127.0.0.1: the status line and headers of ")
    assert f"blob {digest}" in message
    assert message.endswith(f"are over the limit of {heads.MAX_HEAD} bytes")
    # Refused, not retried: the registry would send it again.
    assert len(registry.seen("GET", f"/v2/{REPO}/blobs/.+")) == 1


@pytest.mark.parametrize("worker", [False, True], ids=["async", "worker-thread"])
async def test_a_head_of_just_the_header_limit_is_taken(worker: bool) -> None:
    registry, digest = blob_registry()
    async with (
        serving(registry, gets("blobs"), how="huge", huge=heads.MAX_HEAD) as server,
        client_of(server.host) as client,
    ):
        await client.get_manifest("v1")
        async with client.open_blob(digest, whole=3000 if worker else None) as blob:
            data = b"".join([chunk async for chunk in blob.chunks()])
    assert type(blob) is (ReadBlob if worker else BlobResponse)
    assert sha256(data) == digest


@pytest.mark.parametrize("size", [HTTP_CLIENT_LINE + 1000, 1_000_000], ids=["64KB", "1MB"])
@pytest.mark.parametrize("worker", [False, True], ids=["async", "worker-thread"])
async def test_a_header_line_longer_than_http_client_takes_is_refused_naming_the_limit(
    worker: bool, size: int
) -> None:
    # http.client refuses a line of over 64 KiB on its own (LineTooLong); the head's
    # limit, counted from its first byte, must come first and say the same as h11's way.
    registry, digest = blob_registry()
    async with (
        serving(registry, gets("blobs"), how="long", huge=size) as server,
        client_of(server.host) as client,
    ):
        await client.get_manifest("v1")
        with anyio.fail_after(ENDLESS), pytest.raises(TooLargeError) as caught:
            await read_blob(client, digest, 3000 if worker else None)
    assert str(caught.value) == (
        f"127.0.0.1: the status line and headers of the answer to blob {digest} are over "
        f"the limit of {heads.MAX_HEAD} bytes"
    )
    assert len(registry.seen("GET", f"/v2/{REPO}/blobs/.+")) == 1


@pytest.mark.parametrize("fields", [101, heads.MAX_HEAD_FIELDS], ids=["101", "limit"])
@pytest.mark.parametrize("worker", [False, True], ids=["async", "worker-thread"])
async def test_an_answer_of_more_header_fields_than_http_client_takes_is_read(
    worker: bool, fields: int
) -> None:
    # http.client took 100 (`_MAXHEADERS`), h11 any number; Go's client (dockerd's,
    # containerd's) too, within its size limit.
    registry, digest = blob_registry()
    async with (
        serving(registry, gets("blobs"), how="fields", fields=fields) as server,
        client_of(server.host) as client,
    ):
        await client.get_manifest("v1")
        async with client.open_blob(digest, whole=3000 if worker else None) as blob:
            data = b"".join([chunk async for chunk in blob.chunks()])
    assert type(blob) is (ReadBlob if worker else BlobResponse)
    assert sha256(data) == digest


@pytest.mark.parametrize("worker", [False, True], ids=["async", "worker-thread"])
async def test_an_answer_of_more_header_fields_than_the_limit_is_refused_naming_the_limit(
    worker: bool,
) -> None:
    registry, digest = blob_registry()
    async with (
        serving(registry, gets("blobs"), how="fields", fields=heads.MAX_HEAD_FIELDS + 1) as server,
        client_of(server.host) as client,
    ):
        await client.get_manifest("v1")
        with anyio.fail_after(ENDLESS), pytest.raises(TooLargeError) as caught:
            await read_blob(client, digest, 3000 if worker else None)
    assert str(caught.value) == (
        f"127.0.0.1: the headers of the answer to blob {digest} are over the limit of "
        f"{heads.MAX_HEAD_FIELDS} fields"
    )
    assert not caught.value.retryable
    # Refused, not retried: the registry would send it again.
    assert len(registry.seen("GET", f"/v2/{REPO}/blobs/.+")) == 1


# -- what heads.py takes from httpcore and http.client --------------------------------


def _source(function: object) -> str:
    return inspect.getsource(function)  # type: ignore[arg-type]


def test_httpcore_and_http_client_receive_heads_where_heads_py_holds_them() -> None:
    """registry/heads.py replaces httpcore's AsyncHTTP11Connection._receive_response_headers
    with its own loop over `_receive_event`'s (reading `_h11_state`, `_network_stream` and
    `READ_NUM_BYTES`), and gives urllib3's connections an http.client response class
    whose reader it wraps (`fp`, made by `sock.makefile`) and whose header lines it
    hands over as one (http.client joins them before it parses them). If this fails
    after an upgrade, compare heads.py with what moved."""
    assert httpcore.AsyncHTTP11Connection._receive_response_headers is (
        heads._receive_head_in_time
    ), "httpcore: _receive_response_headers is not the one registry/heads.py set"
    assert "self._receive_response_headers(" in _source(
        httpcore.AsyncHTTP11Connection.handle_async_request
    ), "httpcore: a connection no longer receives heads through _receive_response_headers"
    original = _source(heads._httpcore_head)
    for needle in (
        "self._receive_event(timeout=timeout)",
        "isinstance(event, h11.Response)",
        "event.status_code == 101",
        "event.headers.raw_items()",
        "self._h11_state.trailing_data",
    ):
        assert needle in original, f"httpcore: _receive_response_headers lost {needle!r}"
    receive = _source(httpcore.AsyncHTTP11Connection._receive_event)
    for needle in (
        "self._h11_state.next_event()",
        "h11.RemoteProtocolError: RemoteProtocolError",
        "event is h11.NEED_DATA",
        "self._network_stream.read(",
        "self.READ_NUM_BYTES, timeout=timeout",
        "Server disconnected without sending a response.",
        "self._h11_state.receive_data(data)",
    ):
        assert needle in receive, f"httpcore: _receive_event lost {needle!r}"
    assert _Reachable.response_class is TimedResponse
    assert "self.response_class(self.sock, method=self._method)" in _source(
        http.client.HTTPConnection.getresponse
    ), "http.client: getresponse no longer makes its answer with response_class"
    assert 'self.fp = sock.makefile("rb")' in _source(http.client.HTTPResponse.__init__), (
        "http.client: an answer no longer reads through sock.makefile"
    )
    assert "parse_headers(self.fp" in _source(http.client.HTTPResponse.begin), (
        "http.client: begin no longer parses the headers from fp"
    )
    assert "fp.readline(_MAXLINE + 1)" in _source(http.client._read_headers)  # type: ignore[attr-defined]
    assert "b''.join(headers)" in _source(http.client.parse_headers), (
        "http.client: parse_headers no longer joins the header lines it read"
    )
    # The header lines handed over as one are one line to http.client, which it takes.
    assert heads.MAX_HEAD <= HTTP_CLIENT_LINE
