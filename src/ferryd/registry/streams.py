"""The network streams httpcore reads registry answers from, made cheaper to read.

httpcore talks to the socket through anyio's stream, and a blob answer crosses it ~1 MiB
at a time, on the event loop. `install` changes five things in those classes, once per
process: httpcore reads up to 1 MiB per receive; a connection whose reader is busy stops
reading the socket at 1 MiB queued (TCP holds back the rest); a read that finds bytes
already queued takes them at once; the bytes of a body of known length go from the
stream to the reader without passing through h11; TLS runs in the event loop's own
transport, which decrypts into a buffer of ours. Every name reached into
here is pinned by tests/test_patched_internals.py.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import h11
import httpcore
from anyio._backends import _asyncio as _anyio_asyncio
from h11._readers import ContentLengthReader
from httpcore._backends import anyio as httpcore_anyio

# httpcore reads a response 64 KiB per receive; a blob body then costs the event loop
# ~16 trips through httpx, anyio and h11 per MiB, which starves the worker threads of
# the GIL. Reading up to 1 MiB at once (what is in the socket buffer, no more) took a
# 1 GiB gzip layer from 117 to ~155 MB/s on two cores.
_READ_SIZE = 1 << 20


def install() -> None:
    """Apply the changes to httpcore's and anyio's classes (once is enough: they are
    class and module attributes, looked up for every connection the process makes)."""
    if hasattr(httpcore.AsyncHTTP11Connection, "READ_NUM_BYTES"):
        httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = _READ_SIZE
    # A module attribute anyio looks up for every connection it opens.
    _anyio_asyncio.StreamProtocol = _BoundedStreamProtocol  # type: ignore[misc]
    httpcore.AsyncHTTP11Connection._receive_response_body = _receive_body_past_h11  # type: ignore[method-assign]
    # httpcore reads and starts TLS through this class on every connection.
    httpcore_anyio.AnyIOStream.read = _read_queued_first  # type: ignore[method-assign]
    httpcore_anyio.AnyIOStream.start_tls = _start_tls_on_loop  # type: ignore[method-assign]


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


_anyio_read = httpcore_anyio.AnyIOStream.read


async def _read_queued_first(
    self: httpcore_anyio.AnyIOStream, max_bytes: int, timeout: float | None = None
) -> bytes:
    """httpcore's read, but bytes already queued on the connection are taken at once.

    Most reads of a blob answer find bytes waiting (the socket is read ~256 KiB per
    wakeup while the pipeline works), yet each went through a cancel scope with its
    timer, httpcore's exception mapping and anyio's checkpoint (a turn of the loop):
    ~18 % of the event loop's time on the 5-layer pull. Taking them directly cut that
    pull's wall time by 8 % and its CPU by 5.4 % (10 A/B pairs). A read that must wait
    goes the whole way, timeout included. Without the checkpoint, a cancelled task sees
    its cancellation at its next read that waits (or its next await) instead: nothing
    is added to the queue without a turn of the loop, so that is ~1 MiB later at most.
    """
    stream = self._stream
    if isinstance(stream, _anyio_asyncio.SocketStream):
        protocol = stream._protocol
        queue = protocol.read_queue
        if queue and max_bytes >= 1 and not stream._receive_guard._guarded:
            chunk = queue.popleft()
            if len(chunk) > max_bytes:
                chunk, rest = chunk[:max_bytes], chunk[max_bytes:]
                queue.appendleft(rest)
            if not queue:  # as anyio's receive: the next read waits for the socket
                protocol.read_event.clear()
            return chunk
    return await _anyio_read(self, max_bytes, timeout)


_h11_body = httpcore.AsyncHTTP11Connection._receive_response_body


async def _receive_body_past_h11(
    self: httpcore.AsyncHTTP11Connection, request: httpcore.Request
) -> AsyncIterator[bytes]:
    """httpcore's body reader, but the bytes of a body whose length is known go from the
    stream to the caller directly, not through h11, which is told how many it missed.

    h11 copies each chunk into its buffer and out again, then httpcore once more, and
    runs its state machine per chunk. Past it, the 5-layer pull took 4.6 % less wall
    time and 3.6 % less CPU (10 and 9 of 12 A/B pairs; over TLS 3 % and 2.6 %), as much
    as reading past h11 and closing the connection after each blob. What h11 holds
    already (bytes that came with the headers) and the end of the body still go through
    h11, so its state stays true: it ends the answer, the connection is kept for the next
    request, and a connection that closes early fails with h11's own error, counting the
    bytes that came this way.
    """
    h11_state = self._h11_state
    reader = h11_state._reader
    if not isinstance(reader, ContentLengthReader):  # chunked, or read to the close
        async for chunk in _h11_body(self, request):
            yield chunk
        return
    timeout = request.extensions.get("timeout", {}).get("read", None)
    while True:
        waiting = not h11_state._receive_buffer and not h11_state._receive_buffer_closed
        if reader._remaining > 0 and waiting:
            data = await self._network_stream.read(
                min(self.READ_NUM_BYTES, reader._remaining), timeout=timeout
            )
            if data:
                reader._remaining -= len(data)
                yield data
                continue
            h11_state.receive_data(b"")  # the end came early: h11 says so below
        event = await self._receive_event(timeout=timeout)
        if isinstance(event, h11.Data):
            yield bytes(event.data)
        elif isinstance(event, (h11.EndOfMessage, h11.PAUSED)):
            break


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
                below, _DecryptedInto(protocol), ssl_context, server_hostname=server_hostname
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


# The most a TLS transport decrypts into the buffer at once: what one read of the socket
# brings (uvloop reads 256 KiB).
_DECRYPT_SIZE = 256 << 10

# One buffer for every TLS connection of a thread: the transport asks for it, decrypts
# into it and hands it over in one synchronous call, and what it holds is copied out
# before that call returns. Idle kept connections hold none.
_decrypting = threading.local()


def _decrypt_buffer() -> memoryview:
    buffer: memoryview | None = getattr(_decrypting, "buffer", None)
    if buffer is None:
        buffer = _decrypting.buffer = memoryview(bytearray(_DECRYPT_SIZE))
    return buffer


class _DecryptedInto(asyncio.BufferedProtocol):
    """anyio's protocol behind the loop's TLS transport, the records decrypted into a
    buffer of ours.

    Given a plain protocol, the TLS transport decrypts each record (16 KiB at most) into
    a new 256 KiB bytes object, shrinks it, then joins a socket read's records into one
    more: ~16 allocations and a copy per 256 KiB. Given a buffer, it decrypts them into
    it in place and hands them over once. The 5-layer pull over TLS: 1.7-4.5 % less wall
    time, 1.6-2.7 % less CPU (three sets of A/B pairs; 14 of 20 pairs faster). A buffer
    smaller than what one read of the socket brings would split what is handed over.
    Not `connection_made`: the connection is anyio's already (`start_tls` does not call
    it), and anyio's protocol would start its read queue anew.
    """

    def __init__(self, protocol: asyncio.Protocol) -> None:
        self._protocol = protocol

    def get_buffer(self, sizehint: int) -> memoryview:
        return _decrypt_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._protocol.data_received(_decrypt_buffer()[:nbytes].tobytes())

    def eof_received(self) -> bool | None:
        return self._protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()


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
