"""Registries that keep an answer going: a tag list with no end (pages without number,
pages of giant tags, a next link back to a page already read), and small answers sent a
byte at a time, each byte just inside the read timeout.

Each must end in a FerrydError that names what was being read, soon, never in memory
without bound or a read that goes on for weeks.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from ferryd.errors import (
    NotFoundError,
    RegistryProtocolError,
    TooLargeError,
    TransientRegistryError,
)
from ferryd.oci.mediatypes import OCI_MANIFEST
from ferryd.registry import bodies
from ferryd.registry.auth import ANONYMOUS
from ferryd.registry.client import MAX_TAG_LIST, MAX_TAG_PAGE, MAX_TAGS, RegistryClient
from ferryd.registry.connector import Connector
from ferryd.registry.endpoints import RegistryService
from support.digests import sha256
from support.fakes import FakeRegistry, FakeServer, Reply, Request, background, serve_registry

REPO = "team/app"
TAGS_PATH = f"/v2/{REPO}/tags/list"
# The read timeout the clients run with: far longer than a drip's pause, so that only
# the deadline on the whole body can end a dripping answer.
READ_TIMEOUT = 5.0
# The deadline the tests run with: 0.1 read timeouts, 0.5 s.
DEADLINE_READS = 0.1
DEADLINE = DEADLINE_READS * READ_TIMEOUT
# A dripping server's pause between bytes, well inside the read timeout.
DRIP = 0.05
# What a read may take before the test calls it endless (without the deadline, it is).
ENDLESS = 10.0


@asynccontextmanager
async def client_of(host: str) -> AsyncIterator[RegistryClient]:
    connector = Connector(RegistryService(), connect_timeout=5, read_timeout=READ_TIMEOUT)
    try:
        yield await connector.open(host, REPO, ANONYMOUS)
    finally:
        await connector.aclose()


# -- tag lists ------------------------------------------------------------------------


def paged(pages: list[list[str]]) -> FakeRegistry:
    """A registry whose tag list is `pages`, each linking to the next (`?last=N`)."""
    registry = FakeRegistry()

    def page(request: Request) -> Reply:
        number = int(request.query.get("last", "0"))
        body = json.dumps({"name": REPO, "tags": pages[number]}).encode()
        if number + 1 == len(pages):
            return Reply(body=body)
        link = f'<{TAGS_PATH}?last={number + 1}>; rel="next"'
        return Reply(headers={"Link": link}, body=body)

    registry.on("GET", TAGS_PATH, page)
    return registry


async def tags_of(registry: FakeRegistry) -> tuple[FakeServer, list[str]]:
    """The tags the client lists; raises what listing them raised."""
    async with serve_registry(registry) as server, client_of(server.host) as client:
        return server, await client.list_tags()


async def test_a_tag_list_past_max_tags_is_refused_naming_the_repository() -> None:
    tags_per_page = 10_000
    pages = [[f"t{p}-{i}" for i in range(tags_per_page)] for p in range(12)]
    registry = paged(pages)

    with pytest.raises(TooLargeError) as caught:
        await tags_of(registry)

    assert f"/{REPO}: the registry lists over {MAX_TAGS} tags" in str(caught.value)
    # Refused on the page that went past, not after the whole list.
    assert len(registry.seen("GET", TAGS_PATH)) == MAX_TAGS // tags_per_page + 1


async def test_a_tag_list_of_giant_tags_is_refused_past_its_bytes() -> None:
    # Each page just inside its own limit, with one tag of nearly 4 MiB.
    giant = MAX_TAG_PAGE - 100
    pages = [[chr(ord("a") + p) * giant] for p in range(6)]
    registry = paged(pages)

    with pytest.raises(TooLargeError) as caught:
        await tags_of(registry)

    assert f"/{REPO}: the registry's tag list is over {MAX_TAG_LIST} bytes" in str(caught.value)
    assert len(registry.seen("GET", TAGS_PATH)) == MAX_TAG_LIST // giant + 1


async def test_a_next_link_back_to_a_page_already_read_is_a_loop_refused_at_once() -> None:
    registry = FakeRegistry()

    def page(request: Request) -> Reply:
        # Page 1 links to page 2, which links back to page 1.
        back = "" if request.query.get("last") else "?last=a"
        link = f'<{TAGS_PATH}{back}>; rel="next"'
        return Reply(headers={"Link": link}, body=json.dumps({"tags": ["a"]}).encode())

    registry.on("GET", TAGS_PATH, page)

    with pytest.raises(RegistryProtocolError, match="its tag list loops") as caught:
        await tags_of(registry)

    assert "tags of 127.0.0.1:" in str(caught.value)
    assert f"/{REPO}: the registry's next page is one already read" in str(caught.value)
    assert len(registry.seen("GET", TAGS_PATH)) == 2


# -- small answers sent a byte at a time ----------------------------------------------


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bodies, "BODY_DEADLINE_READS", DEADLINE_READS)


@asynccontextmanager
async def dripping(status: int = 200) -> AsyncIterator[str]:
    """A server that answers every request with `status` and a body of 1000 bytes sent
    one every `DRIP` seconds, each inside the read timeout (50 s in all): `host:port`."""

    async def answer(stream: SocketStream) -> None:
        async with stream:
            try:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += await stream.receive()
                    if not head[:1].isalpha():
                        return  # a TLS handshake: this server speaks plain HTTP only
                await stream.send(
                    b"HTTP/1.1 %d Dripping\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n" % status
                )
                for _ in range(1000):
                    await stream.send(b" ")
                    await anyio.sleep(DRIP)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return  # the client gave up: what the tests want

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, background() as tg:
        tg.start_soon(listener.serve, answer)
        yield f"127.0.0.1:{listener.extra(SocketAttribute.local_port)}"


async def timed(client: RegistryClient, what: str) -> None:
    """Read `what` from `client`; fails the test if that goes on for `ENDLESS` s."""
    with anyio.fail_after(ENDLESS):
        if what == "manifest":
            await client.get_manifest("v1")
        elif what == "tags":
            await client.list_tags()
        else:
            await client.get_blob(sha256(b"{}"), 1 << 20, f"image config {sha256(b'{}')}")


@pytest.mark.usefixtures("short_deadline")
@pytest.mark.parametrize(
    ("what", "named"),
    [
        ("manifest", f"/{REPO}:v1"),
        ("tags", "tags of 127.0.0.1:"),
        ("config", "image config sha256:"),
    ],
)
async def test_a_small_answer_sent_a_byte_at_a_time_times_out_at_its_deadline(
    what: str, named: str
) -> None:
    async with dripping() as host, client_of(host) as client:
        started = time.monotonic()
        with pytest.raises(TransientRegistryError) as caught:
            await timed(client, what)
    elapsed = time.monotonic() - started

    message = str(caught.value)
    assert message.startswith(f"timed out: 127.0.0.1 took over {DEADLINE:g} s to send ")
    assert named in message
    assert "read_timeout" in message
    assert elapsed < ENDLESS / 2


@pytest.mark.usefixtures("short_deadline")
async def test_a_token_answer_sent_a_byte_at_a_time_times_out_at_its_deadline() -> None:
    registry = FakeRegistry(auth="bearer")
    registry.add_manifest(b"{}", OCI_MANIFEST, "v1")
    async with (
        dripping() as token_service,
        serve_registry(registry) as server,
        client_of(server.host) as client,
    ):
        # The challenge sends the client to the dripping server for its token.
        registry.base_url = f"http://{token_service}"
        with pytest.raises(TransientRegistryError) as caught:
            await timed(client, "manifest")

    message = str(caught.value)
    assert f"took over {DEADLINE:g} s to send {server.host}: the token service's" in message


@pytest.mark.usefixtures("short_deadline")
async def test_an_error_answer_sent_a_byte_at_a_time_is_its_status_error_in_time() -> None:
    async with dripping(404) as host, client_of(host) as client:
        # The message was not worth waiting for: the status says what went wrong.
        with pytest.raises(NotFoundError, match=f"manifest for {host}/{REPO}:v1 not found"):
            await timed(client, "manifest")
