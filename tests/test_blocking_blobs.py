"""Blobs read in a worker thread (`registry/blocking.py`), through
RegistryClient.open_blob(whole=…): small ones whole, big ones into their taker
(`into=…`) as they are read; against fake registries on loopback: the same requests,
answers and errors as the async client's, one GET each."""

from __future__ import annotations

import base64
import gzip
import json
import random
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
import structlog
import trustme

from ferryd.errors import (
    AccessDeniedError,
    AuthenticationError,
    NotFoundError,
    RangeNotSatisfiableError,
    RegistryError,
    RegistryProtocolError,
    RegistryUnreachableError,
    TooManyRequestsError,
    TransientRegistryError,
)
from ferryd.oci.digest import Digest
from ferryd.oci.mediatypes import OCI_MANIFEST
from ferryd.registry import connector as connector_module
from ferryd.registry.auth import ANONYMOUS
from ferryd.registry.blocking import BlockingConnections, _Call
from ferryd.registry.client import BlobResponse, OpenBlob, ReadBlob, RegistryClient
from ferryd.registry.connector import USER_AGENT, Connector
from ferryd.registry.endpoints import RegistryService
from support.daemon import Daemon, errors
from support.fakes import (
    FakeRegistry,
    FakeServer,
    Reply,
    Request,
    registry_error,
    serve_connect_proxy,
    serve_registry,
)
from support.images import LayerSpec, build_image, seed
from support.registry import PASSWORD, USER, Registry, trust
from support.waiting import await_until

REPO = "team/app"
BLOB_PATH = f"/v2/{REPO}/blobs/.+"
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
async def connector() -> AsyncIterator[Connector]:
    connector = Connector(RegistryService(), connect_timeout=5, read_timeout=5)
    yield connector
    await connector.aclose()


def registry_with(*blobs: bytes, auth: str = "none") -> tuple[FakeRegistry, list[Digest]]:
    registry = FakeRegistry(auth=auth)  # type: ignore[arg-type]
    registry.add_manifest(MANIFEST, OCI_MANIFEST, "v1")
    return registry, [registry.add_blob(blob) for blob in blobs]


async def chosen(
    connector: Connector, server: FakeServer, meta: dict[str, str] | None = None
) -> RegistryClient:
    """A client whose endpoint is chosen (its manifest fetched), as a pull's is by the
    time it asks for layers."""
    client = await connector.open(server.host, REPO, ANONYMOUS, meta_headers=meta)
    await client.get_manifest("v1")
    return client


async def read(client: RegistryClient, digest: Digest, size: int) -> tuple[type, bytes]:
    """How the blob's answer came (read whole, or streamed), and its bytes."""
    async with client.open_blob(digest, whole=size) as blob:
        return type(blob), b"".join([chunk async for chunk in blob.chunks()])


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@asynccontextmanager
async def serving(
    connector: Connector, count: int
) -> AsyncIterator[tuple[FakeRegistry, FakeServer, RegistryClient, dict[Digest, bytes]]]:
    """`count` small blobs served, and a chosen client of the registry."""
    blobs = [blob(3000, seed) for seed in range(count)]
    registry, digests = registry_with(*blobs)
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        yield registry, server, client, dict(zip(digests, blobs, strict=True))


async def read_at_once(client: RegistryClient, blobs: dict[Digest, bytes]) -> None:
    async def one(digest: Digest, data: bytes) -> None:
        assert await read(client, digest, len(data)) == (ReadBlob, data)

    async with anyio.create_task_group() as group:
        for digest, data in blobs.items():
            group.start_soon(one, digest, data)


async def test_a_small_blob_is_read_whole_with_the_clients_headers(connector: Connector) -> None:
    data = blob(300_000)
    registry, (digest,) = registry_with(data)
    async with serve_registry(registry) as server:
        client = await chosen(connector, server, meta={"X-Meta-Team": "ops"})
        kind, got = await read(client, digest, len(data))
    assert (kind, got) == (ReadBlob, data)
    (request,) = registry.seen("GET", BLOB_PATH)
    # The request line names the path, as an origin server expects, not the whole URL.
    assert request.target == f"/v2/{REPO}/blobs/{digest}"
    assert request.headers["user-agent"] == USER_AGENT
    assert request.headers["accept-encoding"] == "identity"
    assert request.headers["x-meta-team"] == "ops"


async def test_the_login_goes_with_the_blob_get(connector: Connector) -> None:
    data = blob(5000)
    registry, (digest,) = registry_with(data, auth="bearer")
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        assert await read(client, digest, len(data)) == (ReadBlob, data)
    (request,) = registry.seen("GET", BLOB_PATH)
    assert request.headers["authorization"].startswith("Bearer token-")


async def test_blobs_read_one_after_another_share_one_kept_connection(
    connector: Connector,
) -> None:
    async with serving(connector, 3) as (_, server, client, blobs):
        before = server.connections
        for digest, data in blobs.items():
            assert await read(client, digest, len(data)) == (ReadBlob, data)
    assert server.connections == before + 1


async def test_connections_opened_ahead_serve_the_reads_that_come_at_once(
    connector: Connector,
) -> None:
    async with serving(connector, 3) as (registry, server, client, blobs):
        before = server.connections
        await client.open_connections(3)
        await await_until(lambda: server.connections == before + 3)
        await client.open_connections(3)  # open already: none more
        await read_at_once(client, blobs)
    assert server.connections == before + 3
    assert len(registry.seen("GET", BLOB_PATH)) == 3


async def test_connections_that_cannot_be_opened_are_left_for_the_reads_to_report(
    connector: Connector,
) -> None:
    data = blob(3000)
    registry, (digest,) = registry_with(data)
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
    await client.open_connections(2)  # the registry is gone: nothing is raised here
    with pytest.raises(RegistryUnreachableError, match="cannot reach"):
        await read(client, digest, len(data))


async def test_a_revoked_token_is_renewed_and_the_blob_asked_for_again_once(
    connector: Connector,
) -> None:
    data = blob(5000)
    registry, (digest,) = registry_with(data, auth="bearer")
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        registry.revoke_tokens()
        assert await read(client, digest, len(data)) == (BlobResponse, data)
    first, second = registry.seen("GET", BLOB_PATH)  # as many as the async client sends
    assert first.headers["authorization"] != second.headers["authorization"]
    assert len(registry.token_requests) == 2


async def test_a_redirecting_endpoint_has_its_blobs_follow_the_async_way(
    connector: Connector,
) -> None:
    first, second = blob(4000, 1), blob(4000, 2)
    registry, digests = registry_with(first, second)

    def to_storage(request: Request) -> Reply:
        return Reply(307, {"Location": f"/storage/{request.path.rsplit('/', 1)[1]}"})

    def storage(request: Request) -> Reply:
        return registry.blob_reply(request, request.path.rsplit("/", 1)[1])

    registry.on("GET", BLOB_PATH, to_storage)
    registry.on("GET", "/storage/.+", storage)
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        assert await read(client, digests[0], 4000) == (BlobResponse, first)
        assert await read(client, digests[1], 4000) == (BlobResponse, second)
    # The first blob's redirect was met by the worker thread and then by the async
    # client; the second's only by the async client.
    assert len(registry.seen("GET", BLOB_PATH)) == 3
    assert len(registry.seen("GET", "/storage/.+")) == 2


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (registry_error(404, "BLOB_UNKNOWN", "blob unknown to registry"), NotFoundError),
        (registry_error(403, "DENIED", "requested access is denied"), AccessDeniedError),
        (Reply(416, {"Content-Range": "bytes */10"}), RangeNotSatisfiableError),
        (registry_error(500, "UNKNOWN", "disk on fire"), TransientRegistryError),
    ],
    ids=["404", "403", "416", "500"],
)
async def test_an_error_answer_is_the_same_error_as_the_async_clients(
    connector: Connector, reply: Reply, error: type[RegistryError]
) -> None:
    registry, (digest,) = registry_with(blob(100))
    registry.on("GET", BLOB_PATH, reply)
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        with pytest.raises(error) as whole:
            await read(client, digest, 100)
        with pytest.raises(error) as streamed:
            async with client.open_blob(digest):
                pass
    assert str(whole.value) == str(streamed.value)
    assert len(registry.seen("GET", BLOB_PATH)) == 2  # one each


async def test_a_429_says_how_long_to_wait_and_a_gzipped_error_body_is_read(
    connector: Connector,
) -> None:
    registry, (digest,) = registry_with(blob(100))
    said = json.dumps({"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]})
    headers = {"Retry-After": "7", "Content-Encoding": "gzip"}
    registry.on("GET", BLOB_PATH, Reply(429, headers, gzip.compress(said.encode())))
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        with pytest.raises(TooManyRequestsError, match="slow down") as caught:
            await read(client, digest, 100)
    assert caught.value.retry_after == 7


async def test_more_bytes_than_the_size_are_not_read_past_and_the_connection_is_not_reused(
    connector: Connector,
) -> None:
    data, other = blob(5000, 1), blob(5000, 2)
    registry, (digest, other_digest) = registry_with(data, other)
    # One byte more, then nothing: neither waited for, nor left for the next answer.
    lying = Reply(200, {}, data + b"!" * 100, stall_after=len(data) + 1)
    registry.on("GET", BLOB_PATH, lying, times=1)
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        async with client.open_blob(digest, whole=len(data)) as answer:
            assert isinstance(answer, ReadBlob)
            assert len(answer.body) == len(data) + 1  # one byte past: enough to refuse it
        # The unread rest must not be taken for the next answer.
        assert await read(client, other_digest, len(other)) == (ReadBlob, other)
    assert len(registry.seen("GET", BLOB_PATH)) == 2


async def test_a_body_cut_short_gives_what_came_then_a_retryable_error(
    connector: Connector,
) -> None:
    data = blob(600_000)
    registry, (digest,) = registry_with(data)
    registry.on("GET", BLOB_PATH, Reply(200, {}, data, cut_after=250_000, cut_delay=0))
    got: list[bytes] = []

    async def take(client: RegistryClient) -> None:
        async with client.open_blob(digest, whole=len(data)) as answer:
            async for chunk in answer.chunks():
                got.append(chunk)  # noqa: PERF401 - kept when the cut ends the loop

    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        with pytest.raises(TransientRegistryError, match="connection failed") as caught:
            await take(client)
    assert b"".join(got) == data[:250_000]  # every byte before the cut, to resume after
    assert caught.value.retryable


async def test_a_kept_connection_the_registry_closed_is_sent_again_once(
    connector: Connector,
) -> None:
    first, second = blob(5000, 1), blob(5000, 2)
    registry, (one, two) = registry_with(first, second)
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        assert await read(client, one, 5000) == (ReadBlob, first)  # its connection kept
        registry.on("GET", BLOB_PATH, Reply(hang_up=True), times=1)
        assert await read(client, two, 5000) == (ReadBlob, second)
    assert len(registry.seen("GET", BLOB_PATH)) == 3


async def test_a_stalled_answer_times_out_naming_the_setting() -> None:
    registry, (digest,) = registry_with(blob(5000))
    registry.on("GET", BLOB_PATH, Reply(200, {}, blob(5000), stall_after=10))
    connector = Connector(RegistryService(), connect_timeout=5, read_timeout=0.2)
    try:
        async with serve_registry(registry) as server:
            client = await chosen(connector, server)
            with pytest.raises(TransientRegistryError, match=r"within 0.2 s .*\(read_timeout\)"):
                await read(client, digest, 5000)
    finally:
        await connector.aclose()


async def never_answered(request: Request) -> Reply:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    "stall",
    [Reply(200, {}, blob(5000), stall_after=10), never_answered],
    ids=["in-the-body", "before-the-headers"],
)
async def test_a_cancelled_read_of_a_stalled_registry_lets_its_thread_go_at_once(
    stall: Reply | Callable[[Request], Awaitable[Reply]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker thread is not left waiting for the read timeout (30 s here): its
    connection is shut, which ends the read it waits in."""
    registry, (digest,) = registry_with(blob(5000))
    registry.on("GET", BLOB_PATH, stall)
    ended = threading.Event()
    original = BlockingConnections._get

    def watched(self: BlockingConnections, *args: object, **kwargs: object) -> object:
        try:
            return original(self, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            ended.set()

    monkeypatch.setattr(BlockingConnections, "_get", watched)
    slow = Connector(RegistryService(), connect_timeout=5, read_timeout=30)
    try:
        async with serve_registry(registry) as server:
            client = await chosen(slow, server)
            with anyio.move_on_after(0.3) as scope:
                await read(client, digest, 5000)
            assert scope.cancelled_caught
            started = time.monotonic()
            await anyio.to_thread.run_sync(ended.wait, 10)
            assert time.monotonic() - started < 5
        assert len(registry.seen("GET", BLOB_PATH)) == 1  # the shut one is not sent again
    finally:
        await slow.aclose()


async def test_a_whole_body_is_kept_by_the_call_that_read_it_and_its_error_raised_after(
    connector: Connector,
) -> None:
    data = blob(5000)
    registry, (digest,) = registry_with(data)
    threads: list[str] = []

    def keep(body: bytes) -> int:
        threads.append(threading.current_thread().name)
        return len(body)

    def refuse(body: bytes) -> int:
        raise ValueError("not this one")

    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        async with client.open_blob(digest, whole=len(data), keep=keep) as kept:
            assert isinstance(kept, ReadBlob)
            assert kept.kept is not None
            assert kept.kept.result() == len(data)
        async with client.open_blob(digest, whole=len(data), keep=refuse) as refused:
            assert isinstance(refused, ReadBlob)
            assert refused.kept is not None
            with pytest.raises(ValueError, match="not this one"):
                refused.kept.result()
    assert threads[0] != threading.main_thread().name


async def test_a_body_of_another_size_than_asked_is_not_kept(connector: Connector) -> None:
    data = blob(5000)
    registry, (digest,) = registry_with(data)
    kept: list[bytes] = []
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        async with client.open_blob(digest, whole=4000, keep=kept.append) as longer:
            assert isinstance(longer, ReadBlob)
            assert longer.kept is None
    assert kept == []


async def read_into(
    client: RegistryClient, digest: Digest, size: int
) -> tuple[list[bytes], set[str], ReadBlob]:
    """A blob read into a taker: the batches it took, in which threads, and the answer."""
    batches: list[bytes] = []
    threads: set[str] = set()

    def take(batch: bytes) -> None:
        batches.append(batch)
        threads.add(threading.current_thread().name)

    async with client.open_blob(digest, whole=size, into=take) as answer:
        assert isinstance(answer, ReadBlob)
        assert [chunk async for chunk in answer.chunks()] == []  # it all went to `take`
    return batches, threads, answer


async def consume(opened: AbstractAsyncContextManager[OpenBlob]) -> None:
    """Open a blob's answer and take its chunks: a cut is raised after them."""
    async with opened as answer:
        async for _ in answer.chunks():
            pass


def joined(batches: list[bytes]) -> bytes:
    return b"".join(batches)


async def test_a_big_blob_goes_into_its_taker_a_mib_at_a_time_in_the_worker_thread(
    connector: Connector,
) -> None:
    data = blob(5 * 2**19)  # 2.5 MiB
    registry, (digest,) = registry_with(data)
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        batches, threads, answer = await read_into(client, digest, len(data))
    assert answer.streamed
    assert answer.body == b""
    assert [len(batch) for batch in batches] == [2**20, 2**20, 2**19]
    assert joined(batches) == data
    assert threading.current_thread().name not in threads


async def test_a_body_cut_short_goes_into_the_taker_up_to_the_cut_then_a_retryable_error(
    connector: Connector,
) -> None:
    data = blob(3 * 2**20)
    registry, (digest,) = registry_with(data)
    registry.on("GET", BLOB_PATH, Reply(200, {}, data, cut_after=2**20 + 5000, cut_delay=0))
    batches: list[bytes] = []
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        with pytest.raises(TransientRegistryError, match="connection failed") as caught:
            await consume(client.open_blob(digest, whole=len(data), into=batches.append))
    assert joined(batches) == data[: 2**20 + 5000]  # all of it: a resume asks for the rest
    assert caught.value.retryable


async def test_a_stall_hands_over_the_mibs_read_before_it_and_loses_the_one_being_read() -> None:
    data = blob(3 * 2**20)
    registry, (digest,) = registry_with(data)
    registry.on("GET", BLOB_PATH, Reply(200, {}, data, stall_after=3 * 2**19))  # 1.5 MiB
    batches: list[bytes] = []
    quick = Connector(RegistryService(), connect_timeout=5, read_timeout=0.5)
    try:
        async with serve_registry(registry) as server:
            client = await chosen(quick, server)
            with pytest.raises(TransientRegistryError, match="timed out"):
                await consume(client.open_blob(digest, whole=len(data), into=batches.append))
    finally:
        await quick.aclose()
    # The MiB being read when the registry fell silent is lost (the transfer then reads
    # the way that keeps every byte, if it lost all: see test_download_faults).
    assert joined(batches) == data[: 2**20]


async def test_what_the_taker_raises_ends_the_read_and_the_connection(
    connector: Connector,
) -> None:
    data, other = blob(3 * 2**20, 1), blob(5000, 2)
    registry, (digest, other_digest) = registry_with(data, other)

    def refuse(batch: bytes) -> None:
        raise ValueError("the disk is full")

    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        with pytest.raises(ValueError, match="the disk is full"):
            async with client.open_blob(digest, whole=len(data), into=refuse):
                pass
        # The unread rest is not taken for the next answer.
        assert await read(client, other_digest, len(other)) == (ReadBlob, other)


@pytest.mark.parametrize(
    ("status", "headers"),
    [(206, {"Content-Range": "bytes 0-4999/5000"}), (302, {})],
    ids=["206-to-no-range", "3xx-without-location"],
)
async def test_another_answer_than_a_200_to_a_read_into_a_taker_is_asked_for_the_async_way(
    connector: Connector, status: int, headers: dict[str, str]
) -> None:
    """Its body is not read (it could be as big as the blob): the connection is closed,
    and the async client asks again and sorts it out."""
    data = blob(5000)
    registry, (digest,) = registry_with(data)
    registry.on("GET", BLOB_PATH, Reply(status, headers, data, stall_after=1000), times=1)
    taken: list[bytes] = []
    started = time.monotonic()
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        async with client.open_blob(digest, whole=len(data), into=taken.append) as got:
            assert isinstance(got, BlobResponse)
            assert b"".join([chunk async for chunk in got.chunks()]) == data
    assert time.monotonic() - started < 3  # not the read timeout (5 s) on its body
    assert taken == []
    assert len(registry.seen("GET", BLOB_PATH)) == 2


@pytest.mark.parametrize(("how", "size"), [("keep", 5000), ("into", 3 * 2**20)])
async def test_a_read_cancelled_while_its_body_is_kept_or_taken_waits_for_that_to_end(
    connector: Connector, how: str, size: int
) -> None:
    data = blob(size)
    registry, (digest,) = registry_with(data)
    holding, release = threading.Event(), threading.Event()
    ended: list[float] = []

    def hold(body: bytes) -> None:
        holding.set()
        release.wait(10)
        ended.append(time.monotonic())

    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        async with anyio.create_task_group() as group:

            async def reading() -> None:
                keep, into = (hold, None) if how == "keep" else (None, hold)
                async with client.open_blob(digest, whole=len(data), keep=keep, into=into):
                    pass

            group.start_soon(reading)
            await anyio.to_thread.run_sync(holding.wait, 10)
            group.cancel_scope.cancel()
            threading.Timer(0.3, release.set).start()
        cancelled_at = time.monotonic()
    assert ended
    assert max(ended) <= cancelled_at  # the cancelled read waited for it
    assert len(ended) == 1  # and handed nothing more on


@pytest.mark.parametrize(
    "answer",
    [
        Reply(200, {"Connection": "close"}, blob(3 * 2**20), stall_after=2**20 + 5000),
        Reply(200, {}, blob(3 * 2**20), framing="close", stall_after=2**20 + 5000),
    ],
    ids=["connection-close", "no-length"],
)
async def test_a_read_into_a_taker_cancelled_while_the_registry_is_silent_ends_at_once(
    answer: Reply,
) -> None:
    """http.client lets go of the socket of an answer that will close its connection:
    the read waiting on it is woken all the same, not left to the read timeout (30 s)."""
    registry, (digest,) = registry_with(answer.body)
    registry.on("GET", BLOB_PATH, answer)
    taken = threading.Event()
    slow = Connector(RegistryService(), connect_timeout=5, read_timeout=30)
    try:
        async with serve_registry(registry) as server:
            client = await chosen(slow, server)
            async with anyio.create_task_group() as group:

                async def reading() -> None:
                    into = lambda batch: taken.set()  # noqa: E731 - a one-line taker
                    async with client.open_blob(digest, whole=len(answer.body), into=into):
                        pass

                group.start_soon(reading)
                await anyio.to_thread.run_sync(taken.wait, 10)
                await anyio.sleep(0.2)  # the worker now waits on the silent socket
                started = time.monotonic()
                group.cancel_scope.cancel()
            assert time.monotonic() - started < 5
    finally:
        await slow.aclose()


def test_a_read_abandoned_before_its_body_is_kept_never_keeps_it() -> None:
    call = _Call(keep_idle=90)
    kept: list[bytes] = []

    assert call.abandon() is False  # nothing was being kept: nothing to wait for
    assert call.keep(kept.append, b"body") is None
    assert kept == []


async def test_through_a_proxy_blobs_go_the_async_way(server_tls: ssl.SSLContext) -> None:
    data = blob(5000)
    registry, (digest,) = registry_with(data)
    async with (
        serve_connect_proxy() as proxy,
        serve_registry(registry, ssl_context=server_tls) as server,
    ):
        connector = Connector(RegistryService(), proxy=proxy.url)
        try:
            client = await chosen(connector, server)
            assert await read(client, digest, len(data)) == (BlobResponse, data)
        finally:
            await connector.aclose()


async def test_over_tls_the_endpoints_certificates_are_checked(
    tmp_path: Path, ca: trustme.CA, server_tls: ssl.SSLContext
) -> None:
    data = blob(200_000)
    registry, (digest,) = registry_with(data)
    async with serve_registry(registry, ssl_context=server_tls) as server:
        trust(tmp_path / "certs.d", server.host, ca)
        service = RegistryService(insecure_registries=[], certs_dir=tmp_path / "certs.d")
        connector = Connector(service)
        try:
            client = await chosen(connector, server)
            assert client.endpoint.base_url.startswith("https://")
            assert await read(client, digest, len(data)) == (ReadBlob, data)
        finally:
            await connector.aclose()


async def test_each_read_leaves_the_debug_line_of_a_registry_request(
    connector: Connector,
) -> None:
    data = blob(5000)
    registry, (digest,) = registry_with(data)
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        with structlog.testing.capture_logs() as logged:
            await read(client, digest, len(data))
    (line,) = [entry for entry in logged if entry["event"] == "registry.request"]
    assert line["path"] == f"/v2/{REPO}/blobs/{digest}"
    assert (line["method"], line["host"], line["status"], line["bytes"]) == (
        "GET",
        server.host,
        200,
        5000,
    )


@pytest.mark.parametrize("whole", [True, False], ids=["read-whole", "streamed"])
async def test_a_login_refused_every_time_costs_one_retry_and_one_token_either_way(
    connector: Connector, whole: bool
) -> None:
    data = blob(5000)
    registry, (digest,) = registry_with(data, auth="bearer")

    def refused(request: Request) -> None:
        registry.revoke_tokens()  # the normal answer is then a 401 (invalid_token)

    registry.on("GET", BLOB_PATH, refused)
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        tokens = len(registry.token_requests)
        with pytest.raises(AuthenticationError):
            async with client.open_blob(digest, whole=len(data) if whole else None):
                pass
    assert len(registry.seen("GET", BLOB_PATH)) == 2
    assert len(registry.token_requests) == tokens + 1


@pytest.mark.parametrize("whole", [True, False], ids=["read-whole", "streamed"])
async def test_an_answer_that_is_not_http_is_not_asked_for_again(
    connector: Connector, whole: bool
) -> None:
    registry, (digest,) = registry_with(blob(5000))
    registry.on("GET", BLOB_PATH, Reply(raw=b"HTTX/9 what\r\n\r\n"))
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        with pytest.raises(TransientRegistryError) as caught:
            async with client.open_blob(digest, whole=5000 if whole else None):
                pass
    assert len(registry.seen("GET", BLOB_PATH)) == 1
    assert "\r" not in str(caught.value)


async def test_an_informational_answer_first_sends_the_blob_the_async_way(
    connector: Connector,
) -> None:
    """http.client takes a 103 for the answer; h11, under the async client, skips it."""
    data = blob(5000)
    registry, (digest,) = registry_with(data)
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
    registry.on("GET", BLOB_PATH, lambda r: replace(registry.answer(r), before=hints), times=1)
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        assert await read(client, digest, len(data)) == (BlobResponse, data)


async def test_a_connection_idle_longer_than_the_async_clients_is_not_used_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connector_module, "KEEP_IDLE_SECONDS", 0.2)
    first, second = blob(3000, 1), blob(3000, 2)
    registry, (one, two) = registry_with(first, second)
    brief = Connector(RegistryService())
    try:
        async with serve_registry(registry) as server:
            client = await chosen(brief, server)
            assert await read(client, one, 3000) == (ReadBlob, first)
            before = server.connections
            await anyio.sleep(0.4)
            assert await read(client, two, 3000) == (ReadBlob, second)
            assert server.connections == before + 1
            await anyio.sleep(0.4)
            await client.open_connections(1)  # opened anew, not the idle one kept
            await await_until(lambda: server.connections == before + 2)
            assert await read(client, one, 3000) == (ReadBlob, first)
        assert server.connections == before + 2
    finally:
        await brief.aclose()


async def test_more_reads_at_once_than_connections_kept_wait_for_one(
    connector: Connector, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(connector, 24) as (_, server, client, blobs):
        before = server.connections
        await read_at_once(client, blobs)
    assert server.connections - before <= 16
    assert not [r for r in caplog.records if r.name.startswith("urllib3")]


async def test_a_3xx_without_a_location_is_the_blob_as_the_async_client_takes_it(
    connector: Connector,
) -> None:
    data = blob(300_000)
    registry, (digest,) = registry_with(data)
    registry.on("GET", BLOB_PATH, Reply(302, {}, data))
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        assert await read(client, digest, len(data)) == (ReadBlob, data)


async def test_a_206_from_elsewhere_than_byte_0_is_refused(connector: Connector) -> None:
    data = blob(5000)
    registry, (digest,) = registry_with(data)
    registry.on("GET", BLOB_PATH, Reply(206, {"Content-Range": "bytes 5-4999/5000"}, data[5:]))
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        with pytest.raises(RegistryProtocolError, match="asked for bytes from 0, got from 5"):
            await read(client, digest, len(data))


async def test_an_insecure_tls_registrys_blobs_are_read_whole_unverified(
    connector: Connector, server_tls: ssl.SSLContext
) -> None:
    data = blob(5000)
    registry, (digest,) = registry_with(data)
    async with serve_registry(registry, ssl_context=server_tls) as server:
        client = await chosen(connector, server)  # loopback: insecure, by default
        assert client.endpoint.base_url.startswith("https://")
        assert await read(client, digest, len(data)) == (ReadBlob, data)


def test_a_daemon_reads_an_insecure_tls_registrys_small_layers_without_a_warning(
    tls_registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    """Loopback is insecure: the certificate is not checked, by the operator's choice;
    urllib3 would print a warning to stderr at each blob read whole."""
    built = build_image(tmp_path / "image", layers=[LayerSpec(size=4000, seed=s) for s in (1, 2)])
    seed(tls_registry, tmp_path / "image", "latest", "insecure-small/app:v1")
    login = json.dumps({"username": USER, "password": PASSWORD}).encode()
    reference = f"{tls_registry.host}/insecure-small/app:v1"

    assert errors(daemon.pull(reference, auth=base64.urlsafe_b64encode(login).decode())) == []

    assert daemon.inspect(reference)["Id"] == built.config_digest
    assert "InsecureRequestWarning" not in daemon.log_path.read_text()


async def test_after_a_reload_blobs_are_read_over_new_connections(
    connector: Connector,
) -> None:
    first, second = blob(3000, 1), blob(3000, 2)
    registry, (one, two) = registry_with(first, second)
    async with serve_registry(registry) as server:
        client = await chosen(connector, server)
        assert await read(client, one, 3000) == (ReadBlob, first)
        connector.reconfigure(RegistryService())  # new certificates, say
        client = await chosen(connector, server)
        before = server.connections
        assert await read(client, two, 3000) == (ReadBlob, second)
        assert server.connections == before + 1
