"""Reading what a registry or token service answers, with memory bounded as bytes arrive.

A registry's body is read only up to a limit, and the limit counts the bytes *after*
any `Content-Encoding` is undone: a 2 KB manifest sent `gzip, gzip` can decode to
gigabytes, so decoding happens here, piece by bounded piece, and stops at the limit.
httpx's own decoding would inflate each received chunk whole. Blobs are never decoded:
a digest covers the bytes as sent.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import anyio
import httpx

from ferryd.codec import Inflater, inflater
from ferryd.errors import (
    ContentError,
    RegistryProtocolError,
    TooLargeError,
    TransientRegistryError,
)
from ferryd.oci.mediatypes import Compression
from ferryd.registry.wire import read_timeout
from ferryd.untrusted import decimal

MAX_ERROR_BODY = 64 * 1024
"""An error answer is read this far for its message; the rest is not worth memory."""

BODY_DEADLINE_READS = 10
"""A body read whole (a manifest, a tag page, a token, an image config, an error's
message) must have come within this many read timeouts (300 s with the default
`read_timeout` of 30 s). The read timeout bounds each wait only: a registry sending a
byte just inside it kept a 4 MiB manifest coming for weeks. Ten of them still let a 4 MiB
manifest come at 14 KB/s, and a user who raised read_timeout raises this with it."""

# The read timeout assumed for an answer that does not say it ran with one (built here
# from bytes already read, say): the connector's default.

# An answer closed before its body is read loses its connection (httpcore keeps one only
# once the answer has ended), and the next request pays a new one: a TCP and TLS
# handshake, two or three round trips to a registry across a network. A push's
# POST, PATCH and PUT each came back with an empty body that nobody read, as did every
# redirect (Docker Hub answers each blob GET with one) and every 401: each request of a
# push went over a connection of its own. Go's client keeps them, as dockerd does.
# A body this short is read before the answer is closed, if it comes within the time.
_SHORT_BODY = 64 * 1024
_SHORT_BODY_SECONDS = 1.0

_DECODERS = {"gzip": Compression.GZIP, "x-gzip": Compression.GZIP, "zstd": Compression.ZSTD}


async def read_body(
    response: httpx.Response,
    limit: int,
    what: str,
    *,
    decode: bool = True,
    truncate: bool = False,
) -> bytes:
    """The body of a streamed `response`, at most `limit` bytes once decoded.

    Over the limit, decoded or as sent: TooLargeError naming `what` and the limit, or,
    with `truncate`, what was read up to there. `decode=False` keeps the bytes as sent
    (blobs). Not whole by its deadline (`body_deadline`): TransientRegistryError, or,
    with `truncate`, what came by then.
    """
    length = content_length(response.headers)
    if not truncate and not _encodings(response) and length is not None and length > limit:
        raise TooLargeError(f"{what} is {length} bytes, over the limit of {limit}")
    decoders = _decoders(response, what) if decode else []
    body = bytearray()
    ended = False
    deadline = body_deadline(response)
    with anyio.move_on_after(deadline) as scope:
        ended = await _read_into(body, response, limit, what, decoders, truncate)
    if scope.cancelled_caught:
        if truncate:
            return bytes(body)  # an error answer: its status is the error, not its slowness
        raise _too_slow(response, what, deadline)
    if ended:
        try:
            for decoder in decoders:
                decoder.finish()
        except ContentError as exc:
            if not truncate:
                raise _undecodable(response, what, exc) from None
    return bytes(body)


async def _read_into(
    body: bytearray,
    response: httpx.Response,
    limit: int,
    what: str,
    decoders: list[Inflater],
    truncate: bool,
) -> bool:
    """Read `response` into `body` (see `read_body`): True when the body ended, False
    when `truncate` stopped it at the limit."""
    sent = 0
    async for chunk in response.aiter_raw():
        for piece in _through(decoders, chunk, what):
            body += piece
            if len(body) > limit:
                if truncate:
                    del body[limit:]
                    return False
                raise TooLargeError(f"{what} is over the limit of {limit} bytes")
        # The bytes as sent count too: empty gzip members, endlessly, decode to nothing.
        sent += len(chunk)
        if sent > limit:
            if truncate:
                return False
            raise TooLargeError(
                f"{what} is over the limit of {limit} bytes as sent "
                f"(Content-Encoding {', '.join(_encodings(response))})"
            )
    return True


def body_deadline(response: httpx.Response) -> float:
    """Seconds the body of `response` may take to come whole: `BODY_DEADLINE_READS`
    times the read timeout it was requested with (httpx keeps it on the request)."""
    try:
        timeouts = response.request.extensions.get("timeout", {})
    except RuntimeError:  # a response built without a request
        timeouts = {}
    read = timeouts.get("read") if isinstance(timeouts, dict) else None
    return BODY_DEADLINE_READS * read_timeout(read)


def _too_slow(response: httpx.Response, what: str, deadline: float) -> TransientRegistryError:
    """The error for a body still coming at its deadline: a timeout, as a stalled read's
    is (retryable: the next answer may come at a sane pace)."""
    try:
        sender = response.request.url.host
    except RuntimeError:  # a response built without a request
        sender = "the registry"
    return TransientRegistryError(
        f"timed out: {sender} took over {deadline:g} s to send {what} "
        f"({BODY_DEADLINE_READS} times read_timeout): it sends too slowly, or never ends it"
    )


async def read_error_body(response: httpx.Response, what: str) -> bytes:
    """What an error answer says, as far as it is worth reading; never raises on the body."""
    try:
        return await read_body(response, MAX_ERROR_BODY, what, truncate=True)
    except RegistryProtocolError:
        return b""


async def release(response: httpx.Response) -> None:
    """Close `response`, reading first what is left of a short body, so that its
    connection is kept for the next request; a long or endless body is not read past
    `_SHORT_BODY` (its connection is closed), nor one that takes over a second to come."""
    try:
        if not response.is_closed and not response.is_stream_consumed and _short(response):
            read = 0
            with anyio.move_on_after(_SHORT_BODY_SECONDS):
                # Counted too: a Content-Length can be overruled (chunked framing wins).
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read > _SHORT_BODY:
                        break
    except httpx.HTTPError:
        pass  # the connection is closed below, as it would have been
    finally:
        await response.aclose()


def _short(response: httpx.Response) -> bool:
    """Whether the body is known to be short: none (HEAD), or a small Content-Length."""
    if response.request.method == "HEAD":
        return True
    length = content_length(response.headers)
    return length is not None and length <= _SHORT_BODY


def _encodings(response: httpx.Response) -> list[str]:
    """The Content-Encoding codings in the order they were applied; identity dropped."""
    header = ",".join(response.headers.get_list("content-encoding"))
    codings = [coding.strip().lower() for coding in header.split(",")]
    return [coding for coding in codings if coding and coding != "identity"]


def _decoders(response: httpx.Response, what: str) -> list[Inflater]:
    """One decoder per coding, outermost (last applied) first."""
    decoders = []
    for coding in reversed(_encodings(response)):
        compression = _DECODERS.get(coding)
        if compression is None:
            raise RegistryProtocolError(
                f"{what}: the answer has Content-Encoding {coding!r}, which ferryd does not "
                "decode (it asks for identity)"
            )
        decoders.append(inflater(compression, "the answer"))
    return decoders


def _through(decoders: list[Inflater], chunk: bytes, what: str) -> Iterator[bytes]:
    """`chunk` through every decoder, lazily: no stage holds more than one piece."""
    pieces: Iterator[bytes] = iter((chunk,))
    for decoder in decoders:
        pieces = _feed(decoder, pieces)
    try:
        yield from pieces
    except ContentError as exc:
        raise RegistryProtocolError(f"{what}: {exc}") from None


def _feed(decoder: Inflater, pieces: Iterator[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        yield from decoder.feed(piece)


def _undecodable(response: httpx.Response, what: str, exc: ContentError) -> RegistryProtocolError:
    codings = ", ".join(_encodings(response))
    return RegistryProtocolError(f"{what} (Content-Encoding {codings}): {exc}")


def content_length(headers: Mapping[str, str]) -> int | None:
    """An answer's Content-Length, when it gives a valid one."""
    value = headers.get("content-length")
    return decimal(value) if value else None
