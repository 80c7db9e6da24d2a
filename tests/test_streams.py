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
