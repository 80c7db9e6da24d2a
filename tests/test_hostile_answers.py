"""Registries and token services that answer with more than anyone should read.

Every body is read with a limit counted after any Content-Encoding is undone, so a
2 KB answer that decodes to a gigabyte costs what the limit allows and no more. The
client tests check the errors; the daemon tests check that the real daemon stays small
(peak RSS) and alive, one test per kind of answer.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from ferryd.cli.client import DaemonError
from ferryd.cli.display import StreamError, drain
from ferryd.errors import (
    AuthenticationError,
    DigestMismatchError,
    NotFoundError,
    RegistryProtocolError,
    TooLargeError,
)
from ferryd.oci.manifest import MAX_MANIFEST_SIZE
from ferryd.oci.mediatypes import OCI_MANIFEST
from ferryd.registry.auth import ANONYMOUS, MAX_TOKEN, MAX_TOKEN_ANSWER
from ferryd.registry.client import MAX_TAG_PAGE, RegistryClient
from ferryd.registry.connector import Connector
from ferryd.registry.endpoints import RegistryService
from support.daemon import Daemon
from support.fakes import FakeRegistry, FakeServer, Reply, serve_registry
from support.served import served

REPO = "team/app"
MANIFEST_PATH = f"/v2/{REPO}/manifests/.+"
MiB = 1 << 20
# What the daemon may grow to while it refuses any of these answers.
RSS_LIMIT = 200 * MiB


def gzip(chunks: Iterator[bytes] | list[bytes]) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join([*(compressor.compress(chunk) for chunk in chunks), compressor.flush()])


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """512 MiB of zeros, gzipped twice: about 1 KB on the wire, sent `gzip, gzip`."""
    zeros = bytes(MiB)
    return gzip([gzip(zeros for _ in range(512))])


def bombed(bomb: bytes, status: int = 200, content_type: str = "application/json") -> Reply:
    return Reply(status, {"Content-Type": content_type, "Content-Encoding": "gzip, gzip"}, bomb)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeRegistry, FakeServer]]:
    registry = FakeRegistry()
    async with serve_registry(registry) as server:
        yield registry, server


async def client_of(server: FakeServer) -> AsyncIterator[RegistryClient]:
    connector = Connector(RegistryService(), connect_timeout=5, read_timeout=5)
    try:
        yield await connector.open(server.host, REPO, ANONYMOUS)
    finally:
        await connector.aclose()


@pytest.fixture
async def client(fake: tuple[FakeRegistry, FakeServer]) -> AsyncIterator[RegistryClient]:
    async for each in client_of(fake[1]):
        yield each


# -- the client: each kind of body has its limit, after decoding ----------------------


async def test_a_manifest_that_decodes_past_its_limit_is_refused_naming_it_and_the_limit(
    fake: tuple[FakeRegistry, FakeServer], client: RegistryClient, bomb: bytes
) -> None:
    registry, _ = fake
    registry.on("GET", MANIFEST_PATH, bombed(bomb, content_type=OCI_MANIFEST))

    with pytest.raises(TooLargeError) as caught:
        await client.get_manifest("v1")

    assert f"manifest for {client.endpoint.domain}/{REPO}:v1" in str(caught.value)
    assert f"over the limit of {MAX_MANIFEST_SIZE} bytes" in str(caught.value)


async def test_a_manifest_sent_gzipped_is_decoded_and_its_digest_is_of_the_decoded_bytes(
    fake: tuple[FakeRegistry, FakeServer], client: RegistryClient
) -> None:
    registry, _ = fake
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()
    digest = registry.add_manifest(raw, OCI_MANIFEST, "v1")
    headers = {"Content-Type": OCI_MANIFEST, "Content-Encoding": "gzip"}
    registry.on("GET", MANIFEST_PATH, Reply(200, headers, gzip([raw])))

    fetched = await client.get_manifest("v1")

    assert (fetched.raw, fetched.digest) == (raw, digest)


async def test_an_encoding_ferryd_does_not_decode_is_a_clear_error(
    fake: tuple[FakeRegistry, FakeServer], client: RegistryClient
) -> None:
    registry, _ = fake
    headers = {"Content-Type": OCI_MANIFEST, "Content-Encoding": "br"}
    registry.on("GET", MANIFEST_PATH, Reply(200, headers, b"\x0b\x02\x80{}\x03"))

    with pytest.raises(RegistryProtocolError, match="Content-Encoding 'br'"):
        await client.get_manifest("v1")


async def test_a_tag_list_that_decodes_past_its_limit_is_refused(
    fake: tuple[FakeRegistry, FakeServer], client: RegistryClient, bomb: bytes
) -> None:
    registry, _ = fake
    registry.on("GET", f"/v2/{REPO}/tags/list", bombed(bomb))

    with pytest.raises(TooLargeError, match=f"tags of .*over the limit of {MAX_TAG_PAGE} bytes"):
        await client.list_tags()


async def test_an_error_answer_that_decodes_to_a_flood_is_read_only_for_its_message(
    fake: tuple[FakeRegistry, FakeServer], client: RegistryClient, bomb: bytes
) -> None:
    registry, _ = fake
    registry.on("GET", MANIFEST_PATH, bombed(bomb, status=404))

    with pytest.raises(NotFoundError, match="not found"):
        await client.get_manifest("v1")


async def test_a_ping_answer_that_decodes_to_a_flood_does_not_stop_the_login(
    fake: tuple[FakeRegistry, FakeServer], bomb: bytes
) -> None:
    registry, server = fake
    registry.on("GET", "/v2/", bombed(bomb))
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()
    registry.add_manifest(raw, OCI_MANIFEST, "v1")

    async for client in client_of(server):
        assert (await client.get_manifest("v1")).raw == raw


async def test_a_config_blob_is_never_decoded_by_http(
    fake: tuple[FakeRegistry, FakeServer], client: RegistryClient
) -> None:
    registry, _ = fake
    config = b'{"rootfs": {"type": "layers", "diff_ids": []}}'
    digest = registry.add_blob(config)
    headers = {"Content-Encoding": "gzip"}
    registry.on("GET", f"/v2/{REPO}/blobs/.+", Reply(200, headers, gzip([config])))

    # The bytes as sent are what the digest covers: gzip bytes do not match it.
    with pytest.raises(DigestMismatchError):
        await client.get_blob(digest, 1 * MiB, "image config")


async def test_a_token_answer_that_decodes_past_its_limit_is_refused(bomb: bytes) -> None:
    registry = FakeRegistry(auth="bearer")
    registry.on("GET", "/token", bombed(bomb))
    async with serve_registry(registry) as server:
        async for client in client_of(server):
            with pytest.raises(TooLargeError, match=f"over the limit of {MAX_TOKEN_ANSWER}"):
                await client.get_manifest("v1")


async def test_a_token_longer_than_any_registry_sends_is_refused() -> None:
    registry = FakeRegistry(auth="bearer")
    token = json.dumps({"token": "x" * (MAX_TOKEN + 1)}).encode()
    registry.on("GET", "/token", Reply(200, {"Content-Type": "application/json"}, token))
    async with serve_registry(registry) as server:
        async for client in client_of(server):
            with pytest.raises(AuthenticationError, match=f"over the limit of {MAX_TOKEN}"):
                await client.get_manifest("v1")


async def test_a_token_answer_announcing_too_many_bytes_is_refused_before_reading() -> None:
    registry = FakeRegistry(auth="bearer")
    huge = Reply(200, {"Content-Type": "application/json"}, b"{}", content_length=50 * MiB)
    registry.on("GET", "/token", huge)
    async with serve_registry(registry) as server:
        async for client in client_of(server):
            with pytest.raises(TooLargeError, match=f"{50 * MiB} bytes, over the limit"):
                await client.get_manifest("v1")


# -- the daemon: small and alive whatever the answer --------------------------------


def peak_rss(daemon: Daemon) -> int:
    assert daemon.process is not None
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


def hostile(kind: str, bomb: bytes) -> FakeRegistry:
    """A registry whose answer of `kind` decodes to 512 MiB."""
    registry = FakeRegistry(auth="bearer" if kind == "token" else "none")
    path = {
        "manifest": MANIFEST_PATH,
        "token": "/token",
        "tag list": f"/v2/{REPO}/tags/list",
        "error": MANIFEST_PATH,
    }[kind]
    registry.on("GET", path, bombed(bomb, status=500 if kind == "error" else 200))
    return registry


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("manifest", f"over the limit of {MAX_MANIFEST_SIZE} bytes"),
        ("token", f"over the limit of {MAX_TOKEN_ANSWER} bytes"),
        ("tag list", f"over the limit of {MAX_TAG_PAGE} bytes"),
        ("error", "HTTP 500"),
    ],
)
def test_the_daemon_refuses_an_answer_that_decodes_to_half_a_gigabyte_and_stays_small(
    start_daemon: Callable[..., Daemon], bomb: bytes, kind: str, error: str
) -> None:
    daemon = start_daemon()
    with served(hostile(kind, bomb)) as (_, server):
        reference = f"{server.host}/{REPO}" + ("" if kind == "tag list" else ":v1")
        client = daemon.client()
        params = {"fromImage": reference}
        with pytest.raises((DaemonError, StreamError), match=error) as caught:
            drain(client.stream("POST", "/images/create", params))

    assert "Traceback" not in str(caught.value)
    assert daemon.alive
    assert client.get_json("/info")["Images"] == 0
    assert peak_rss(daemon) < RSS_LIMIT, f"peak RSS {peak_rss(daemon) / MiB:.0f} MiB"
