"""RegistryClient, Connector and RegistryService against fake registries on loopback."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace

import anyio
import anyio.abc
import httpcore
import httpx
import pytest
import trustme
from anyio.streams.tls import TLSStream
from httpcore._async import http11 as httpcore_http11

from ferryd.errors import (
    AccessDeniedError,
    ConfigError,
    DigestMismatchError,
    FerrydError,
    NotFoundError,
    RegistryError,
    RegistryProtocolError,
    RegistryUnreachableError,
    TooLargeError,
    TooManyRequestsError,
    TransientRegistryError,
    UnsupportedManifestError,
)
from ferryd.oci.digest import Digest, sha256_digest
from ferryd.oci.manifest import MAX_MANIFEST_SIZE, check_supported
from ferryd.oci.mediatypes import ACCEPT, OCI_MANIFEST, SCHEMA1_TYPES
from ferryd.registry import endpoints as endpoints_module
from ferryd.registry import streams
from ferryd.registry.auth import ANONYMOUS, Credentials
from ferryd.registry.client import MAX_REDIRECTS, BlobResponse, RegistryClient
from ferryd.registry.connector import KEEP_IDLE_SECONDS, Connector
from ferryd.registry.endpoints import DOCKER_HUB_HOST, RegistryService
from support.digests import sha256
from support.fakes import (
    FakeRegistry,
    FakeServer,
    Reply,
    Request,
    registry_error,
    serve,
    serve_connect_proxy,
    serve_registry,
)
from support.registry import trust

REPO = "team/app"
MANIFEST_PATH = f"/v2/{REPO}/manifests/.+"
BLOB_PATH = f"/v2/{REPO}/blobs/.+"


@pytest.fixture
async def connector() -> AsyncIterator[Connector]:
    connector = Connector(RegistryService(), connect_timeout=5, read_timeout=5)
    yield connector
    await connector.aclose()


def manifest(tag: str = "v1") -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "x", "digest": "sha256:" + "0" * 64, "size": 2},
            "layers": [],
            "annotations": {"tag": tag},
        }
    ).encode()


async def open_client(
    connector: Connector, server: FakeServer, credentials: Credentials = ANONYMOUS
) -> RegistryClient:
    return await connector.open(server.host, REPO, credentials)


def serving_v1() -> FakeRegistry:
    registry = FakeRegistry()
    registry.add_manifest(manifest(), OCI_MANIFEST, "v1")
    return registry


async def kept_alive(connector: Connector, server: FakeServer) -> RegistryClient:
    """A client whose first request (the manifest of v1) left its connection idle in
    the pool, for the next request to take."""
    client = await open_client(connector, server)
    await client.get_manifest("v1")
    return client


# -- error mapping --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "error", "retryable"),
    [
        (
            registry_error(403, "DENIED", "requested access to the resource is denied"),
            AccessDeniedError,
            False,
        ),
        (
            registry_error(404, "MANIFEST_UNKNOWN", "manifest unknown to the fake"),
            NotFoundError,
            False,
        ),
        (registry_error(429, "TOOMANYREQUESTS", "slow down"), TooManyRequestsError, True),
        (Reply(500, body=b"oops"), TransientRegistryError, True),
        (Reply(502, body=b"<html>bad gateway</html>"), TransientRegistryError, True),
        (registry_error(503, "UNAVAILABLE", "try later"), TransientRegistryError, True),
        (Reply(418, body=b"teapot"), RegistryProtocolError, False),
    ],
)
async def test_status_maps_to_error(
    connector: Connector, reply: Reply, error: type[RegistryError], retryable: bool
) -> None:
    registry = FakeRegistry()
    registry.on("GET", MANIFEST_PATH, reply)
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        with pytest.raises(error) as caught:
            await client.get_manifest("v1")
    assert caught.value.retryable is retryable


async def test_not_found_carries_the_registry_message(connector: Connector) -> None:
    registry = FakeRegistry()
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        with pytest.raises(NotFoundError) as caught:
            await client.get_manifest("missing")
    message = str(caught.value)
    assert "manifest unknown: manifest unknown: missing" in message
    assert f"{server.host}/{REPO}:missing" in message


async def test_error_messages_of_the_registry_are_joined(connector: Connector) -> None:
    registry = FakeRegistry()
    body = {
        "errors": [
            {"code": "DENIED", "message": "no pull for you"},
            {"code": "NAME_UNKNOWN", "message": "repository name not known to registry"},
        ]
    }
    registry.on("GET", MANIFEST_PATH, Reply(403, body=json.dumps(body).encode()))
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        with pytest.raises(AccessDeniedError) as caught:
            await client.get_manifest("v1")
    assert str(caught.value).endswith(
        "denied: no pull for you; name unknown: repository name not known to registry"
    )


async def test_first_request_failure(connector: Connector) -> None:
    registry = FakeRegistry()
    registry.on("GET", MANIFEST_PATH, Reply(503, body=b"maintenance"))
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        with pytest.raises(TransientRegistryError, match="HTTP 503 for manifest for"):
            await client.get_manifest("v1")


async def test_meta_headers_and_accept_are_sent(connector: Connector) -> None:
    registry = FakeRegistry()
    registry.add_manifest(manifest(), OCI_MANIFEST, "v1")
    async with serve_registry(registry) as server:
        client = await connector.open(
            server.host, REPO, ANONYMOUS, meta_headers={"X-Meta-Source": "ci"}
        )
        await client.get_manifest("v1")
    (get,) = registry.seen("GET", MANIFEST_PATH)
    assert get.headers["x-meta-source"] == "ci"
    assert get.headers["accept"].split(", ") == list(ACCEPT)
    assert get.headers["user-agent"].startswith("ferryd/")
    assert get.headers["accept-encoding"] == "identity"


# -- manifests ------------------------------------------------------------------------


async def test_manifest_by_tag_and_by_digest(connector: Connector) -> None:
    registry = FakeRegistry()
    raw = manifest()
    digest = registry.add_manifest(raw, OCI_MANIFEST, "v1")
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        by_tag = await client.get_manifest("v1")
        by_digest = await client.get_manifest(digest)
    assert by_tag.digest == by_digest.digest == digest
    assert by_tag.raw == by_digest.raw == raw
    assert by_tag.media_type == OCI_MANIFEST


async def test_manifest_by_digest_with_other_bytes(connector: Connector) -> None:
    registry = FakeRegistry()
    wanted = sha256(manifest("wanted"))
    other = manifest("other")
    registry.on("GET", MANIFEST_PATH, Reply(200, {"Content-Type": OCI_MANIFEST}, other))
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        with pytest.raises(DigestMismatchError, match=wanted):
            await client.get_manifest(wanted)


async def test_manifest_by_digest_ignores_a_header_that_agrees_with_the_lie(
    connector: Connector,
) -> None:
    registry = FakeRegistry()
    wanted = sha256(manifest("wanted"))
    other = manifest("other")
    headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": sha256(other)}
    registry.on("GET", MANIFEST_PATH, Reply(200, headers, other))
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        with pytest.raises(DigestMismatchError):
            await client.get_manifest(wanted)


async def test_manifest_by_sha512_digest_is_checked_too(connector: Connector) -> None:
    registry = FakeRegistry()
    wanted = "sha512:" + hashlib.sha512(manifest("wanted")).hexdigest()
    other = manifest("other")
    headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": sha256(other)}
    registry.on("GET", MANIFEST_PATH, Reply(200, headers, other))
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        with pytest.raises(DigestMismatchError, match="sha512"):
            await client.get_manifest(wanted)


async def test_manifest_by_tag_with_a_lying_digest_header(connector: Connector) -> None:
    registry = FakeRegistry()
    raw = manifest()
    lie = sha256(b"something else")
    headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": lie}
    registry.on("GET", MANIFEST_PATH, Reply(200, headers, raw))
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        with pytest.raises(DigestMismatchError, match=lie):
            await client.get_manifest("v1")


async def test_manifest_by_tag_with_a_malformed_digest_header(connector: Connector) -> None:
    registry = FakeRegistry()
    headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": "sha256:nothex"}
    registry.on("GET", MANIFEST_PATH, Reply(200, headers, manifest()))
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        with pytest.raises(RegistryProtocolError, match="Docker-Content-Digest"):
            await client.get_manifest("v1")


async def test_manifest_by_tag_without_a_digest_header(connector: Connector) -> None:
    registry = FakeRegistry()
    raw = manifest()
    registry.on("GET", MANIFEST_PATH, Reply(200, {"Content-Type": OCI_MANIFEST}, raw))
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        fetched = await client.get_manifest("v1")
    assert fetched.digest == sha256(raw)


async def test_manifest_over_the_limit_by_content_length(connector: Connector) -> None:
    registry = FakeRegistry()
    # Announces 4 MiB + 1 and sends nothing: the length alone must be enough to refuse.
    big = Reply(
        200,
        {"Content-Type": OCI_MANIFEST},
        b"",
        content_length=MAX_MANIFEST_SIZE + 1,
        stall_after=0,
    )
    registry.on("GET", MANIFEST_PATH, big)
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        with pytest.raises(TooLargeError, match=str(MAX_MANIFEST_SIZE + 1)):
            await client.get_manifest("v1")


@pytest.mark.parametrize("framing", ["chunked", "close"])
async def test_manifest_over_the_limit_without_a_length(connector: Connector, framing: str) -> None:
    registry = FakeRegistry()
    body = b"{" + b" " * MAX_MANIFEST_SIZE + b"}"
    registry.on(
        "GET",
        MANIFEST_PATH,
        Reply(200, {"Content-Type": OCI_MANIFEST}, body, framing=framing),  # type: ignore[arg-type]
    )
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        with pytest.raises(TooLargeError, match="over the limit"):
            await client.get_manifest("v1")


async def test_manifest_of_exactly_the_limit_is_fine(connector: Connector) -> None:
    registry = FakeRegistry()
    raw = manifest()
    raw = raw[:-1] + b" " * (MAX_MANIFEST_SIZE - len(raw)) + b"}"
    registry.on(
        "GET", MANIFEST_PATH, Reply(200, {"Content-Type": OCI_MANIFEST}, raw, framing="chunked")
    )
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        fetched = await client.get_manifest("v1")
    assert len(fetched.raw) == MAX_MANIFEST_SIZE


@pytest.mark.parametrize("content_type", SCHEMA1_TYPES)
async def test_schema1_manifest_is_named_as_such(connector: Connector, content_type: str) -> None:
    registry = FakeRegistry()
    raw = json.dumps(
        {"schemaVersion": 1, "name": REPO, "tag": "old", "fsLayers": [], "history": []}
    ).encode()
    registry.on("GET", MANIFEST_PATH, Reply(200, {"Content-Type": content_type}, raw))
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        fetched = await client.get_manifest("old")
    assert fetched.media_type in SCHEMA1_TYPES
    with pytest.raises(UnsupportedManifestError, match="schema1"):
        check_supported(fetched.media_type)


async def test_schema1_manifest_without_its_content_type(connector: Connector) -> None:
    registry = FakeRegistry()
    raw = json.dumps({"schemaVersion": 1, "name": REPO, "fsLayers": []}).encode()
    registry.on("GET", MANIFEST_PATH, Reply(200, {"Content-Type": "application/json"}, raw))
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        fetched = await client.get_manifest("old")
    assert fetched.media_type in SCHEMA1_TYPES


async def test_manifest_compressed_by_a_proxy_is_decoded(connector: Connector) -> None:
    # Some proxies compress JSON whatever the client asked for; the digest covers the
    # identity bytes.
    registry = FakeRegistry()
    raw = manifest()
    headers = {
        "Content-Type": OCI_MANIFEST,
        "Content-Encoding": "gzip",
        "Docker-Content-Digest": sha256(raw),
    }
    registry.on("GET", MANIFEST_PATH, Reply(200, headers, gzip.compress(raw)))
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        fetched = await client.get_manifest("v1")
    assert fetched.raw == raw


async def test_config_blob_is_verified(connector: Connector) -> None:
    registry = FakeRegistry()
    config = b'{"os": "linux"}'
    digest = registry.add_blob(config)
    wrong = sha256(b"another config")
    registry.blobs[wrong] = config
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        assert await client.get_blob(digest, 1000, "image config") == config
        with pytest.raises(DigestMismatchError):
            await client.get_blob(wrong, 1000, "image config")
        with pytest.raises(TooLargeError):
            await client.get_blob(digest, 5, "image config")


# -- redirects ------------------------------------------------------------------------


def logged_in(reply: Reply) -> Callable[[Request], Reply | None]:
    """`reply` to a request with a login; else the registry's own answer (its 401)."""
    return lambda request: reply if "authorization" in request.headers else None


async def test_blob_redirect_keeps_credentials_home(connector: Connector) -> None:
    registry = FakeRegistry(auth="basic")
    data = b"layer bytes " * 1000
    digest = registry.add_blob(data)
    storage_requests: list[Request] = []

    async def storage(request: Request) -> Reply:
        storage_requests.append(request)
        return registry.blob_reply(request, digest)

    async with serve(storage) as cdn, serve_registry(registry) as server:
        registry.on(
            "GET",
            BLOB_PATH,
            logged_in(Reply(307, {"Location": f"{cdn.url}/bucket/{digest}?sig=abc"})),
        )
        client = await open_client(connector, server, Credentials("ferry", "s3cret"))
        async with client.open_blob(digest, 100) as blob:
            received = b"".join([chunk async for chunk in blob.chunks()])
            assert blob.start == 100
    assert received == data[100:]
    first, registry_get = registry.seen("GET", BLOB_PATH)
    assert "authorization" not in first.headers  # it learns the challenge
    assert registry_get.headers["authorization"].startswith("Basic ")
    (storage_get,) = storage_requests
    assert "authorization" not in storage_get.headers
    assert storage_get.target == f"/bucket/{digest}?sig=abc"
    assert storage_get.headers["range"] == "bytes=100-"


async def test_relative_redirect_on_the_registry_keeps_credentials(connector: Connector) -> None:
    registry = FakeRegistry(auth="basic")
    digest = registry.add_blob(b"abc")
    registry.on(
        "GET",
        f"/v2/{REPO}/blobs/{digest}",
        logged_in(Reply(302, {"Location": f"/v2/{REPO}/blobs/x/{digest}"})),
    )
    registry.on("GET", f"/v2/{REPO}/blobs/x/.*", lambda r: registry.blob_reply(r, digest))
    async with serve_registry(registry) as server:
        client = await open_client(connector, server, Credentials("ferry", "s3cret"))
        async with client.open_blob(digest) as blob:
            assert b"".join([c async for c in blob.chunks()]) == b"abc"
    # After the first request, which learns the challenge.
    _first, *gets = registry.seen("GET", BLOB_PATH + "|.*/x/.*")
    assert [r.path for r in gets] == [f"/v2/{REPO}/blobs/{digest}", f"/v2/{REPO}/blobs/x/{digest}"]
    assert all("authorization" in r.headers for r in gets)


@pytest.mark.parametrize(("hops", "ok"), [(MAX_REDIRECTS, True), (MAX_REDIRECTS + 1, False)])
async def test_redirect_limit(connector: Connector, hops: int, ok: bool) -> None:
    registry = FakeRegistry()
    digest = registry.add_blob(b"abc")

    def hop(request: Request) -> Reply:
        number = int(request.query.get("hop", "0"))
        if number < hops:
            return Reply(307, {"Location": f"{request.path}?hop={number + 1}"})
        return registry.blob_reply(request, digest)

    registry.on("GET", BLOB_PATH, hop)
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        if ok:
            async with client.open_blob(digest) as blob:
                assert b"".join([c async for c in blob.chunks()]) == b"abc"
        else:
            with pytest.raises(RegistryProtocolError, match="redirects"):
                async with client.open_blob(digest):
                    pass
    assert len(registry.seen("GET", BLOB_PATH)) == min(hops, MAX_REDIRECTS) + 1


# -- a redirected request with a body, followed as Go's client (dockerd's) follows it:
# 301, 302 and 303 turn it into a GET without the body; 307 and 308 send it again ----


MANIFEST_BODY = b'{"schemaVersion": 2}'


@pytest.mark.parametrize(
    ("status", "method", "body"),
    [
        (301, "GET", b""),
        (302, "GET", b""),
        (303, "GET", b""),
        (307, "PUT", MANIFEST_BODY),
        (308, "PUT", MANIFEST_BODY),
    ],
)
async def test_a_redirected_put_is_followed_as_gos_client_follows_it(
    connector: Connector, status: int, method: str, body: bytes
) -> None:
    registry = FakeRegistry()
    digest = "sha256:" + hashlib.sha256(MANIFEST_BODY).hexdigest()
    seen: list[Request] = []

    def elsewhere(request: Request) -> Reply:
        seen.append(request)
        return Reply(201, {"Docker-Content-Digest": digest})

    registry.on("PUT", f"/v2/{REPO}/manifests/v1", Reply(status, {"Location": "/elsewhere"}))
    for followed in ("GET", "PUT"):
        registry.on(followed, "/elsewhere", elsewhere)
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, ANONYMOUS)
        await client.put_manifest("v1", OCI_MANIFEST, MANIFEST_BODY)
    (request,) = seen
    assert (request.method, request.body) == (method, body)


async def test_a_redirected_patch_of_known_size_becomes_a_get_without_its_length(
    connector: Connector,
) -> None:
    """An upload's PATCH carries a Content-Length; the GET a 302 turns it into carries
    none (h11 refused to send it: an internal error)."""
    registry = FakeRegistry()
    seen: list[Request] = []

    def elsewhere(request: Request) -> Reply:
        seen.append(request)
        return Reply(404)

    registry.on("POST", "/v2/.*/blobs/uploads/", Reply(202, {"Location": "/upload/1"}))
    registry.on("PATCH", "/upload/1", Reply(302, {"Location": "/elsewhere"}))
    registry.on("GET", "/elsewhere", elsewhere)
    data = b"layer bytes" * 100
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, ANONYMOUS)
        with pytest.raises(FerrydError) as caught:
            await client.upload_blob(sha256_digest(data), len(data), data)
    assert "internal" not in str(caught.value)
    (request,) = seen
    assert (request.method, request.body) == ("GET", b"")
    assert "content-length" not in request.headers or request.headers["content-length"] == "0"


# -- open_blob and Range --------------------------------------------------------------


async def test_open_blob_with_offset_resumes(connector: Connector) -> None:
    registry = FakeRegistry()
    data = bytes(range(256)) * 64
    digest = registry.add_blob(data)
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        async with client.open_blob(digest, 1000) as blob:
            assert blob.start == 1000
            assert blob.total == len(data)
            assert b"".join([c async for c in blob.chunks()]) == data[1000:]
    (get,) = registry.seen("GET", BLOB_PATH)
    assert get.headers["range"] == "bytes=1000-"


async def test_open_blob_from_zero_sends_no_range(connector: Connector) -> None:
    registry = FakeRegistry()
    digest = registry.add_blob(b"abc")
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        async with client.open_blob(digest) as blob:
            assert blob.start == 0
            assert b"".join([c async for c in blob.chunks()]) == b"abc"
    (get,) = registry.seen("GET", BLOB_PATH)
    assert "range" not in get.headers


async def test_open_blob_range_ignored(connector: Connector) -> None:
    registry = FakeRegistry()
    registry.ignore_range = True
    data = b"0123456789" * 100
    digest = registry.add_blob(data)
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        async with client.open_blob(digest, 500) as blob:
            assert blob.start == 0
            assert b"".join([c async for c in blob.chunks()]) == data


@pytest.mark.parametrize(
    "content_range", ["bytes 400-999/1000", "bytes 0-999/1000", None, "bytes=500-999/1000"]
)
async def test_open_blob_206_with_a_wrong_range(
    connector: Connector, content_range: str | None
) -> None:
    registry = FakeRegistry()
    data = b"0123456789" * 100
    digest = registry.add_blob(data)
    headers = {} if content_range is None else {"Content-Range": content_range}
    registry.on("GET", BLOB_PATH, Reply(206, headers, data[500:]))
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        with pytest.raises(RegistryProtocolError, match=r"Content-Range|bytes from 500"):
            async with client.open_blob(digest, 500):
                pass


async def test_open_blob_with_an_unknown_total(connector: Connector) -> None:
    registry = FakeRegistry()
    data = b"0123456789" * 100
    digest = registry.add_blob(data)
    registry.on("GET", BLOB_PATH, Reply(206, {"Content-Range": "bytes 500-999/*"}, data[500:]))
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        async with client.open_blob(digest, 500) as blob:
            assert (blob.start, blob.total) == (500, None)


async def test_open_blob_not_found(connector: Connector) -> None:
    registry = FakeRegistry()
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        with pytest.raises(NotFoundError, match="blob unknown"):
            async with client.open_blob(Digest(sha256(b"nothing"))):
                pass


def _served_with(request: pytest.FixtureRequest, tls: bool) -> ssl.SSLContext | None:
    """The server's TLS context when the test runs over TLS (the event loop's transport on
    the client's side), else None."""
    return request.getfixturevalue("server_tls") if tls else None


@pytest.mark.parametrize("tls", [False, True], ids=["http", "tls"])
async def test_cut_blob_body_is_transient(
    connector: Connector, tls: bool, request: pytest.FixtureRequest
) -> None:
    registry = FakeRegistry()
    data = b"x" * 200_000
    digest = registry.add_blob(data)
    registry.on("GET", BLOB_PATH, lambda r: _cut(registry.blob_reply(r, digest), 50_000))
    async with serve_registry(registry, ssl_context=_served_with(request, tls)) as server:
        client = await open_client(connector, server)
        received: list[bytes] = []

        async def read_all(blob: BlobResponse) -> None:
            async for chunk in blob.chunks():
                received.append(chunk)  # noqa: PERF401 - keep what came before the cut

        async with client.open_blob(digest) as blob:
            # A ferryd error from the chunks themselves: the caller still holds what came.
            with pytest.raises(TransientRegistryError, match="connection failed") as caught:
                await read_all(blob)
    assert caught.value.retryable
    assert sum(map(len, received)) == 50_000


@pytest.mark.parametrize("tls", [False, True], ids=["http", "tls"])
async def test_stalled_blob_body_times_out(tls: bool, request: pytest.FixtureRequest) -> None:
    connector = Connector(RegistryService(), read_timeout=0.2)
    registry = FakeRegistry()
    digest = registry.add_blob(b"x" * 100_000)
    registry.on("GET", BLOB_PATH, lambda r: _stall(registry.blob_reply(r, digest), 10_000))
    try:
        async with serve_registry(registry, ssl_context=_served_with(request, tls)) as server:
            client = await open_client(connector, server)
            async with client.open_blob(digest) as blob:
                with pytest.raises(TransientRegistryError, match="timed out"):
                    async for _chunk in blob.chunks():
                        pass
    finally:
        await connector.aclose()


def _cut(reply: Reply, after: int) -> Reply:
    reply.cut_after = after
    return reply


def _stall(reply: Reply, after: int) -> Reply:
    reply.stall_after = after
    return reply


# -- endpoints ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:5000",
        "127.8.9.10:443",
        "[::1]:5000",
        "::1",
        "localhost",
        "localhost:5000",
        "LOCALHOST:5000",
    ],
)
async def test_loopback_is_insecure_by_default(host: str) -> None:
    assert await RegistryService().is_insecure(host)


@pytest.mark.parametrize("host", ["10.1.2.3:5000", "[fd00::1]:5000", "8.8.8.8"])
async def test_other_addresses_are_secure_by_default(host: str) -> None:
    assert not await RegistryService().is_insecure(host)


async def test_insecure_host_port_entry() -> None:
    service = RegistryService(["10.1.2.3:5000", "http://10.9.9.9:5000/", "[fd00::2]:443"])
    assert await service.is_insecure("10.1.2.3:5000")
    assert await service.is_insecure("10.9.9.9:5000")
    assert await service.is_insecure("[fd00::2]:443")
    assert not await service.is_insecure("10.1.2.3:5001")
    assert not await service.is_insecure("127.0.0.1:5000")  # the list replaces the default


async def test_insecure_cidr_entries() -> None:
    service = RegistryService(["10.0.0.0/8", "fd00::/8", "192.168.1.7"])
    assert await service.is_insecure("10.20.30.40:5000")
    assert await service.is_insecure("[fd12::1]:5000")
    assert await service.is_insecure("192.168.1.7:443")
    assert not await service.is_insecure("11.0.0.1")
    assert not await service.is_insecure("192.168.1.8")


def test_empty_insecure_entry_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        RegistryService(["10.0.0.0/8", " "])


async def test_insecure_endpoints_try_https_then_http() -> None:
    endpoints = await RegistryService().endpoints("localhost:5000")
    assert [e.base_url for e in endpoints] == ["https://localhost:5000", "http://localhost:5000"]
    assert all(e.insecure and e.domain == "localhost:5000" for e in endpoints)
    https = endpoints[0].verify
    assert isinstance(https, ssl.SSLContext)
    assert https.verify_mode == ssl.CERT_NONE


async def test_secure_endpoint_is_https_only(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_dns(name: str) -> list[object]:
        return []

    monkeypatch.setattr(endpoints_module, "_addresses", no_dns)
    (endpoint,) = await RegistryService().endpoints("docker.io")
    assert endpoint.base_url == f"https://{DOCKER_HUB_HOST}"
    assert endpoint.domain == "docker.io"
    assert not endpoint.insecure
    assert isinstance(endpoint.verify, ssl.SSLContext)
    assert endpoint.verify.verify_mode == ssl.CERT_REQUIRED
    assert endpoint.verify.check_hostname


async def test_connector_falls_back_to_http_and_remembers(connector: Connector) -> None:
    registry = FakeRegistry()
    registry.add_manifest(manifest(), OCI_MANIFEST, "v1")
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        await client.get_manifest("v1")
        assert client.endpoint.base_url == f"http://{server.host}"
        assert server.rejected == 1  # the TLS hello of the https attempt
        again = await connector.open(server.host, "team/other", ANONYMOUS)
        await again.get_manifest("v1")
    assert again.endpoint == client.endpoint
    assert server.rejected == 1
    # No ping: the first request chose the endpoint.
    paths = [r.path for r in registry.requests]
    assert paths == [f"/v2/{REPO}/manifests/v1", "/v2/team/other/manifests/v1"]


async def test_a_connection_idle_for_up_to_90_seconds_is_used_again(
    connector: Connector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pulls a few seconds apart reuse their connections (Go's transport, which dockerd
    and skopeo use, keeps them 90 s; httpx alone, 5 s); past that, a new one is opened."""
    registry = serving_v1()
    idle = 0.0  # seconds added to httpcore's clock, which alone tells a connection's age
    monkeypatch.setattr(
        httpcore_http11, "time", SimpleNamespace(monotonic=lambda: time.monotonic() + idle)
    )
    async with serve_registry(registry) as server:
        client = await kept_alive(connector, server)
        opened = server.connections

        idle += KEEP_IDLE_SECONDS - 1
        await client.get_manifest("v1")
        assert server.connections == opened

        idle += KEEP_IDLE_SECONDS + 1
        await client.get_manifest("v1")
        assert server.connections == opened + 1
    assert len(registry.seen("GET", MANIFEST_PATH)) == 3


async def test_a_get_the_registry_hangs_up_on_goes_once_more_on_a_new_connection(
    connector: Connector,
) -> None:
    """A kept connection the registry closes as a request goes out on it (its idle timeout
    shorter than ours): the request did nothing, so it is sent again, as Go's transport
    does."""
    registry = serving_v1()
    async with serve_registry(registry) as server:
        client = await kept_alive(connector, server)
        opened = server.connections
        registry.on("GET", MANIFEST_PATH, Reply(hang_up=True), times=1)
        fetched = await client.get_manifest("v1")
    assert fetched.raw == manifest()
    assert len(registry.seen("GET", MANIFEST_PATH)) == 3
    assert server.connections == opened + 1


async def test_a_registry_that_hangs_up_twice_fails_the_request(connector: Connector) -> None:
    registry = serving_v1()
    async with serve_registry(registry) as server:
        client = await kept_alive(connector, server)
        registry.on("GET", MANIFEST_PATH, Reply(hang_up=True))
        with pytest.raises(TransientRegistryError, match="without sending a response"):
            await client.get_manifest("v1")
    assert len(registry.seen("GET", MANIFEST_PATH)) == 3  # the first, then one resend


async def test_a_request_with_a_body_is_not_sent_again_after_a_hang_up(
    connector: Connector,
) -> None:
    """A PUT may have done its work before the connection closed: the caller decides."""
    registry = serving_v1()
    async with serve_registry(registry) as server:
        client = await kept_alive(connector, server)
        registry.on("PUT", MANIFEST_PATH, Reply(hang_up=True))
        with pytest.raises(TransientRegistryError):
            await client.put_manifest("v2", OCI_MANIFEST, manifest("v2"))
    assert len(registry.seen("PUT", MANIFEST_PATH)) == 1


async def test_answers_with_short_bodies_nobody_reads_leave_their_connection_kept(
    connector: Connector,
) -> None:
    """A redirect (Docker Hub redirects every blob GET), a HEAD and a manifest PUT's
    answer: their bodies are read before they are closed, so the next request goes over
    the same connection (closed unread, each cost a new one: a TCP and TLS handshake)."""
    registry = serving_v1()
    digest = registry.add_blob(b"abc")
    registry.on("GET", BLOB_PATH, Reply(307, {"Location": "/elsewhere"}, body=b"moved"), times=1)
    registry.on("GET", "/elsewhere", lambda request: registry.blob_reply(request, digest))
    registry.on("PUT", MANIFEST_PATH, Reply(201, body=b"created"))
    async with serve_registry(registry) as server:
        client = await kept_alive(connector, server)
        opened = server.connections
        async with client.open_blob(digest) as blob:
            assert b"".join([chunk async for chunk in blob.chunks()]) == b"abc"
        assert await client.blob_size(digest) == 3
        await client.put_manifest("v2", OCI_MANIFEST, manifest("v2"))
        await client.get_manifest("v1")
        assert server.connections == opened


async def test_a_head_and_the_401s_of_a_login_leave_their_connection_kept(
    connector: Connector,
) -> None:
    """A HEAD of a blob over 64 KiB (no body, whatever its Content-Length), the 401 of a
    first request and the 401 of a revoked token."""
    registry = FakeRegistry(auth="bearer")
    registry.add_manifest(manifest(), OCI_MANIFEST, "v1")
    digest = registry.add_blob(b"x" * (1 << 20))
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        await client.get_manifest("v1")  # a 401, a token, the GET again
        opened = server.connections - server.rejected
        assert opened == 1
        assert await client.blob_size(digest) == 1 << 20
        registry.revoke_tokens()
        await client.get_manifest("v1")  # a 401, a new token, the GET again
        assert server.connections - server.rejected == opened


async def test_the_ping_before_a_first_streamed_request_leaves_its_connection_kept(
    connector: Connector,
) -> None:
    registry = serving_v1()
    registry.on("PATCH", "/v2/upload/1", Reply(202, {"Location": "/v2/upload/1"}))
    registry.on("PUT", "/v2/upload/1", Reply(201))

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"

    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        await client.upload_blob(sha256(b"abc"), 3, body, location=f"{server.url}/v2/upload/1")
        assert [r.method for r in registry.requests] == ["GET", "PATCH", "PUT"]
        assert server.connections - server.rejected == 1


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(Reply(201, body=b"created", cut_after=2), id="cut-short"),
        pytest.param(Reply(201, body=b"x" * (10 << 20)), id="long"),
        # h11 takes the chunks: read to its end, the connection would be kept.
        pytest.param(
            Reply(201, {"Content-Length": "10"}, body=b"x" * (8 << 20), framing="chunked"),
            id="endless-under-a-short-length",
        ),
    ],
)
async def test_an_unread_answer_whose_body_is_not_short_closes_its_connection(
    connector: Connector, answer: Reply
) -> None:
    """A body cut short is no error; a long one, or one longer than its Content-Length
    says, is not read past 64 KiB: the answer is closed with its connection."""
    registry = serving_v1()
    registry.on("PUT", MANIFEST_PATH, answer, times=1)
    async with serve_registry(registry) as server:
        client = await kept_alive(connector, server)
        opened = server.connections
        await client.put_manifest("v2", OCI_MANIFEST, manifest("v2"))
        await client.get_manifest("v1")
        assert server.connections == opened + 1


async def test_a_short_body_that_does_not_come_is_not_waited_for(connector: Connector) -> None:
    registry = serving_v1()
    release = anyio.Event()
    stalled = Reply(
        202, {"Location": "/v2/upload/1"}, body=b"0123456789", stall_after=2, release=release
    )
    registry.on("POST", "/v2/.*/blobs/uploads/", stalled, times=1)
    async with serve_registry(registry) as server:
        client = await kept_alive(connector, server)
        opened = server.connections
        with anyio.fail_after(5):  # not the 30 s read timeout
            assert await client.mount_blob(sha256(b"abc"), "team/other") == (
                f"{server.url}/v2/upload/1"
            )
        release.set()
        await client.get_manifest("v1")
        assert server.connections == opened + 1


async def test_concurrent_first_requests_choose_and_log_in_once(connector: Connector) -> None:
    registry = FakeRegistry(auth="bearer")
    registry.add_manifest(manifest(), OCI_MANIFEST, "v1")
    clients: list[RegistryClient] = []

    async def open_and_get() -> None:
        client = await open_client(connector, server)
        await client.get_manifest("v1")
        clients.append(client)

    async with serve_registry(registry) as server, anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(open_and_get)
    assert len(clients) == 3
    assert server.rejected == 1
    assert len(registry.token_requests) == 1
    # One request went without a token, and taught the others the challenge.
    unauthorized = [r for r in registry.requests if "authorization" not in r.headers]
    assert [r.path for r in unauthorized if r.path != "/token"] == [f"/v2/{REPO}/manifests/v1"]


async def test_a_reload_during_the_first_request_is_not_remembered(connector: Connector) -> None:
    registry = FakeRegistry()
    registry.add_manifest(manifest(), OCI_MANIFEST, "v1")
    reloaded: list[Request] = []

    def reload_once(request: Request) -> None:
        if not reloaded:
            reloaded.append(request)
            connector.reconfigure(RegistryService())
        # None: the registry's own answer

    registry.on("GET", MANIFEST_PATH, reload_once)
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)
        await client.get_manifest("v1")  # answered: the request succeeds all the same
        again = await open_client(connector, server)
        await again.get_manifest("v1")
        assert server.rejected == 2  # chosen anew: https tried again
        third = await open_client(connector, server)
        await third.get_manifest("v1")
    assert server.rejected == 2  # a choice made after the reload is kept


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


async def test_insecure_tls_registry_is_used_without_verification(
    connector: Connector, server_tls: ssl.SSLContext
) -> None:
    registry = FakeRegistry()
    registry.add_manifest(manifest(), OCI_MANIFEST, "v1")
    async with serve_registry(registry, ssl_context=server_tls) as server:
        client = await open_client(connector, server)
        await client.get_manifest("v1")
    assert client.endpoint.base_url == f"https://{server.host}"


async def test_a_blob_over_tls_comes_in_pieces_as_big_as_what_has_arrived(
    connector: Connector, server_tls: ssl.SSLContext
) -> None:
    """TLS is the event loop's transport: what the socket holds is decrypted and handed
    on at once, not one 16 KiB TLS record per receive (each a trip through anyio,
    httpcore, h11 and httpx on the event loop)."""
    registry = FakeRegistry()
    blob = random.Random(7).randbytes(512 * 1024)
    digest = registry.add_blob(blob)
    async with serve_registry(registry, ssl_context=server_tls) as server:
        client = await open_client(connector, server)
        async with client.open_blob(digest) as answer:
            await anyio.sleep(0.3)  # the whole answer arrives meanwhile
            pieces = [chunk async for chunk in answer.chunks()]
    assert client.endpoint.base_url.startswith("https://")
    assert b"".join(pieces) == blob
    assert len(pieces) <= 4, [len(piece) for piece in pieces]


async def test_a_blob_over_tls_is_decrypted_into_a_kept_buffer(
    connector: Connector, server_tls: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's TLS transport decrypts the records into a buffer kept for it, not into
    a new object per 16 KiB record."""
    given: list[memoryview] = []
    get_buffer = streams._DecryptedInto.get_buffer

    def watched(self: streams._DecryptedInto, sizehint: int) -> memoryview:
        buffer = get_buffer(self, sizehint)
        given.append(buffer)
        return buffer

    monkeypatch.setattr(streams._DecryptedInto, "get_buffer", watched)
    registry = FakeRegistry()
    blob = random.Random(8).randbytes(2 << 20)
    digest = registry.add_blob(blob)
    async with serve_registry(registry, ssl_context=server_tls) as server:
        client = await open_client(connector, server)
        async with client.open_blob(digest) as answer:
            received = b"".join([chunk async for chunk in answer.chunks()])
    assert received == blob
    assert given, "the loop's TLS transport never asked for the buffer"
    assert all(buffer is given[0] for buffer in given), "a new buffer for a read"


async def test_tls_inside_tls_works(ca: trustme.CA, server_tls: ssl.SSLContext) -> None:
    """A registry behind an HTTPS proxy is TLS inside the proxy's TLS: the inner layer
    starts on the loop's TLS transport of the outer one."""

    async def serve_twice_wrapped(stream: anyio.abc.SocketStream) -> None:
        outer = await TLSStream.wrap(stream, server_side=True, ssl_context=server_tls)
        inner = await TLSStream.wrap(outer, server_side=True, ssl_context=server_tls)
        await inner.send(b"hello from inside")
        await inner.aclose()

    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, serve_twice_wrapped)
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            plain = await httpcore.AnyIOBackend().connect_tcp("127.0.0.1", port)
            outer = await plain.start_tls(trusting, "localhost")
            inner = await outer.start_tls(trusting, "localhost")
            assert await inner.read(100) == b"hello from inside"
            await inner.aclose()
            tg.cancel_scope.cancel()


async def test_a_tls_registry_through_a_tunnelling_proxy(server_tls: ssl.SSLContext) -> None:
    """`proxy`: an HTTPS registry is reached through the proxy's CONNECT tunnel, TLS on
    the tunnel being the event loop's own transport."""
    registry = FakeRegistry()
    registry.add_manifest(manifest(), OCI_MANIFEST, "v1")
    blob = random.Random(5).randbytes(300_000)
    digest = registry.add_blob(blob)
    async with (
        serve_connect_proxy() as proxy,
        serve_registry(registry, ssl_context=server_tls) as server,
    ):
        connector = Connector(RegistryService(), proxy=proxy.url)
        try:
            client = await open_client(connector, server)
            await client.get_manifest("v1")
            async with client.open_blob(digest) as answer:
                received = b"".join([chunk async for chunk in answer.chunks()])
        finally:
            await connector.aclose()
    assert client.endpoint.base_url == f"https://{server.host}"
    assert received == blob
    assert proxy.tunnels
    assert set(proxy.tunnels) == {server.host}


async def test_secure_registry_with_an_unknown_ca(server_tls: ssl.SSLContext) -> None:
    connector = Connector(RegistryService(insecure_registries=["10.0.0.0/8"]))
    try:
        async with serve_registry(FakeRegistry(), ssl_context=server_tls) as server:
            client = await open_client(connector, server)
            with pytest.raises(RegistryUnreachableError) as caught:
                await client.get_manifest("v1")
    finally:
        await connector.aclose()
    message = str(caught.value)
    assert "certificate verification failed" in message
    assert f"certs.d/{server.host}/ca.crt" in message
    assert server.requests == []


async def test_secure_registry_with_its_ca_in_certs_d(
    tmp_path: Path, ca: trustme.CA, server_tls: ssl.SSLContext
) -> None:
    registry = FakeRegistry()
    registry.add_manifest(manifest(), OCI_MANIFEST, "v1")
    async with serve_registry(registry, ssl_context=server_tls) as server:
        trust(tmp_path / "certs.d", server.host, ca)
        connector = Connector(RegistryService(["10.0.0.0/8"], certs_dir=tmp_path / "certs.d"))
        try:
            client = await open_client(connector, server)
            await client.get_manifest("v1")
        finally:
            await connector.aclose()
    assert client.endpoint.base_url == f"https://{server.host}"
    assert not client.endpoint.insecure


async def test_unreachable_registry(connector: Connector) -> None:
    client = await connector.open("127.0.0.1:1", REPO, ANONYMOUS)
    with pytest.raises(RegistryUnreachableError, match=r"127\.0\.0\.1:1"):
        await client.get_manifest("v1")


# -- tag lists --------------------------------------------------------------------------


async def test_tag_lists_are_read_page_after_page(connector: Connector) -> None:
    registry = FakeRegistry()

    def page(request: Request) -> Reply:
        if request.query.get("last") == "b":
            return Reply(body=json.dumps({"name": REPO, "tags": ["c"]}).encode())
        return Reply(
            headers={"Link": f'</v2/{REPO}/tags/list?n=2&last=b>; rel="next"'},
            body=json.dumps({"name": REPO, "tags": ["a", "b"]}).encode(),
        )

    registry.on("GET", f"/v2/{REPO}/tags/list", page)
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)

        assert await client.list_tags() == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(body=b"[1, 2]"), "is not a tag list"),
        (Reply(body=b'{"tags": [1]}'), "is not a tag list"),
        (
            Reply(
                headers={"Link": '<http://elsewhere.example/v2/x/tags/list>; rel="next"'},
                body=b'{"tags": ["a"]}',
            ),
            "the next page is on another host",
        ),
    ],
)
async def test_a_tag_list_that_makes_no_sense_is_a_protocol_error(
    connector: Connector, reply: Reply, message: str
) -> None:
    registry = FakeRegistry()
    registry.on("GET", f"/v2/{REPO}/tags/list", reply)
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)

        with pytest.raises(RegistryProtocolError, match=message):
            await client.list_tags()


async def test_a_repository_without_tags_lists_none(connector: Connector) -> None:
    registry = FakeRegistry()
    registry.on("GET", f"/v2/{REPO}/tags/list", Reply(body=b'{"name": "x", "tags": null}'))
    async with serve_registry(registry) as server:
        client = await open_client(connector, server)

        assert await client.list_tags() == []


async def test_a_tls_answer_the_registry_closes_after_reaches_a_late_reader_whole(
    connector: Connector, server_tls: ssl.SSLContext
) -> None:
    """The body and the FIN behind it arrive while nothing reads: the FIN must not drop
    the body the TLS layer holds undelivered."""
    registry = FakeRegistry()
    data = random.Random(3).randbytes(100_000)
    digest = registry.add_blob(data)
    registry.on("GET", BLOB_PATH, lambda r: _cut(registry.blob_reply(r, digest), len(data)))
    async with serve_registry(registry, ssl_context=server_tls) as server:
        client = await open_client(connector, server)
        async with client.open_blob(digest) as blob:
            await anyio.sleep(0.3)  # the body, then the FIN, arrive meanwhile
            received = b"".join([chunk async for chunk in blob.chunks()])
    assert received == data


async def test_a_kept_tls_connection_the_registry_closed_is_not_used_again(
    ca: trustme.CA, server_tls: ssl.SSLContext
) -> None:
    """A registry whose idle timeout is shorter than ours closes a kept connection: the
    next request, a PUT too (never sent twice), goes on a new one."""
    connections = 0

    async def answer_once_then_close(stream: anyio.abc.SocketStream) -> None:
        nonlocal connections
        connections += 1
        tls = await TLSStream.wrap(stream, server_side=True, ssl_context=server_tls)
        request = b""
        while b"\r\n\r\n" not in request:
            request += await tls.receive()
        await tls.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await anyio.sleep(0.05)
        await anyio.aclose_forcefully(tls)  # its idle timeout ran out

    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    limits = httpx.Limits(keepalive_expiry=KEEP_IDLE_SECONDS)
    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, answer_once_then_close)
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            async with httpx.AsyncClient(verify=trusting, limits=limits) as http:
                for _ in range(2):
                    response = await http.put(f"https://localhost:{port}/", content=b"x")
                    assert response.text == "ok"
                    await anyio.sleep(0.3)  # the registry closes the connection meanwhile
            tg.cancel_scope.cancel()
    assert connections == 2


async def test_a_registry_closing_with_close_notify_logs_no_loop_warning(
    ca: trustme.CA, server_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    """An answer that ends with the registry's close_notify (`Connection: close`): the TLS
    transport closes itself, and a protocol that asked to stay half-open would have
    asyncio log a warning for every such answer."""

    async def answer_then_close_notify(stream: anyio.abc.SocketStream) -> None:
        tls = await TLSStream.wrap(stream, server_side=True, ssl_context=server_tls)
        request = b""
        while b"\r\n\r\n" not in request:
            request += await tls.receive()
        await tls.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nok")
        with contextlib.suppress(anyio.BrokenResourceError, OSError):
            await tls.aclose()  # close_notify, then FIN

    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    with anyio.fail_after(10), caplog.at_level("WARNING", logger="asyncio"):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, answer_then_close_notify)
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            async with httpx.AsyncClient(verify=trusting) as http:
                for _ in range(3):  # the close_notify comes while the answer is read
                    assert (await http.get(f"https://localhost:{port}/")).text == "ok"
            tg.cancel_scope.cancel()
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
