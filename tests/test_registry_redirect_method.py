"""A redirected request with a body, followed as Go's HTTP client (dockerd's) follows
it: 301, 302 and 303 turn it into a GET without the body; 307 and 308 send it again
as it was."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest

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
