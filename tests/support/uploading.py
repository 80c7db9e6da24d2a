"""The upload manager's test environment: a store with stored layers, an UploadManager in
its own task group, and a RegistryClient to an `UploadRegistry` on loopback that records
what the client sent (tests/test_upload_faults.py, tests/test_push_hostile_answers.py)."""

from __future__ import annotations

import gzip
import io
import random
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from ferryd.distribution.push_layers import StoreLayer, StoreLayerProvider
from ferryd.distribution.uploads import Uploaded, UploadManager
from ferryd.oci.digest import Digest
from ferryd.oci.mediatypes import DOCKER_LAYER_TAR, OCI_LAYER_GZIP, Family
from ferryd.registry.auth import ANONYMOUS
from ferryd.registry.client import RegistryClient
from ferryd.registry.connector import Connector
from ferryd.registry.endpoints import RegistryService
from ferryd.store import Store
from ferryd.store.metadata import V2Metadata
from support.digests import sha256
from support.fakes import (
    FakeLayer,
    FakeServer,
    Recorder,
    Reply,
    Request,
    UploadRegistry,
    background,
    serve_registry,
)


@dataclass(frozen=True)
class PlainLayer:
    """A layer held as an uncompressed tar: its blob digest is its DiffID."""

    tar: bytes

    @property
    def diff_id(self) -> Digest:
        return sha256(self.tar)


def make_plain_layer(size: int, seed: int) -> PlainLayer:
    content = random.Random(seed).randbytes(size // 2) * 2  # compressible
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"plain-{seed}")
        info.size = len(content)
        info.mtime = 1_700_000_000
        tar.addfile(info, io.BytesIO(content))
    return PlainLayer(buffer.getvalue())


@dataclass
class Env:
    store: Store
    registry: UploadRegistry
    server: FakeServer
    manager: UploadManager
    client: RegistryClient
    connector: Connector
    task_group: TaskGroup
    held: list[StoreLayer] = field(default_factory=list)

    @property
    def domain(self) -> str:
        return self.client.endpoint.domain

    async def open_client(self, repository: str) -> RegistryClient:
        return await self.connector.open(
            self.server.host, repository, ANONYMOUS, actions="pull,push"
        )

    def stored(self, layer: FakeLayer | PlainLayer) -> StoreLayer:
        """Put the layer in the store (a first layer: ChainID = DiffID) and hold it."""
        if isinstance(layer, FakeLayer):
            blob, media_type = layer.blob, OCI_LAYER_GZIP
            size = len(gzip.decompress(layer.blob))
        else:
            blob, media_type, size = layer.tar, DOCKER_LAYER_TAR, len(layer.tar)
        digest = self.store.blobs.put(blob)
        self.store.layers.register(None, layer.diff_id, digest, media_type, len(blob), size)
        self.store.layers.holds.release(layer.diff_id)  # register holds; the provider holds too
        got = StoreLayerProvider(self.store.layers, self.store.blobs).get(layer.diff_id)
        assert isinstance(got, StoreLayer)
        self.held.append(got)
        return got

    async def upload(
        self,
        layer: StoreLayer,
        *,
        client: RegistryClient | None = None,
        family: Family = "oci",
        progress: Recorder | None = None,
        manager: UploadManager | None = None,
    ) -> Uploaded:
        return await (manager or self.manager).upload(
            client or self.client, layer, family, progress or Recorder()
        )

    def metadata(self, layer: StoreLayer) -> set[V2Metadata]:
        return set(self.store.metadata.get(layer.diff_id))

    def wire(self) -> list[str]:
        """The upload-side requests, as `METHOD path`, in order."""
        return [f"{r.method} {r.path}" for r in self.registry.requests if r.path != "/v2/"]

    def answered(self, method: str, path: str, change: dict[str, str | None]) -> None:
        """Answer `method path` as the registry would, with headers changed (None: dropped)."""

        def changed(request: Request) -> Reply:
            reply = self.registry.answer(request)
            for name, value in change.items():
                reply.headers.pop(name, None)
                if value is not None:
                    reply.headers[name] = value
            return reply

        self.registry.on(method, path, changed)


@asynccontextmanager
async def upload_env(
    tmp_path: Path, repository: str, *, max_attempts: int = 5
) -> AsyncIterator[Env]:
    """An Env pushing to `repository`, retrying at once (`max_attempts` in all)."""
    store = Store(tmp_path / "root")
    registry = UploadRegistry()
    connector = Connector(RegistryService(), connect_timeout=5, read_timeout=5)
    held: list[StoreLayer] = []
    try:
        async with serve_registry(registry) as server, background() as tg:
            uploads = UploadManager(store.metadata, tg, retry_delay=0.01, max_attempts=max_attempts)
            client = await connector.open(server.host, repository, ANONYMOUS, actions="pull,push")
            environment = Env(store, registry, server, uploads, client, connector, tg, held)
            with anyio.fail_after(10):
                yield environment
    finally:
        for layer in held:
            layer.release()
        await connector.aclose()
        store.close()
