"""Fake registries on real loopback sockets, for what a real registry will not do.

`serve(handler)` runs a small HTTP/1.1 server on 127.0.0.1 inside the caller's task,
with the framing under the test's control: a reply can lie about its length, be
chunked or close-delimited, be cut after N bytes of body, or stall after them with the
connection left open. `FakeRegistry` is a handler that speaks enough of the
distribution API (ping, manifests, blobs with Range, Basic and Bearer auth with its own
token endpoint) for a `RegistryClient` and lets a test replace any answer with
`on(method, path, responder)`.

Every request is recorded, so a test asserts on what the client really sent.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import inspect
import io
import json
import random
import re
import ssl
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio
from anyio.abc import ByteStream, SocketAttribute, TaskGroup
from anyio.streams.tls import TLSStream

from ferryd.distribution.context import DownloadDescriptor
from ferryd.distribution.progress import Message
from ferryd.oci.digest import Digest
from ferryd.oci.manifest import Descriptor
from ferryd.oci.mediatypes import OCI_LAYER_GZIP

from .digests import sha256

LOOPBACK = "127.0.0.1"
_SEND_PIECE = 64 * 1024
_MAX_HEAD = 64 * 1024


# -- the HTTP server ------------------------------------------------------------------


@dataclass
class Request:
    """One request as the server received it; header names are lower case."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query))


@dataclass
class Reply:
    """What to send back, and how to misbehave while sending it.

    `framing`: "length" (Content-Length, which `content_length` may override with a
    lie), "chunked", or "close" (no length: the body ends when the connection does).
    `cut_after`: send this many body bytes, wait `cut_delay`, close the connection.
    `stall_after`: send this many body bytes, then keep the connection open and silent
    until `release` is set (or the server stops).
    `hang_up`: close the connection without a word (a server whose idle timeout ran out
    as the request came in). `before`: bytes sent ahead of the answer (an informational
    answer); `raw`: bytes sent instead of an answer (one that is not HTTP), then close.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    framing: Literal["length", "chunked", "close"] = "length"
    content_length: int | None = None
    cut_after: int | None = None
    cut_delay: float = 0.05
    stall_after: int | None = None
    release: anyio.Event | None = None
    hang_up: bool = False
    before: bytes = b""
    raw: bytes | None = None


Handler = Callable[[Request], Awaitable[Reply]]


class _NotHTTP(Exception):
    """The peer sent something that is not an HTTP request (a TLS hello, say)."""


class _Recording:
    """Keeps every request it is given, for a test to assert on what was really sent."""

    requests: list[Request]

    def seen(self, method: str, path: str) -> list[Request]:
        """The requests with this method whose path matches the regular expression."""
        pattern = re.compile(path)
        return [r for r in self.requests if r.method == method and pattern.fullmatch(r.path)]


class FakeServer(_Recording):
    """A running server: its address and what it saw."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.port = 0
        self.requests: list[Request] = []
        self.connections = 0
        self.rejected = 0  # connections that did not speak HTTP (or failed TLS)

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}"

    async def connection(self, stream: ByteStream) -> None:
        self.connections += 1
        try:
            if self.ssl_context is not None:
                try:
                    stream = await TLSStream.wrap(
                        stream,
                        server_side=True,
                        ssl_context=self.ssl_context,
                        standard_compatible=False,
                    )
                except (ssl.SSLError, OSError, anyio.BrokenResourceError, anyio.EndOfStream):
                    self.rejected += 1
                    return
            reader = _Reader(stream)
            while True:
                try:
                    request = await reader.request()
                except _NotHTTP:
                    self.rejected += 1
                    return
                if request is None:
                    return
                self.requests.append(request)
                reply = await self.handler(request)
                if reply.hang_up:
                    return
                if not await _send_reply(stream, request, reply):
                    return
        except (
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            anyio.EndOfStream,
            ssl.SSLError,
            OSError,
        ):
            return  # the client went away: its business
        finally:
            await anyio.aclose_forcefully(stream)


class _Reader:
    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def _fill(self) -> bool:
        try:
            self._buffer += await self._stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        return True

    async def request(self) -> Request | None:
        while b"\r\n\r\n" not in self._buffer:
            if self._buffer and not self._buffer[:1].isalpha():
                raise _NotHTTP
            if len(self._buffer) > _MAX_HEAD or not await self._fill():
                return None
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _NotHTTP
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._chunked_body()
        else:
            body = await self._exactly(int(headers.get("content-length", "0")))
        if body is None:
            return None
        return Request(parts[0], parts[1], headers, body)

    async def _exactly(self, size: int) -> bytes | None:
        while len(self._buffer) < size:
            if not await self._fill():
                return None
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    async def _line(self) -> bytes | None:
        while b"\r\n" not in self._buffer:
            if not await self._fill():
                return None
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    async def _chunked_body(self) -> bytes | None:
        """A `Transfer-Encoding: chunked` body (an upload compressed on the way)."""
        body = bytearray()
        while (line := await self._line()) is not None:
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while line:  # trailers, up to the empty line
                    if (line := await self._line()) is None:
                        return None
                return bytes(body)
            chunk = await self._exactly(size + 2)  # the data and its CRLF
            if chunk is None:
                return None
            body += chunk[:size]
        return None


async def _send_reply(stream: ByteStream, request: Request, reply: Reply) -> bool:
    """Send `reply`; False when the connection must close afterwards."""
    if reply.raw is not None:
        await stream.send(reply.raw)
        return False
    if reply.before:
        await stream.send(reply.before)
    headers = dict(reply.headers)
    body = reply.body
    close = reply.framing == "close" or reply.cut_after is not None
    close = close or request.headers.get("connection", "").lower() == "close"
    if reply.framing == "length":
        length = reply.content_length if reply.content_length is not None else len(body)
        headers.setdefault("Content-Length", str(length))
    elif reply.framing == "chunked":
        headers["Transfer-Encoding"] = "chunked"
    if close:
        headers["Connection"] = "close"
    reason = (
        HTTPStatus(reply.status).phrase if reply.status in HTTPStatus._value2member_map_ else ""
    )
    head = f"HTTP/1.1 {reply.status} {reason}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()
    )
    await stream.send(head.encode("latin-1") + b"\r\n")
    if request.method == "HEAD":
        return not close
    limit = reply.cut_after if reply.cut_after is not None else reply.stall_after
    partial = body[:limit] if limit is not None else body
    for start in range(0, len(partial), _SEND_PIECE):
        piece = partial[start : start + _SEND_PIECE]
        if reply.framing == "chunked":
            piece = b"%x\r\n%s\r\n" % (len(piece), piece)
        await stream.send(piece)
    if reply.stall_after is not None:
        if reply.release is None:
            await anyio.sleep_forever()
        else:
            await reply.release.wait()
        return False
    if reply.cut_after is not None:
        await anyio.sleep(reply.cut_delay)
        return False
    if reply.framing == "chunked":
        await stream.send(b"0\r\n\r\n")
    return not close


@asynccontextmanager
async def background() -> AsyncIterator[TaskGroup]:
    """A task group whose body's own error comes out as itself, not in a group."""
    body_error: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            try:
                yield tg
            except BaseException as exc:
                body_error = exc
                raise
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if body_error is not None and list(group.exceptions) == [body_error]:
            raise body_error from None
        raise


@asynccontextmanager
async def serve(
    handler: Handler, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[FakeServer]:
    """Serve `handler` on 127.0.0.1 (a free port) until the block ends."""
    server = FakeServer(handler, ssl_context)
    listener = await anyio.create_tcp_listener(local_host=LOOPBACK, local_port=0)
    async with listener, background() as tg:
        server.port = listener.extra(SocketAttribute.local_port)
        tg.start_soon(listener.serve, server.connection)
        yield server


@dataclass
class ConnectProxy:
    """An HTTP proxy that only tunnels (`CONNECT host:port`), as corporate proxies do for
    HTTPS: its address, and the targets it was asked for."""

    port: int = 0
    tunnels: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def connection(self, client: ByteStream) -> None:
        async with client:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await client.receive()
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method != "CONNECT":
                await client.send(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                return
            self.tunnels.append(target)
            host, _, port = target.rpartition(":")
            async with await anyio.connect_tcp(host, int(port)) as upstream:
                await client.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_pipe, client, upstream)
                    await _pipe(upstream, client)
                    tg.cancel_scope.cancel()


async def _pipe(source: ByteStream, sink: ByteStream) -> None:
    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        async for data in source:
            await sink.send(data)


@asynccontextmanager
async def serve_connect_proxy() -> AsyncIterator[ConnectProxy]:
    """A tunnelling proxy on 127.0.0.1 (a free port) until the block ends."""
    proxy = ConnectProxy()
    listener = await anyio.create_tcp_listener(local_host=LOOPBACK, local_port=0)
    async with listener, background() as tg:
        proxy.port = listener.extra(SocketAttribute.local_port)
        tg.start_soon(listener.serve, proxy.connection)
        yield proxy


# -- a registry -----------------------------------------------------------------------

_MANIFEST = re.compile(r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)")
_BLOB = re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)")
_RANGE = re.compile(r"bytes=(\d+)-$")

Responder = Callable[[Request], Awaitable[Reply | None] | Reply | None]


def registry_error(status: int, code: str, message: str) -> Reply:
    """An error answer in the distribution spec's JSON shape."""
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]})
    return Reply(status, {"Content-Type": "application/json"}, body.encode())


@dataclass
class _Override:
    method: str
    path: re.Pattern[str]
    responder: Responder
    times: int | None


class FakeRegistry(_Recording):
    """Enough of a registry for a client, with switchable auth and scripted faults.

    `auth`: "none" (ping answers 200), "basic" (`username`/`password`), or "bearer"
    (a token endpoint at `/token` on the same server, which checks `username` and
    `password` when the client sends any and refuses everything with `refuse_tokens`).
    """

    def __init__(
        self,
        *,
        auth: Literal["none", "basic", "bearer"] = "none",
        username: str = "ferry",
        password: str = "s3cret",
        service: str = "fake.registry",
    ) -> None:
        self.auth = auth
        self.username = username
        self.password = password
        self.service = service
        self.base_url = ""  # set by serve_registry
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[str, bytes]] = {}  # tag or digest
        self.tokens: dict[str, str] = {}  # token -> scope
        self.refuse_tokens = False
        self.ignore_range = False
        self.requests: list[Request] = []
        self._overrides: list[_Override] = []
        self._issued = 0

    # -- content and scripting

    def add_blob(self, data: bytes) -> Digest:
        digest = sha256(data)
        self.blobs[digest] = data
        return digest

    def add_manifest(self, raw: bytes, media_type: str, tag: str | None = None) -> Digest:
        digest = sha256(raw)
        self.manifests[digest] = (media_type, raw)
        if tag is not None:
            self.manifests[tag] = (media_type, raw)
        return digest

    def on(
        self,
        method: str,
        path: str,
        responder: Reply | Responder,
        *,
        times: int | None = None,
    ) -> None:
        """Answer `method path` (a regular expression) with `responder` instead.

        A responder (plain or async) returning None falls through to the normal answer;
        `times` limits how many requests the override answers (None: all of them).
        """
        answer = responder if callable(responder) else (lambda _request: responder)
        self._overrides.append(_Override(method, re.compile(path), answer, times))

    def revoke_tokens(self) -> None:
        """Every token issued so far stops working (as when they expire early)."""
        self.tokens.clear()

    @property
    def token_requests(self) -> list[Request]:
        return self.seen("GET", "/token")

    # -- serving

    async def __call__(self, request: Request) -> Reply:
        self.requests.append(request)
        for override in self._overrides:
            if override.times == 0 or override.method != request.method:
                continue
            if not override.path.fullmatch(request.path):
                continue
            reply = override.responder(request)
            if inspect.isawaitable(reply):
                reply = await reply
            if reply is not None:
                if override.times is not None:
                    override.times -= 1
                return reply
        return self.answer(request)

    def answer(self, request: Request) -> Reply:
        """The normal answer, as a well-behaved registry would give it."""
        if request.path == "/token":
            return self._token(request)
        if not request.path.startswith("/v2/"):
            return Reply(404, body=b"not found")
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        if request.path == "/v2/":
            return Reply(200, {"Content-Type": "application/json"}, b"{}")
        if match := _MANIFEST.fullmatch(request.path):
            return self._manifest(match["reference"])
        if match := _BLOB.fullmatch(request.path):
            return self.blob_reply(request, match["digest"])
        return registry_error(404, "UNSUPPORTED", "not in this fake")

    def blob_reply(self, request: Request, digest: str, data: bytes | None = None) -> Reply:
        """A blob (or `data` served as it), honouring `Range: bytes=N-`."""
        if data is None:
            if digest not in self.blobs:
                return registry_error(404, "BLOB_UNKNOWN", "blob unknown to registry")
            data = self.blobs[digest]
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
        wanted = _RANGE.match(request.headers.get("range", ""))
        if wanted is None or self.ignore_range:
            return Reply(200, headers, data)
        start = int(wanted[1])
        if start >= len(data):
            return Reply(416, {"Content-Range": f"bytes */{len(data)}"})
        headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        return Reply(206, headers, data[start:])

    def _manifest(self, reference: str) -> Reply:
        if reference not in self.manifests:
            return registry_error(404, "MANIFEST_UNKNOWN", f"manifest unknown: {reference}")
        media_type, raw = self.manifests[reference]
        return Reply(200, {"Content-Type": media_type, "Docker-Content-Digest": sha256(raw)}, raw)

    def _scope_of(self, request: Request) -> str:
        match = _MANIFEST.fullmatch(request.path) or _BLOB.fullmatch(request.path)
        return f"repository:{match['name']}:pull" if match else ""

    def _check_auth(self, request: Request) -> Reply | None:
        given = request.headers.get("authorization", "")
        if self.auth == "basic":
            wanted = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            if given == f"Basic {wanted}":
                return None
            return self._unauthorized('Basic realm="fake registry"')
        if self.auth == "bearer":
            token = given.removeprefix("Bearer ")
            if given.startswith("Bearer ") and token in self.tokens:
                return None
            challenge = f'Bearer realm="{self.base_url}/token",service="{self.service}"'
            scope = self._scope_of(request)
            if scope:
                challenge += f',scope="{scope}"'
            if given:
                challenge += ',error="invalid_token"'
            return self._unauthorized(challenge)
        return None

    @staticmethod
    def _unauthorized(challenge: str) -> Reply:
        reply = registry_error(401, "UNAUTHORIZED", "authentication required")
        reply.headers["WWW-Authenticate"] = challenge
        return reply

    def _token(self, request: Request) -> Reply:
        given = request.headers.get("authorization", "")
        wanted = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if self.refuse_tokens or (given and given != f"Basic {wanted}"):
            return Reply(401, {"Content-Type": "application/json"}, b'{"details":"no"}')
        self._issued += 1
        token = f"token-{self._issued}"
        self.tokens[token] = request.query.get("scope", "")
        body = json.dumps({"token": token, "expires_in": 300})
        return Reply(200, {"Content-Type": "application/json"}, body.encode())


@asynccontextmanager
async def serve_registry(
    registry: FakeRegistry, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[FakeServer]:
    async with serve(registry, ssl_context=ssl_context) as server:
        registry.base_url = server.url
        yield server


# -- content --------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeLayer:
    """A gzip'd tar layer: the blob as a registry serves it, and its DiffID."""

    blob: bytes
    digest: Digest
    diff_id: Digest

    @property
    def size(self) -> int:
        return len(self.blob)

    def descriptor(
        self, registry: str, repository: str, *, size: int | None = None
    ) -> DownloadDescriptor:
        return DownloadDescriptor(
            Descriptor(OCI_LAYER_GZIP, self.digest, self.size if size is None else size),
            self.diff_id,
            registry,
            repository,
        )


def make_layer(size: int, seed: int = 0) -> FakeLayer:
    """A layer whose one file holds `size` random bytes (the blob is a little larger)."""
    content = random.Random(seed).randbytes(size)
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"file-{seed}")
        info.size = size
        info.mtime = 1_700_000_000
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = tar_buffer.getvalue()
    blob = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
    return FakeLayer(blob, sha256(blob), sha256(tar_bytes))


@dataclass
class Recorder:
    """A progress output that keeps every message."""

    messages: list[Message] = field(default_factory=list)

    def write(self, message: Message) -> None:
        self.messages.append(message)

    def statuses(self) -> list[str]:
        return [m.status for m in self.messages]


# -- uploads ------------------------------------------------------------------------

_UPLOADS = re.compile(r"/v2/(?P<name>.+)/blobs/uploads/")
_UPLOAD = re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<session>[^/]+)")


@dataclass
class UploadSession:
    repository: str
    state: int = 0  # bumped by every PATCH, as a registry's `_state` token changes
    data: bytearray = field(default_factory=bytearray)

    @property
    def token(self) -> str:
        return f"st{self.state}+/=="  # characters a query must encode


class UploadRegistry(FakeRegistry):
    """A FakeRegistry that takes pushes: blobs per repository, upload sessions
    (POST, PATCH, PUT ?digest=, with a `_state` token that must come back), cross-
    repository mounts (refused with a new session when `allow_mounts` is False) and
    manifest PUTs. Locations are absolute URLs, as distribution sends them.
    """

    def __init__(self, *, auth: Literal["none", "basic", "bearer"] = "none") -> None:
        super().__init__(auth=auth)
        self.repositories: dict[str, dict[str, bytes]] = {}
        self.sessions: dict[str, UploadSession] = {}
        self.allow_mounts = True
        self._sessions_opened = 0

    def add_repo_blob(self, repository: str, data: bytes) -> Digest:
        digest = self.add_blob(data)
        self.repositories.setdefault(repository, {})[digest] = data
        return digest

    def repo_blobs(self, repository: str) -> dict[str, bytes]:
        return self.repositories.get(repository, {})

    def answer(self, request: Request) -> Reply:
        if not request.path.startswith("/v2/") or request.path == "/v2/":
            return super().answer(request)
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        if request.method == "POST" and (match := _UPLOADS.fullmatch(request.path)):
            return self._start_upload(request, match["name"])
        if request.method in ("PATCH", "PUT") and (match := _UPLOAD.fullmatch(request.path)):
            return self._continue_upload(request, match["name"], match["session"])
        if request.method == "PUT" and (match := _MANIFEST.fullmatch(request.path)):
            return self._put_manifest(request, match["name"], match["reference"])
        if request.method in ("GET", "HEAD") and (match := _BLOB.fullmatch(request.path)):
            data = self.repo_blobs(match["name"]).get(match["digest"])
            if data is None:
                return registry_error(404, "BLOB_UNKNOWN", "blob unknown to registry")
            return self.blob_reply(request, match["digest"], data)
        return super().answer(request)

    def _session_reply(self, status: int, name: str, session_id: str) -> Reply:
        session = self.sessions[session_id]
        query = urlencode({"_state": session.token})
        location = f"{self.base_url}/v2/{name}/blobs/uploads/{session_id}?{query}"
        end = max(len(session.data) - 1, 0)
        headers = {"Location": location, "Docker-Upload-UUID": session_id, "Range": f"0-{end}"}
        return Reply(status, headers)

    def _start_upload(self, request: Request, name: str) -> Reply:
        digest, source = request.query.get("mount"), request.query.get("from")
        if digest and source and self.allow_mounts and digest in self.repo_blobs(source):
            data = self.repo_blobs(source)[digest]
            self.repositories.setdefault(name, {})[digest] = data
            headers = {
                "Location": f"{self.base_url}/v2/{name}/blobs/{digest}",
                "Docker-Content-Digest": digest,
            }
            return Reply(201, headers)
        self._sessions_opened += 1
        session_id = f"session-{self._sessions_opened}"
        self.sessions[session_id] = UploadSession(name)
        return self._session_reply(202, name, session_id)

    def _continue_upload(self, request: Request, name: str, session_id: str) -> Reply:
        session = self.sessions.get(session_id)
        if session is None or session.repository != name:
            return registry_error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown")
        if request.query.get("_state") != session.token:
            return registry_error(400, "BLOB_UPLOAD_INVALID", "invalid secret")
        session.data += request.body
        if request.method == "PATCH":
            session.state += 1
            return self._session_reply(202, name, session_id)
        digest = request.query.get("digest", "")
        if sha256(bytes(session.data)) != digest:
            return registry_error(400, "DIGEST_INVALID", "provided digest did not match")
        del self.sessions[session_id]
        self.add_repo_blob(name, bytes(session.data))
        headers = {
            "Location": f"{self.base_url}/v2/{name}/blobs/{digest}",
            "Docker-Content-Digest": digest,
        }
        return Reply(201, headers)

    def _put_manifest(self, request: Request, name: str, reference: str) -> Reply:
        media_type = request.headers.get("content-type", "")
        digest = self.add_manifest(request.body, media_type, reference)
        headers = {
            "Location": f"{self.base_url}/v2/{name}/manifests/{digest}",
            "Docker-Content-Digest": digest,
        }
        return Reply(201, headers)
