"""A redirected request with a body, followed as Go's HTTP client (dockerd's) follows
it: 301, 302 and 303 turn it into a GET without the body; 307 and 308 send it again
as it was."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest

from ferryd.errors import FerrydError
from ferryd.oci.digest import sha256_digest
from ferryd.registry.auth import ANONYMOUS
from ferryd.registry.connector import Connector
from ferryd.registry.endpoints import RegistryService
from support.fakes import FakeRegistry, Reply, Request, serve_registry

pytestmark = pytest.mark.anyio

REPO = "team/app"
RAW = b'{"schemaVersion": 2}'


@pytest.fixture
async def connector() -> AsyncIterator[Connector]:
    connector = Connector(RegistryService(), connect_timeout=5, read_timeout=5)
    yield connector
    await connector.aclose()


@pytest.mark.parametrize(
    ("status", "method", "body"),
    [(301, "GET", b""), (302, "GET", b""), (303, "GET", b""), (307, "PUT", RAW), (308, "PUT", RAW)],
)
async def test_a_redirected_put_is_followed_as_gos_client_follows_it(
    connector: Connector, status: int, method: str, body: bytes
) -> None:
    registry = FakeRegistry()
    digest = "sha256:" + hashlib.sha256(RAW).hexdigest()
    seen: list[Request] = []

    def elsewhere(request: Request) -> Reply:
        seen.append(request)
        return Reply(201, {"Docker-Content-Digest": digest})

    registry.on("PUT", f"/v2/{REPO}/manifests/v1", Reply(status, {"Location": "/elsewhere"}))
    for followed in ("GET", "PUT"):
        registry.on(followed, "/elsewhere", elsewhere)
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, ANONYMOUS)
        await client.put_manifest("v1", "application/vnd.oci.image.manifest.v1+json", RAW)
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
