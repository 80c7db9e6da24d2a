"""One repository on one registry: manifests and blobs over the distribution API."""

from __future__ import annotations

import email.utils
import enum
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx
import structlog

from ferryd.errors import (
    AccessDeniedError,
    AuthenticationError,
    DigestMismatchError,
    FerrydError,
    InvalidDigestError,
    NotFoundError,
    RangeNotSatisfiableError,
    RegistryError,
    RegistryProtocolError,
    RegistryUnreachableError,
    TooLargeError,
    TooManyRequestsError,
    TransientRegistryError,
)
from ferryd.oci.digest import Digest, new_hasher, parse_digest, sha256_digest
from ferryd.oci.manifest import MAX_MANIFEST_SIZE, FetchedManifest, media_type_of
from ferryd.oci.mediatypes import ACCEPT
from ferryd.registry import requestlog
from ferryd.registry.auth import Authenticator, parse_challenge, response_refusal
from ferryd.registry.blocking import REDIRECT_STATUSES, BlockingConnections, Kept
from ferryd.registry.bodies import content_length, read_body, read_error_body, release
from ferryd.registry.endpoints import Endpoint
from ferryd.registry.heads import head_error
from ferryd.registry.wire import check_port
from ferryd.untrusted import decimal, loads

MAX_REDIRECTS = 10
# What a request's answer must be, unless it says otherwise (`_stream`).
_SUCCESS = range(200, 300)
# Ask for the bytes as stored: a digest covers them, not a proxy's re-encoding of them.
_IDENTITY = {"Accept-Encoding": "identity"}
_CONTENT_RANGE = re.compile(r"bytes ([0-9]+)-([0-9]+)/([0-9]+|\*)")

log = structlog.get_logger("ferryd.registry")

Body = bytes | Callable[[], AsyncIterator[bytes]]
"""A request body: bytes, or a function that opens a fresh stream of them."""


@dataclass(frozen=True, slots=True)
class BlobResponse:
    """An open blob download: `start` is where its bytes begin (0 when Range was ignored).

    `total` is the whole blob's size when the registry said it, else None.
    """

    response: httpx.Response
    start: int
    total: int | None
    endpoint: Endpoint | None = None
    what: str = "the blob"

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives. A cut or stalled connection raises a retryable
        RegistryError here, while the caller still holds what came before it.
        """
        try:
            # Raw: the bytes are the blob; a Content-Encoding would only mislead us.
            async for chunk in self.response.aiter_raw():
                yield chunk
        except httpx.TransportError as exc:
            if self.endpoint is None:
                raise TransientRegistryError(f"connection failed: {exc}") from None
            raise transport_error(exc, self.endpoint, self.what) from None


@dataclass(frozen=True, slots=True)
class ReadBlob:
    """A blob answer read whole already (`blocking`): its bytes, and the failure that cut
    them short, raised after them as a streamed answer's would be."""

    start: int
    total: int | None
    body: bytes
    cut: FerrydError | None = None
    kept: Kept | None = None  # what `open_blob`'s `keep` made of it, in the read's call
    streamed: bool = False  # `open_blob`'s `into` took the body, as it was read

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.body:
            yield self.body
        if self.cut is not None:
            raise self.cut


class _Unread(enum.Enum):
    """Why a blob was not read whole (`RegistryClient._read_whole`)."""

    NOT_HERE = "the async client reads it"
    LOGIN_RENEWED = "its 401 renewed the login: the async client's request is the retry"


OpenBlob = BlobResponse | ReadBlob
"""A blob answer: streamed as it arrives, or read whole in a worker thread."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where a client's requests go: an endpoint, its pooled HTTP client, the login
    there, and the blocking connections small blobs are read over (none: not here)."""

    endpoint: Endpoint
    http: httpx.AsyncClient
    auth: Authenticator
    blocking: BlockingConnections | None = None


Attempt = tuple[httpx.Response, bool]
"""An answer, and whether to send the request again (its 401 taught the login something)."""

Chooser = Callable[[Callable[[Route], Awaitable[Attempt]]], Awaitable[tuple[Route, Attempt | None]]]
"""Tries a client's first request on the registry's endpoints (`Connector._choose`);
no attempt when another request chose the route meanwhile."""


class RegistryClient:
    """Requests against one repository, with auth, redirects and error mapping.

    With `choose`, the endpoint is not known yet: the first request finds it, and
    `endpoint` is only the first one to be tried until then.
    """

    def __init__(
        self,
        route: Route,
        repository: str,
        *,
        actions: str = "pull",
        meta_headers: Mapping[str, str] | None = None,
        choose: Chooser | None = None,
    ) -> None:
        self.repository = repository
        self._route = route
        self._choose = choose
        self._scope = f"repository:{repository}:{actions}"
        self._meta_headers = dict(meta_headers or {})

    @property
    def endpoint(self) -> Endpoint:
        return self._route.endpoint

    def _url(self, path: str) -> str:
        return f"{self.endpoint.base_url}/v2/{self.repository}/{path}"

    async def get_manifest(self, reference: str) -> FetchedManifest:
        """Fetch a manifest or index by tag or digest; its digest is checked before return.

        By digest: the content must hash to it. By tag: the registry's
        `Docker-Content-Digest`, when sent, must match the content.
        """
        what = f"manifest for {self.endpoint.domain}/{self.repository}:{reference}".replace(
            ":sha256:", "@sha256:"
        )
        async with self._stream(
            "GET", self._url(f"manifests/{reference}"), what, {"Accept": ", ".join(ACCEPT)}
        ) as response:
            raw = await read_body(response, MAX_MANIFEST_SIZE, what)
            content_type = response.headers.get("content-type")
            header_digest = response.headers.get("docker-content-digest")
        media_type = media_type_of(content_type, raw)
        # A tag never holds ":", a digest always does (of whatever algorithm).
        if ":" in reference:
            expected = reference
        else:
            expected = header_digest
            if expected is not None:
                try:
                    parse_digest(expected)
                except InvalidDigestError as exc:
                    raise RegistryProtocolError(
                        f"{what}: the registry sent a malformed Docker-Content-Digest: {exc}"
                    ) from None
        digest = _digest_of(raw, expected, what)
        return FetchedManifest(media_type, digest, raw)

    async def list_tags(self) -> list[str]:
        """Every tag of the repository, page after page (`Link: <…>; rel="next"`), up to
        `MAX_TAGS` tags in `MAX_TAG_LIST` bytes of pages; a next page already read is a
        loop, refused."""
        what = f"tags of {self.endpoint.domain}/{self.repository}"
        url = self._url("tags/list")
        tags: list[str] = []
        read: set[str] = set()
        size = 0
        for _ in range(_MAX_TAG_PAGES):
            async with self._stream("GET", url, what) as response:
                raw = await read_body(response, MAX_TAG_PAGE, what)
                link = response.headers.get("link")
            # Where it was read too: the first request may have moved to another endpoint.
            read.update((url, str(response.url)))
            size += len(raw)
            tags += _tag_page(raw, what)
            _check_tag_list(len(tags), size, what)
            following = _next_page(link, self.endpoint, what)
            if following is None:
                return tags
            if following in read:
                raise RegistryProtocolError(
                    f"{what}: the registry's next page is one already read ({following}): "
                    "its tag list loops"
                )
            url = following
        raise RegistryProtocolError(f"{what}: more than {_MAX_TAG_PAGES} pages")

    async def get_blob(self, digest: Digest, limit: int, what: str) -> bytes:
        """A small blob (an image config) read whole, as sent, and verified."""
        async with self._stream("GET", self._url(f"blobs/{digest}"), what) as response:
            raw = await read_body(response, limit, what, decode=False)
        _digest_of(raw, digest, what)
        return raw

    @asynccontextmanager
    async def open_blob(
        self,
        digest: Digest,
        offset: int = 0,
        *,
        whole: int | None = None,
        keep: Callable[[bytes], object] | None = None,
        into: Callable[[bytes], None] | None = None,
    ) -> AsyncIterator[OpenBlob]:
        """Stream a blob from `offset`; a registry that ignores Range restarts at 0.

        `whole`: the size of a blob wanted from its first byte, which is then read in a
        worker thread (`blocking`) where this route allows it (`reads_in_worker`):
        whole, or with `into` handed to `into` ~1 MiB at a time as it is read
        (`ReadBlob.streamed`; what `into` raises is raised here). `keep`: called in
        that worker call with a body of `whole` bytes (`ReadBlob.kept`).
        """
        what = f"blob {digest}"
        renewed = False
        if whole is not None and offset == 0:
            read = await self._read_whole(digest, whole, what, keep, into)
            if isinstance(read, ReadBlob):
                yield read
                return
            renewed = read is _Unread.LOGIN_RENEWED
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        async with self._stream(
            "GET", self._url(f"blobs/{digest}"), what, headers, renewed=renewed
        ) as response:
            start, total = 0, content_length(response.headers)
            if response.status_code == 206:
                start, total = _parse_content_range(response.headers, offset, what)
            yield BlobResponse(response, start, total, self.endpoint, what)

    async def open_connections(self, count: int) -> None:
        """Have `count` connections open for the small blobs to be read whole, where
        this route reads them so (`blocking`)."""
        blocking = self._reading_whole()
        if blocking is not None:
            await blocking.open(count)

    def reads_in_worker(self) -> bool:
        """Whether `open_blob(whole=…)` reads a blob in a worker thread here: not through a
        proxy, nor from an endpoint that redirects blob GETs (`_reading_whole`)."""
        return self._reading_whole() is not None

    def _reading_whole(self) -> BlockingConnections | None:
        """Where small blobs are read whole; None where the async client reads them: no
        blocking connections on this route (a proxy), no endpoint chosen yet, or an
        endpoint that redirects blob GETs."""
        blocking = self._route.blocking
        if blocking is None or blocking.redirects or self._choose is not None:
            return None
        return blocking

    async def _read_whole(
        self,
        digest: Digest,
        size: int,
        what: str,
        keep: Callable[[bytes], object] | None,
        into: Callable[[bytes], None] | None = None,
    ) -> ReadBlob | _Unread:
        """The blob's answer, read in a worker thread; else why the async client must ask
        for it: nothing read here (`_reading_whole`; a redirect, whose endpoint's blobs
        go the async way from now on; an informational answer), or a 401 that renewed
        the login (the async client's request is the one retry it has)."""
        route = self._route
        blocking = self._reading_whole()
        if blocking is None:
            return _Unread.NOT_HERE
        url = self._url(f"blobs/{digest}")
        auth = await route.auth.headers(self._scope)
        try:
            answer = await blocking.get(
                url, {**self._meta_headers, **_IDENTITY, **auth}, size, keep, into
            )
        except httpx.TransportError as exc:
            raise transport_error(exc, route.endpoint, f"the answer to {what}") from None
        status, headers = answer.status, answer.headers
        target = urlsplit(url)
        requestlog.answered("GET", target.netloc, target.path, status, headers, answer.seconds)
        if status in REDIRECT_STATUSES and headers.get("location"):
            blocking.redirects = True
            return _Unread.NOT_HERE
        if status < 200 or (into is not None and not answer.streamed and status < 400):
            # (Into a taker, a 2xx or 3xx other than the blob or a redirect, left unread:
            # a 206 to no Range, say. The async client sorts it out.)
            return _Unread.NOT_HERE
        if status == 401:
            challenge = parse_challenge(headers.get("www-authenticate"))
            if route.auth.reject(self._scope, challenge, auth.get("Authorization")):
                return _Unread.LOGIN_RENEWED
        if status >= 400:
            response = httpx.Response(
                status,
                headers=_raw_headers(headers),
                stream=httpx.ByteStream(answer.body),  # read as it would be streamed
                request=httpx.Request("GET", url),
            )
            body = await read_error_body(response, what)
            raise error_for(response, body, what, self.endpoint.domain)
        start, total = 0, content_length(headers)
        if status == 206:
            start, total = _parse_content_range(headers, 0, what)
        cut = transport_error(answer.cut, route.endpoint, what) if answer.cut else None
        return ReadBlob(start, total, answer.body, cut, answer.kept, answer.streamed)

    async def blob_size(self, digest: Digest) -> int | None:
        """HEAD a blob: its size when the repository has it, None when not."""
        what = f"blob {digest}"
        response = await self._send("HEAD", self._url(f"blobs/{digest}"), what, {})
        try:
            body = await read_error_body(response, what) if response.status_code >= 400 else b""
        finally:
            await release(response)
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise error_for(response, body, what, self.endpoint.domain)
        # A 3xx that is no redirect (it has no Location) says nothing about the blob.
        _check_status(response.status_code, _SUCCESS, f"HEAD of {what}", self.endpoint.domain)
        length = content_length(response.headers)
        if length is None:
            # The manifest must give every layer's size: an unknown one is no answer.
            raise RegistryProtocolError(f"{what}: HEAD answered without a Content-Length")
        return length

    async def mount_blob(self, digest: Digest, source: str) -> str | None:
        """Ask the registry to link `digest` from repository `source` into this one.

        None when mounted; else the upload URL the registry opened instead (a refused
        mount is an ordinary upload session).
        """
        url = self._url(f"blobs/uploads/?mount={digest}&from={source}")
        scope = f"{self._scope} repository:{source}:pull"
        what = f"mount of {digest}"
        # 201: mounted; 202: refused, with a session. Anything else is neither.
        async with self._stream("POST", url, what, scope=scope, expect=(201, 202)) as response:
            if response.status_code == 201:
                _check_digest_header(response, digest, what)
                return None
            return self._upload_location(response, what)

    async def upload_blob(
        self,
        digest: Digest | Callable[[], Digest],
        size: int | None,
        body: Body,
        location: str | None = None,
    ) -> None:
        """Upload a blob: POST (unless `location` is an open session), PATCH, PUT ?digest=.

        A blob compressed on the way has no size beforehand (the PATCH is chunked) and
        its digest is known only once it is sent: then `digest` is a function.
        """
        what = "blob upload"
        if location is None:
            async with self._stream("POST", self._url("blobs/uploads/"), what) as response:
                location = self._upload_location(response, what)
        headers = {"Content-Type": "application/octet-stream"}
        if size is not None:
            headers["Content-Length"] = str(size)
        sent = _CountedBody(body)
        async with self._stream(
            "PATCH", location, what, headers, content=sent.content()
        ) as response:
            _check_received(response, sent, what)
            location = self._upload_location(response, what)
        final = digest() if callable(digest) else digest
        # Merged, not replaced: the upload URL carries the registry's own state.
        done = str(httpx.URL(location).copy_merge_params({"digest": final}))
        what = f"upload of {final}"
        async with self._stream("PUT", done, what, {"Content-Length": "0"}) as response:
            _check_digest_header(response, final, what)

    async def put_manifest(self, reference: str, media_type: str, raw: bytes) -> Digest:
        """PUT a manifest; the registry's `Docker-Content-Digest` must be its digest."""
        digest = sha256_digest(raw)
        what = f"manifest {self.endpoint.domain}/{self.repository}:{reference}"
        headers = {"Content-Type": media_type}
        async with self._stream(
            "PUT", self._url(f"manifests/{reference}"), what, headers, content=raw
        ) as response:
            _check_digest_header(response, digest, what)
        return digest

    def _upload_location(self, response: httpx.Response, what: str) -> str:
        location = response.headers.get("location")
        if not location:
            raise RegistryProtocolError(f"{what}: the registry sent no upload Location")
        url = str(urljoin(str(response.url), location))
        try:
            check_port(url)
        except httpx.InvalidURL as exc:
            raise RegistryProtocolError(
                f"{what}: the registry sent an invalid upload Location {location!r}: {exc}"
            ) from None
        return url

    @asynccontextmanager
    async def _stream(
        self,
        method: str,
        url: str,
        what: str,
        headers: Mapping[str, str] | None = None,
        *,
        content: Body | None = None,
        scope: str | None = None,
        renewed: bool = False,
        expect: Collection[int] = _SUCCESS,
    ) -> AsyncIterator[httpx.Response]:
        """The answer to a request, when its status is one of `expect` (any 2xx unless
        said): an error status is its error; another (a 3xx that is no redirect, as it
        has no Location; a 1xx) is no sign the request was done."""
        response = await self._send(
            method, url, what, dict(headers or {}), content, scope, renewed=renewed
        )
        try:
            if response.status_code >= 400:
                body = await read_error_body(response, what)
                raise error_for(response, body, what, self.endpoint.domain)
            _check_status(response.status_code, expect, what, self.endpoint.domain)
            yield response
        except httpx.TransportError as exc:
            raise transport_error(exc, self.endpoint, what) from None
        finally:
            await release(response)

    async def _send(
        self,
        method: str,
        url: str,
        what: str,
        headers: dict[str, str],
        content: Body | None = None,
        scope: str | None = None,
        *,
        renewed: bool = False,
    ) -> httpx.Response:
        """Send with auth, answer one 401 by re-authenticating, follow redirects by hand.

        By hand, so that the Authorization header goes only to the registry's own host:
        blob redirects usually point at a storage service that must never see it.
        `renewed`: a 401 to this request renewed the login already (`_read_whole`).
        """
        scope = scope or self._scope
        if self._choose is not None:
            url, answered = await self._first(method, url, what, headers, content, scope)
            if answered is not None:
                return answered
        for attempt in range(1 if renewed else 0, 2):
            response, again = await self._once(
                self._route, method, url, what, headers, content, scope, learn=attempt == 0
            )
            if not again:
                return response
            await release(response)
        raise AssertionError("unreachable")

    async def _first(
        self,
        method: str,
        url: str,
        what: str,
        headers: dict[str, str],
        content: Body | None,
        scope: str,
    ) -> tuple[str, httpx.Response | None]:
        """This client's first request, sent while the connector chooses the endpoint
        (`Connector._choose`): `url` moved onto the chosen endpoint, and the answer,
        unless the request must go again (its 401 only taught the login)."""
        assert self._choose is not None
        base = self.endpoint.base_url  # `url` is built on the first endpoint to try
        if callable(content):
            # A stream is never what learns the login: a 401 would refuse it only once
            # it is sent, and a stream may not be opened twice.
            ping = await self._send("GET", f"{base}/v2/", "registry ping", {})
            await release(ping)
            return _rebased(url, base, self.endpoint), None

        def first(route: Route) -> Awaitable[Attempt]:
            rebased = _rebased(url, base, route.endpoint)
            return self._once(route, method, rebased, what, headers, content, scope)

        route, answer = await self._choose(first)
        self._route, self._choose = route, None
        url = _rebased(url, base, self.endpoint)
        if answer is None:  # another request chose the endpoint meanwhile
            return url, None
        response, again = answer
        if not again:
            return url, response
        await release(response)  # it only taught us the login: it keeps its one retry
        return url, None

    async def _once(
        self,
        route: Route,
        method: str,
        url: str,
        what: str,
        headers: dict[str, str],
        content: Body | None,
        scope: str,
        *,
        learn: bool = True,
    ) -> Attempt:
        """One send, and whether to send it again: with `learn`, a 401 that taught the
        authenticator something new (a challenge, a token to forget)."""
        auth = await route.auth.headers(scope)
        response = await self._follow(route, method, url, what, headers, auth, content)
        if response.status_code != 401 or not learn:
            return response, False
        challenge = parse_challenge(response.headers.get("www-authenticate"))
        return response, route.auth.reject(scope, challenge, auth.get("Authorization"))

    async def _follow(
        self,
        route: Route,
        method: str,
        url: str,
        what: str,
        headers: dict[str, str],
        auth: dict[str, str],
        content: Body | None = None,
    ) -> httpx.Response:
        registry = urlsplit(route.endpoint.base_url)
        for _ in range(MAX_REDIRECTS + 1):
            target = urlsplit(url)
            # Same scheme too: a redirect to plain HTTP must not carry the credentials.
            same_host = (target.scheme, target.netloc) == (registry.scheme, registry.netloc)
            request = route.http.build_request(
                method,
                url,
                headers={
                    **self._meta_headers,
                    **_IDENTITY,
                    **headers,
                    **(auth if same_host else {}),
                },
                # A body is made anew for every send: a stream cannot be replayed.
                content=content() if callable(content) else content,
            )
            response = await _send(route, request, what)
            location = response.headers.get("location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                return response
            await release(response)
            try:
                url = urljoin(url, location)
                check_port(url)  # 70000: httpx would take it, and connect() raise OverflowError
            except (ValueError, httpx.InvalidURL) as exc:
                domain = route.endpoint.domain
                raise RegistryProtocolError(
                    f"{domain}: redirect to an invalid Location {location!r}: {exc}"
                ) from None
            if response.status_code in (301, 302, 303) and method not in ("GET", "HEAD"):
                # As Go's client (dockerd's) follows them: a GET without the body. Only
                # 307 and 308 ask for the same request again elsewhere.
                method, content = "GET", None
                headers = {k: v for k, v in headers.items() if k.lower() not in _BODY_HEADERS}
        raise RegistryProtocolError(f"{route.endpoint.domain}: more than {MAX_REDIRECTS} redirects")


# What describes a request's body, dropped with the body when a redirect turns the
# request into a GET (h11 refuses a Content-Length with no body to match).
_BODY_HEADERS = frozenset({"content-length", "content-type", "content-range", "transfer-encoding"})


async def _send(route: Route, request: httpx.Request, what: str) -> httpx.Response:
    """Send `request`; a GET or HEAD that got no answer at all goes once more at once.

    Connections are kept idle for up to 90 s, and a registry whose own idle timeout is
    shorter may close one just as a request goes out on it. Such a request did nothing,
    so Go's HTTP transport (dockerd's) sends it again on a new connection; so
    do we, for the requests that have no body and change nothing.
    """
    try:
        return await route.http.send(request, stream=True)
    except httpx.TransportError as exc:
        failure = exc
    if request.method in ("GET", "HEAD") and _unanswered(failure):
        log.debug(
            "registry.resend",
            method=request.method,
            host=request.url.netloc.decode(),
            path=request.url.path,
            error=str(failure) or type(failure).__name__,
        )
        try:
            return await route.http.send(request, stream=True)
        except httpx.TransportError as exc:
            failure = exc
    raise transport_error(failure, route.endpoint, f"the answer to {what}") from None


def _unanswered(exc: httpx.TransportError) -> bool:
    """Whether the connection closed before any of the answer came: not a timeout (that
    has waited already), not a malformed answer (the same request gets it again)."""
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return True
    return isinstance(exc, httpx.RemoteProtocolError) and str(exc).startswith(
        "Server disconnected without sending a response"
    )


def _rebased(url: str, base: str, endpoint: Endpoint) -> str:
    """`url` on `endpoint`, when it was built on the base URL `base` of another."""
    return endpoint.base_url + url[len(base) :] if url.startswith(f"{base}/") else url


_MAX_TAG_PAGES = 1000
# One page of a tag list: 4 MiB holds some 30,000 tags of 128 characters.
MAX_TAG_PAGE = 4 * 1024 * 1024
# A whole tag list, kept in memory as it is read: the largest real repositories have
# tens of thousands of tags; 1000 pages of 4 MiB would have been over 4 GiB of strings.
# 16 MiB of pages hold 100,000 tags of 128 characters, and many more of usual lengths.
MAX_TAGS = 100_000
MAX_TAG_LIST = 16 * 1024 * 1024
# `[^<>]`, not `[^>]`: a header of many "<" then tried each of them to its end.
_NEXT_LINK = re.compile(r'<([^<>]*)>\s*;\s*rel="?next"?')


def _tag_page(raw: bytes, what: str) -> list[str]:
    try:
        tags = loads(raw).get("tags") or []
    except (ValueError, AttributeError):
        raise RegistryProtocolError(f"{what}: the registry's answer is not a tag list") from None
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise RegistryProtocolError(f"{what}: the registry's answer is not a tag list")
    return tags


def _check_tag_list(count: int, size: int, what: str) -> None:
    """Refuse a tag list grown past `MAX_TAGS` tags or `MAX_TAG_LIST` bytes of pages."""
    if count > MAX_TAGS:
        raise TooLargeError(
            f"{what}: the registry lists over {MAX_TAGS} tags, more than ferryd reads; "
            "pull the tags wanted by name instead"
        )
    if size > MAX_TAG_LIST:
        raise TooLargeError(
            f"{what}: the registry's tag list is over {MAX_TAG_LIST} bytes, more than "
            "ferryd reads; pull the tags wanted by name instead"
        )


def _next_page(link: str | None, endpoint: Endpoint, what: str) -> str | None:
    """The next page's URL, which must stay on the registry (it carries our login)."""
    match = _NEXT_LINK.search(link or "")
    if match is None:
        return None
    url: str = urljoin(endpoint.base_url + "/", str(match.group(1)))
    if urlsplit(url).netloc != urlsplit(endpoint.base_url).netloc:
        raise RegistryProtocolError(f"{what}: the next page is on another host: {url}")
    return url


def error_for(response: httpx.Response, body: bytes, what: str, registry: str) -> RegistryError:
    """The error for a failed response, with the registry's own words when it sent any
    (and, in `reason`, as dockerd quotes them). A 401 whose challenge says
    `insufficient_scope` is a refusal of access, as a 403 is: the login was understood."""
    status = response.status_code
    detail = _registry_message(body)
    suffix = f": {detail}" if detail else ""
    said = response_refusal(response, body)
    error: RegistryError
    if status == 403 or (status == 401 and said.code == "DENIED"):
        if status == 401:  # the body says only that a login is needed
            suffix = f": {said.text}"
        error = AccessDeniedError(f"{registry}: access to {what} denied{suffix}")
        error.reason = said.text
        return error
    if status == 401:
        error = AuthenticationError(f"{registry}: authentication required for {what}{suffix}")
        error.reason = said.text
        return error
    if status == 404:
        return NotFoundError(f"{what} not found{suffix}")
    if status == 416:
        return RangeNotSatisfiableError(
            f"{registry}: {what}: the registry cannot send the part asked for (HTTP 416){suffix}"
        )
    if status == 429:
        error = TooManyRequestsError(f"{registry}: too many requests{suffix}")
    elif status >= 500 or status == 408:
        error = TransientRegistryError(f"{registry}: HTTP {status} for {what}{suffix}")
    else:
        return RegistryProtocolError(f"{registry}: unexpected HTTP {status} for {what}{suffix}")
    error.retry_after = retry_after(response.headers.get("retry-after"))
    return error


def retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: a number of seconds, or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    seconds = decimal(value)
    if seconds is not None:
        return float(seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def transport_error(exc: httpx.TransportError, endpoint: Endpoint, what: str) -> FerrydError:
    """The error for a connection that failed while doing `what`; a timeout names its
    phase, the seconds it waited and the setting that gave them; a head that failed its
    deadline or size says so (`heads`)."""
    failed_head = head_error(exc, what)
    if failed_head is not None:
        return failed_head
    reason = str(exc) or type(exc).__name__
    unverified = _certificate_error(exc)
    if unverified is not None:
        return RegistryUnreachableError(
            f"cannot reach {endpoint.base_url}: TLS certificate verification failed "
            f"({unverified.verify_message or unverified.reason}); put the registry's CA "
            f"certificate in certs.d/{endpoint.host}/ca.crt, or list {endpoint.host} as an "
            "insecure registry"
        )
    waited = _timeouts(exc)
    if isinstance(exc, httpx.ConnectTimeout):
        return RegistryUnreachableError(
            f"cannot reach {endpoint.base_url}: no connection within "
            f"{_seconds(waited.get('connect'))} (connect_timeout, which covers the TCP "
            "connection and the TLS handshake)"
        )
    if isinstance(exc, httpx.ConnectError | httpx.UnsupportedProtocol):
        return RegistryUnreachableError(f"cannot reach {endpoint.base_url}: {reason}")
    if isinstance(exc, httpx.ReadTimeout):
        return TransientRegistryError(
            f"timed out: no answer from {endpoint.host} within "
            f"{_seconds(waited.get('read'))} while reading {what} (read_timeout)"
        )
    if isinstance(exc, httpx.WriteTimeout):
        return TransientRegistryError(
            f"timed out: {endpoint.host} took nothing for {_seconds(waited.get('write'))} "
            f"while we were sending {what} (read_timeout)"
        )
    if isinstance(exc, httpx.TimeoutException):
        return TransientRegistryError(
            f"timed out: no free connection to {endpoint.domain} within "
            f"{_seconds(waited.get('pool'))} for {what}"
        )
    return TransientRegistryError(f"{endpoint.domain}: connection failed: {reason}")


def _timeouts(exc: httpx.TransportError) -> dict[str, float | None]:
    """The timeouts the failed request ran with (httpx keeps them on the request)."""
    try:
        timeouts = exc.request.extensions.get("timeout", {})
    except RuntimeError:  # an error raised before the request existed
        return {}
    return dict(timeouts) if isinstance(timeouts, dict) else {}


def _seconds(value: float | None) -> str:
    return f"{value:g} s" if value is not None else "the time allowed"


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind a transport error, if that is what it is."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _registry_message(body: bytes) -> str:
    try:
        errors = loads(body).get("errors") or []
        parts = [
            f"{e.get('code', '').lower().replace('_', ' ')}: {e.get('message', '')}" for e in errors
        ]
        return "; ".join(p.strip(": ") for p in parts)
    except (ValueError, AttributeError, TypeError):
        return ""


def _digest_of(raw: bytes, expected: str | None, what: str) -> Digest:
    """The sha256 digest of `raw`, checked against `expected` (in its own algorithm)."""
    if expected:
        wanted = parse_digest(expected)
        hasher = new_hasher(wanted)
        hasher.update(raw)
        actual = f"{wanted.partition(':')[0]}:{hasher.hexdigest()}"
        if actual != wanted:
            raise DigestMismatchError(f"{what}: content has digest {actual}, expected {wanted}")
        if wanted.startswith("sha256:"):
            return wanted
    return sha256_digest(raw)


def _check_status(status: int, expect: Collection[int], what: str, registry: str) -> None:
    """Refuse a status that is not one of `expect`. Any 2xx is taken where the
    distribution spec names one (a 201 or a 202), as docker and containerd take it:
    registries answer 200."""
    if status in expect:
        return
    wanted = "a 2xx" if expect == _SUCCESS else " or ".join(str(code) for code in expect)
    raise RegistryProtocolError(
        f"{registry}: {what}: the registry answered HTTP {status} where {wanted} was "
        "needed; it did not do what was asked"
    )


class _CountedBody:
    """A request body as the HTTP client takes it: how many bytes, and whether all of
    them (a registry may answer before it has read the whole body)."""

    def __init__(self, body: Body) -> None:
        self._body = body
        self.sent = 0
        self.ended = False

    def content(self) -> Body:
        if isinstance(self._body, bytes):
            self.sent, self.ended = len(self._body), True
            return self._body
        return self._stream

    async def _stream(self) -> AsyncIterator[bytes]:
        # Counted afresh on every send: a redirect or a 401 sends the body again.
        assert callable(self._body)
        self.sent, self.ended = 0, False
        async for chunk in self._body():
            self.sent += len(chunk)
            yield chunk
        self.ended = True


# What a PATCH answer's Range says the session holds: "0-N" (distribution's form), or
# "bytes=0-N" (some registries').
_UPLOAD_RANGE = re.compile(r"(?:bytes=)?([0-9]+)-([0-9]+)")


def _check_received(response: httpx.Response, body: _CountedBody, what: str) -> None:
    """Refuse a PATCH answer that says fewer (or other) bytes arrived than were sent: the
    PUT after it would commit a blob cut short, or one whose digest we never computed."""
    if not body.ended:
        raise RegistryProtocolError(
            f"{what}: the registry answered after {body.sent} bytes, before the whole blob was sent"
        )
    match = _UPLOAD_RANGE.fullmatch(response.headers.get("range", "").strip())
    if match is None:
        return  # no Range (or one no registry writes): nothing said, nothing to check
    start, end = decimal(match[1]), decimal(match[2])
    if start is None or end is None:
        return
    # "0-0" is also what distribution says of an empty session.
    held = 0 if body.sent == 0 and (start, end) == (0, 0) else end - start + 1
    if start != 0 or held != body.sent:
        raise RegistryProtocolError(
            f"{what}: the registry says it received {held} of {body.sent} bytes "
            f"(Range: {match[0]}): the connection or a proxy lost part of the blob"
        )


def _check_digest_header(response: httpx.Response, digest: Digest, what: str) -> None:
    sent = response.headers.get("docker-content-digest")
    if sent and sent != digest:
        raise DigestMismatchError(f"{what}: the registry stored {sent}, not {digest}")


def _parse_content_range(
    headers: Mapping[str, str], offset: int, what: str
) -> tuple[int, int | None]:
    parsed = _content_range(headers.get("content-range", ""))
    if parsed is None:
        raise RegistryProtocolError(f"{what}: 206 without a valid Content-Range")
    start, total = parsed
    if start != offset:
        raise RegistryProtocolError(f"{what}: asked for bytes from {offset}, got from {start}")
    return start, total


def _content_range(value: str) -> tuple[int, int | None] | None:
    """`bytes START-END/TOTAL` (TOTAL may be `*`): START and TOTAL; None when it is not
    that, numbers of more digits than any size has included."""
    match = _CONTENT_RANGE.fullmatch(value)
    if match is None:
        return None
    start, end, total = (decimal(number) for number in match.groups())  # "*": None
    if start is None or end is None or (total is None and match[3] != "*"):
        return None
    return start, total


def _raw_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """urllib3's headers for an httpx.Response, as the bytes that came: urllib3 decodes
    them as latin-1, and httpx would encode str as ASCII, failing on any byte >= 0x80."""
    return [
        (name.encode("latin-1", "replace"), value.encode("latin-1", "replace"))
        for name, value in headers.items()
    ]
