"""The head of every registry answer, whole within a deadline and a size.

An answer's head is its status line, the interim answers before it (`100 Continue`,
`103 Early Hints`) and its headers. httpx and urllib3 bound each wait for its bytes by
the read timeout only, and the deadline of a small body (`bodies.body_deadline`) starts
at the body: a registry, token service or storage host sending one byte of its head
just inside each read timeout held the request, its pull's slot and its connection for
as long as it liked. h11 takes a head of up to 100 KiB (34 days at a byte per 29 s),
http.client 100 lines of 64 KiB (six years), and interim answers without end.

The deadline (`head_deadline`): `HEAD_DEADLINE_READS` read timeouts, counted from when
the request has gone out; not the wait for a connection, connecting or sending a body,
which have bounds of their own (an upload's body may take long). It is a constant of
its own, as it bounds another thing than the body's, but ten as well: the first byte
must come within one read timeout anyway (a registry still at work on a PUT must say
something by then), and the rest of a head follows in a round trip or two; ten leave
room for interim answers that keep a long request alive, and a user who raised
read_timeout raises this with it. A small answer may so take up to 20 read timeouts,
head and body. Past it: `HeadTooSlow`, a retryable timeout (`head_error`).

The size: `MAX_HEAD` bytes of status line and headers. h11 (under httpx) holds at most
100 KiB of an unfinished head, but takes a finished one as large as one read brings
(256 KiB); http.client (under urllib3) takes 100 lines of 64 KiB each, 6.4 MiB per
answer in each worker thread. Past it: `HeadTooLarge`, refused naming the limit.

The fields: `MAX_HEAD_FIELDS` header fields in a head. http.client refused a 101st
(`_MAXHEADERS`) with words of its own, which ended as a retryable "connection failed";
h11 takes any number. Past it: `HeadTooManyFields`, refused naming the limit, as a head
too large.

All three are checked in one place for each way an answer comes: `_receive_head_in_time`,
where httpcore receives every head for the async client (registry, token service, login,
the hosts they redirect to; `install`, called by the connector), and `TimedResponse`,
the blocking connections' answer (`blocking`). A head that fails any closes its
connection: the rest of it is never read, and the connection never used again. The
callers word the error once (`head_error`, from `client.transport_error` and the two
token requests).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import time
from typing import Any

import h11
import httpcore
import httpx

from ferryd.errors import RegistryError, TooLargeError, TransientRegistryError
from ferryd.registry.wire import read_timeout

HEAD_DEADLINE_READS = 10
"""The head of an answer must have come whole within this many read timeouts (300 s with
the default `read_timeout` of 30 s) of its request going out (see the module's doc)."""

MAX_HEAD = 64 * 1024
"""The most bytes of status line and headers an answer may have: eight times what nginx
passes on from a registry behind it (`proxy_buffer_size`, 4 or 8 KiB), and as much as
http.client takes in one line."""

MAX_HEAD_FIELDS = 1000
"""The most header fields a head may have (an interim answer's too): ten times the 100
http.client takes, which real servers pass (cpython#131724: Microsoft 365's answers);
h11 and Go's client (dockerd's, containerd's) take any number that fits their size
limits, and a registry behind a CDN sends 30 to 60. A field costs ~5 us to take apart
and look up (h11 and httpx, or http.client and urllib3), so a head's cost stays near
5 ms, where `MAX_HEAD` bytes of empty fields (16,000) cost 50-80 ms. h11 has parsed a
head whole before its fields can be counted: on the async client those 16,000 still
cost the event loop ~50 ms before the refusal."""


def head_deadline(read: float | None) -> float:
    """Seconds the head of an answer may take, for requests with the read timeout `read`."""
    return HEAD_DEADLINE_READS * read_timeout(read)


class HeadTooSlow(httpx.ReadTimeout):
    """The head of an answer did not come whole within `deadline` seconds (httpx sets
    the request on it, as on any error raised in its transport)."""

    def __init__(self, deadline: float) -> None:
        super().__init__(f"the status line and headers took over {deadline:g} s to come")
        self.deadline = deadline
        self.reads = HEAD_DEADLINE_READS


class HeadTooLarge(httpx.RemoteProtocolError):
    """The head of an answer was over `MAX_HEAD` bytes."""

    def __init__(self) -> None:
        super().__init__(f"the status line and headers are over the limit of {MAX_HEAD} bytes")


class HeadTooManyFields(httpx.RemoteProtocolError):
    """The head of an answer had over `MAX_HEAD_FIELDS` header fields."""

    def __init__(self) -> None:
        super().__init__(f"the headers are over the limit of {MAX_HEAD_FIELDS} fields")


def head_error(exc: BaseException, what: str) -> RegistryError | None:
    """The error for a head that failed its deadline, its size or its count of fields
    while reading `what` (worded as `bodies` words a body's); None for any other failure.
    Too many fields are refused as too many bytes are: the registry would send them
    again."""
    if not isinstance(exc, HeadTooSlow | HeadTooLarge | HeadTooManyFields):
        return None
    try:
        sender = exc.request.url.host
    except RuntimeError:  # raised where no request was set on it
        sender = "the registry"
    if isinstance(exc, HeadTooManyFields):
        return TooLargeError(
            f"{sender}: the headers of {what} are over the limit of {MAX_HEAD_FIELDS} fields"
        )
    if isinstance(exc, HeadTooSlow):
        return TransientRegistryError(
            f"timed out: {sender} took over {exc.deadline:g} s to send the status line and "
            f"headers of {what} ({exc.reads:g} times read_timeout): it sends them too "
            "slowly, or never ends them"
        )
    return TooLargeError(
        f"{sender}: the status line and headers of {what} are over the limit of {MAX_HEAD} bytes"
    )


# -- the async client -----------------------------------------------------------------------


def install() -> None:
    """Have httpcore receive every head through `_receive_head_in_time` (once is enough:
    a class attribute, looked up for every answer of the process)."""
    httpcore.AsyncHTTP11Connection._receive_response_headers = _receive_head_in_time  # type: ignore[method-assign]


_httpcore_head = httpcore.AsyncHTTP11Connection._receive_response_headers

# h11's hint when its buffer holds more of an unfinished head than it takes (431: Request
# Header Fields Too Large; it gives it for nothing else).
_H11_HEAD_TOO_LONG = 431


async def _receive_head_in_time(
    self: httpcore.AsyncHTTP11Connection, request: httpcore.Request
) -> tuple[bytes, int, bytes, list[tuple[bytes, bytes]], bytes]:
    """httpcore's `_receive_response_headers` (called once the request has gone out)
    with its `_receive_event` loop, but the head is held to its deadline, size and count
    of fields: `HeadTooSlow`, `HeadTooLarge`, `HeadTooManyFields`.

    Each wait for bytes is the read timeout, or what is left of the deadline when that is
    less: a head is one h11 event, however many reads it takes, so the deadline is
    checked here, read by read. Interim answers are skipped, as httpcore skips them.
    httpcore closes the connection on either error, as on any other (its answer has not
    ended), and httpx passes them on as they are, with the request set on them.

    A patch of httpcore's, as `streams` makes. The other place it could be, httpcore's
    public `trace` extension (called as a head starts and ends) with the deadline on a
    cancel scope around each send, cost the event loop ~40 us per request on a machine
    where a manifest GET costs ~1.5 ms (a scope, two deadlines, seven callbacks); this
    costs a clock read per read.
    """
    timeouts = request.extensions.get("timeout", {})
    read = timeouts.get("read", None)
    seconds = head_deadline(read)
    deadline = time.monotonic() + seconds
    state = self._h11_state
    while True:
        try:
            event = state.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == _H11_HEAD_TOO_LONG:
                raise HeadTooLarge() from None
            raise httpcore.RemoteProtocolError(str(exc)) from exc
        if event is h11.NEED_DATA:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HeadTooSlow(seconds)
            short = read is None or left < read
            try:
                data = await self._network_stream.read(
                    self.READ_NUM_BYTES, timeout=left if short else read
                )
            except httpcore.ReadTimeout:
                if short:
                    raise HeadTooSlow(seconds) from None
                raise
            if data == b"" and state.their_state == h11.SEND_RESPONSE:
                # httpcore's words, which `client._unanswered` knows.
                raise httpcore.RemoteProtocolError(
                    "Server disconnected without sending a response."
                )
            state.receive_data(data)
        elif isinstance(event, h11.Response | h11.InformationalResponse):
            # h11 has parsed them all by now; the limit spares what follows (httpx's
            # headers, each lookup in which goes through every field).
            if len(event.headers) > MAX_HEAD_FIELDS:
                raise HeadTooManyFields()
            if isinstance(event, h11.Response) or event.status_code == 101:
                break
    headers = event.headers.raw_items()
    # The head as sent: `HTTP/1.1 200 OK` and its line break, a line per header
    # (`name: value`), the empty line.
    size = len(b"HTTP/ 200 \r\n\r\n") + len(event.http_version) + len(event.reason)
    if size + sum(len(name) + len(value) + 4 for name, value in headers) > MAX_HEAD:
        raise HeadTooLarge()
    trailing_data, _ = state.trailing_data
    return b"HTTP/" + event.http_version, event.status_code, event.reason, headers, trailing_data


# -- urllib3's blocking connections ----------------------------------------------------------


class HeadLate(TimeoutError):
    """The head of a blocking connection's answer came too slowly (`TimedResponse`); a
    socket timeout, as urllib3 takes it (its ReadTimeoutError is raised from this)."""

    def __init__(self, deadline: float) -> None:
        super().__init__(f"the status line and headers took over {deadline:g} s")
        self.deadline = deadline


class HeadHuge(http.client.HTTPException):
    """The head of a blocking connection's answer was over `MAX_HEAD` bytes; an answer
    http.client would not take, as urllib3 takes it (it raises ProtocolError with it)."""


class HeadCrowded(http.client.HTTPException):
    """The head of a blocking connection's answer had over `MAX_HEAD_FIELDS` header
    fields (`_HeadLines`)."""


class TimedResponse(http.client.HTTPResponse):
    """http.client's answer, its head (read in `begin`) held to its deadline, size and
    count of fields.

    The socket is read through `_HeadReader`, which, while the head comes, waits no
    longer than the deadline leaves and reads no more than `MAX_HEAD` bytes in all;
    http.client reads its lines through `_HeadLines`, which counts the fields.
    """

    def __init__(
        self,
        sock: socket.socket,
        debuglevel: int = 0,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(sock, debuglevel, method, url)
        self._sock = sock
        # `detach`: the socket's reader itself, unclosed (it holds the socket open).
        self._head = _HeadReader(self.fp.detach(), sock)
        self._lines = _HeadLines(self._head)
        self.fp = self._lines

    def begin(self) -> None:
        timeout = self._sock.gettimeout()  # urllib3 set the read timeout on it
        self._head.watch(timeout, head_deadline(timeout))
        try:
            super().begin()
        finally:
            self._lines.done()
            if self._head.done():
                with contextlib.suppress(OSError):  # closed already: nothing reads it
                    self._sock.settimeout(timeout)


class _HeadLines(io.BufferedReader):
    """The buffered reader http.client reads an answer through. Until the head has come
    (`done`), the header lines after each status line are counted, and given to
    http.client in one piece, then the empty line that ends them.

    http.client refuses a head of over 100 header lines (`_MAXHEADERS`): a global of the
    module, which every other user of it in the process reads too, and before Python
    3.15 (`max_response_headers`) the only way to set its limit. It joins the lines it
    counts and parses the whole (`parse_headers`), so lines given as one piece are parsed
    as they would have been. The piece stays within the line http.client takes
    (`_MAXLINE`, 64 KiB): `_HeadReader` reads no more than `MAX_HEAD` bytes of head, as
    many.
    """

    def __init__(self, raw: io.RawIOBase) -> None:
        super().__init__(raw)
        self._status_next = True  # the next line is a status line, not a header
        self._end: bytes | None = None  # the line that ends the fields, still to give

    def readline(self, size: int | None = -1, /) -> bytes:
        if self._end is not None:
            end, self._end = self._end, None
            self._status_next = True
            return end
        line = super().readline(size)
        if self._status_next:
            self._status_next = False
            return line
        lines: list[bytes] = []
        fields = 0
        while line not in _HEAD_ENDS:
            # A line that begins with a space or tab goes on the field before (h11
            # counts the two as one).
            if not line.startswith((b" ", b"\t")):
                fields += 1
                if fields > MAX_HEAD_FIELDS:
                    raise HeadCrowded(f"the headers are over the limit of {MAX_HEAD_FIELDS} fields")
            lines.append(line)
            line = super().readline(size)
        if not lines:
            self._status_next = True
            return line
        self._end = line
        return b"".join(lines)

    def done(self) -> None:
        """The head has come: lines (of a chunked body) are read as they are."""
        self.readline = super().readline  # type: ignore[method-assign]


# What http.client takes for the end of a head's fields (`_read_headers`).
_HEAD_ENDS = (b"\r\n", b"\n", b"")


class _HeadReader(io.RawIOBase):
    """A socket's reader (`socket.SocketIO`) as http.client reads through it, held to a
    deadline and a size while a head comes (`watch` to `done`); then the socket's own
    reader reads on its own, with nothing in between."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket) -> None:
        super().__init__()
        self._raw = raw
        self._sock = sock
        self._watching = False
        self._read_timeout: float | None = None
        self._deadline = 0.0  # monotonic
        self._seconds = 0.0
        self._left = 0  # bytes of head still allowed
        self._shortened = False  # the socket's timeout was set to what the deadline left

    def watch(self, read_timeout: float | None, seconds: float) -> None:
        self._watching = True
        self._read_timeout = read_timeout
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds
        self._left = MAX_HEAD

    def done(self) -> bool:
        """Stop watching; whether the socket's timeout was shortened (to be put back)."""
        self._watching = False
        # The body is read without this frame: the socket's reader is called directly.
        self.readinto = self._raw.readinto  # type: ignore[method-assign,assignment]
        return self._shortened

    def readinto(self, buffer: Any) -> int | None:
        if not self._watching:
            return self._raw.readinto(buffer)
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise HeadLate(self._seconds)
        if self._left <= 0:
            # A head of exactly MAX_HEAD bytes has ended by now: reading more is for
            # more head.
            raise HeadHuge(f"the status line and headers are over the limit of {MAX_HEAD} bytes")
        short = self._read_timeout is None or left < self._read_timeout
        if short:  # else the socket waits the read timeout, as urllib3 set it
            self._sock.settimeout(left)
            self._shortened = True
        try:
            # No more than the head may still have: a body that follows it is left for
            # later reads.
            count = self._raw.readinto(memoryview(buffer)[: self._left])
        except TimeoutError:
            if short:
                raise HeadLate(self._seconds) from None
            raise
        if count:
            self._left -= count
        return count

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        self._raw.close()
        super().close()
