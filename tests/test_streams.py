"""Reads from a registry connection (registry/streams.py) over real loopback sockets:
bytes already queued are taken at once, in order and split at the size asked for; a read
that must wait still waits for the socket, and its timeout, end and errors are httpcore's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import httpcore
import httpx
import pytest
from anyio.abc import SocketAttribute, SocketStream

from ferryd.registry import streams

pytestmark = pytest.mark.anyio

Serve = Callable[[SocketStream], Awaitable[None]]


@asynccontextmanager
async def _connected(serve: Serve) -> AsyncIterator[httpcore.AsyncNetworkStream]:
    """An httpcore stream (the one the registry client reads through) to a loopback
    server running `serve` on the connection."""
    streams.install()

    async def serve_then_close(client: SocketStream) -> None:
        async with client:
            await serve(client)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve_then_close)
        port = listener.extra(SocketAttribute.local_port)
        stream = await httpcore.AnyIOBackend().connect_tcp("127.0.0.1", port)
        try:
            yield stream
        finally:
            await stream.aclose()
            tg.cancel_scope.cancel()


async def _queued(stream: httpcore.AsyncNetworkStream, size: int) -> None:
    """Let the connection read the socket until `size` bytes are queued, none of them
    received, as they queue while a read waits and the socket holds more."""
    inner = stream._stream  # type: ignore[attr-defined]
    inner._transport.resume_reading()
    try:
        await _until(lambda: sum(map(len, inner._protocol.read_queue)) >= size)
    finally:
        inner._transport.pause_reading()


async def _until(condition: Callable[[], bool]) -> None:
    """Wait for what the socket's reading callbacks make true (5 s at most)."""
    for _ in range(1000):
        if condition():
            return
        await anyio.sleep(0.005)
    raise AssertionError("the connection never got there")


def _sending(*pieces: bytes, then: float = 0) -> Serve:
    async def serve(client: SocketStream) -> None:
        for piece in pieces:
            await client.send(piece)
        await anyio.sleep(then)

    return serve


async def test_bytes_already_queued_are_read_without_a_turn_of_the_loop() -> None:
    async with _connected(_sending(b"a" * 1000, then=1)) as stream:
        await _queued(stream, 1000)
        turned = False

        def turn() -> None:
            nonlocal turned
            turned = True

        asyncio.get_running_loop().call_soon(turn)
        assert await stream.read(1 << 20) == b"a" * 1000
        assert not turned


async def test_queued_bytes_come_in_order_split_at_the_size_asked_for() -> None:
    body = bytes(range(256)) * 64  # 16 KiB
    async with _connected(_sending(body, then=1)) as stream:
        await _queued(stream, len(body))
        pieces = [await stream.read(5000) for _ in range(4)]
        assert [len(piece) for piece in pieces] == [5000, 5000, 5000, 1384]
        assert b"".join(pieces) == body


async def test_a_read_with_nothing_queued_waits_for_the_socket() -> None:
    async def later(client: SocketStream) -> None:
        await anyio.sleep(0.2)
        await client.send(b"late")
        await anyio.sleep(1)

    async with _connected(later) as stream:
        assert await stream.read(1 << 20, timeout=5) == b"late"


async def test_a_read_with_nothing_queued_times_out_as_httpcore_says() -> None:
    async with _connected(_sending(then=5)) as stream:
        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(1 << 20, timeout=0.1)


async def test_what_was_queued_before_the_end_is_read_then_the_end() -> None:
    async with _connected(_sending(b"last words")) as stream:
        await _queued(stream, len(b"last words"))
        protocol = stream._stream._protocol  # type: ignore[attr-defined]
        stream._stream._transport.resume_reading()  # type: ignore[attr-defined]
        await _until(lambda: protocol.is_at_eof)
        assert await stream.read(1 << 20) == b"last words"
        assert await stream.read(1 << 20) == b""


async def test_a_read_after_the_queue_is_emptied_waits_for_more_not_for_the_end() -> None:
    async def twice(client: SocketStream) -> None:
        await client.send(b"a" * 1000)
        await anyio.sleep(0.3)
        await client.send(b"later")
        await anyio.sleep(1)

    async with _connected(twice) as stream:
        await _queued(stream, 1000)
        assert await stream.read(1 << 20) == b"a" * 1000
        assert await stream.read(1 << 20, timeout=5) == b"later"


async def test_a_second_reader_is_refused_while_one_waits_even_with_bytes_queued() -> None:
    async with _connected(_sending(then=2)) as stream:
        inner = stream._stream  # type: ignore[attr-defined]
        got: list[bytes] = []

        async def wait_for_bytes() -> None:
            got.append(await stream.read(1 << 20, timeout=5))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_bytes)
            await _until(lambda: inner._receive_guard._guarded)
            inner._protocol.data_received(b"x")  # queued while the first reader waits
            with pytest.raises(anyio.BusyResourceError):
                await stream.read(1 << 20)
        assert got == [b"x"]


# Bodies of known length, read past h11 (an HTTP/1.1 server on a loopback socket that
# answers each request on a connection with the next of its answers).


@asynccontextmanager
async def _http_server(
    *answers: Callable[[SocketStream], Awaitable[None]],
) -> AsyncIterator[tuple[str, list[int]]]:
    """A server whose i-th request (whatever the connection) gets answers[i]; yields its
    URL and the number of requests each connection carried."""
    streams.install()
    queue = list(answers)
    per_connection: list[int] = []

    async def serve(client: SocketStream) -> None:
        async with client:
            per_connection.append(0)
            index = len(per_connection) - 1
            buffered = b""
            while queue:
                while b"\r\n\r\n" not in buffered:
                    try:
                        buffered += await client.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                buffered = buffered.split(b"\r\n\r\n", 1)[1]
                per_connection[index] += 1
                await queue.pop(0)(client)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield f"http://127.0.0.1:{listener.extra(SocketAttribute.local_port)}/", per_connection
        tg.cancel_scope.cancel()


def _answer(body: bytes, *, split: int | None = None, cut: int | None = None) -> Serve:
    """A 200 with Content-Length; `split`: that many body bytes go with the headers, the
    rest 50 ms later; `cut`: only that many body bytes are sent, then the connection
    closes."""

    async def answer(client: SocketStream) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
        sent = body if cut is None else body[:cut]
        first = len(sent) if split is None else split
        await client.send(head + sent[:first])
        if first < len(sent):
            await anyio.sleep(0.05)
            await client.send(sent[first:])
        if cut is not None:
            await client.aclose()

    return answer


def _fed_to_h11(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import h11

    fed: list[int] = []
    receive_data = h11.Connection.receive_data

    def counting(self: h11.Connection, data: bytes) -> None:
        fed.append(len(data))
        receive_data(self, data)

    monkeypatch.setattr(h11.Connection, "receive_data", counting)
    return fed


async def test_a_body_of_known_length_goes_past_h11_and_the_connection_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB
    fed = _fed_to_h11(monkeypatch)
    server = _http_server(_answer(body, split=1000), _answer(b"next"))
    async with server as (url, served), httpx.AsyncClient() as client:
        async with client.stream("GET", url) as response:
            chunks = [chunk async for chunk in response.aiter_raw()]
        assert (await client.get(url)).content == b"next"
    assert b"".join(chunks) == body
    assert chunks[0] == body[:1000]  # what came with the headers, through h11, first
    assert sum(fed) < 2000, f"{sum(fed)} bytes went through h11"
    assert served == [2], "the second request did not reuse the connection"


async def test_a_body_cut_short_fails_with_the_bytes_received_and_expected() -> None:
    body = b"x" * 300_000
    server = _http_server(_answer(body, split=100, cut=200_000))
    async with (
        server as (url, _),
        httpx.AsyncClient() as client,
        client.stream("GET", url) as response,
    ):
        with pytest.raises(
            httpx.RemoteProtocolError, match="received 200000 bytes, expected 300000"
        ):
            async for _chunk in response.aiter_raw():
                pass


async def test_a_stalled_body_times_out() -> None:
    async def stall(client: SocketStream) -> None:
        await client.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await anyio.sleep(5)

    async with (
        _http_server(stall) as (url, _),
        httpx.AsyncClient(timeout=0.2) as client,
        client.stream("GET", url) as r,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await r.aread()


async def test_a_chunked_body_is_still_read_by_h11() -> None:
    async def chunked(client: SocketStream) -> None:
        await client.send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )

    server = _http_server(chunked, _answer(b""))
    async with server as (url, served), httpx.AsyncClient() as client:
        assert (await client.get(url)).content == b"hello world"
        assert (await client.get(url)).content == b""
    assert served == [2]


async def test_a_body_never_takes_the_bytes_queued_behind_it() -> None:
    """Read past h11, a body stops at its length: what follows on the connection (here
    the start of another answer) is not taken as the body's."""

    async def ahead(client: SocketStream) -> None:
        await client.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        await anyio.sleep(0.05)  # the body after the headers: read past h11
        await client.send(b"hello" + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")

    async with (
        _http_server(ahead) as (url, _),
        httpx.AsyncClient(timeout=2) as client,
        client.stream("GET", url) as response,
    ):
        assert b"".join([chunk async for chunk in response.aiter_raw()]) == b"hello"


# TLS decrypted into a buffer of ours.


class _Received(asyncio.Protocol):
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.calls: list[str] = []

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool | None:
        self.calls.append("eof")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append(f"lost {exc}")

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")


def test_what_is_decrypted_into_the_buffer_is_handed_on_as_bytes_of_its_own() -> None:
    received = _Received()
    into = streams._DecryptedInto(received)
    buffer = into.get_buffer(1000)
    buffer[:5] = b"first"
    into.buffer_updated(5)
    buffer[:3] = b"two"  # the buffer is used again: what was handed on must not change
    into.buffer_updated(3)
    assert received.data == [b"first", b"two"]


def test_every_tls_connection_of_a_thread_decrypts_into_one_buffer() -> None:
    one, other = streams._DecryptedInto(_Received()), streams._DecryptedInto(_Received())
    buffer = one.get_buffer(100)
    assert len(buffer) == streams._DECRYPT_SIZE
    assert other.get_buffer(300_000) is buffer
    assert one.get_buffer(100) is buffer


def test_the_end_the_loss_and_write_flow_control_reach_anyios_protocol() -> None:
    received = _Received()
    into = streams._DecryptedInto(received)
    into.pause_writing()
    into.resume_writing()
    assert into.eof_received() is None
    into.connection_lost(None)
    assert received.calls == ["pause", "resume", "eof", "lost None"]
