"""The download manager against registries that misbehave: cuts, stalls, lies, refusals.

Each test builds a store in tmp_path, a DownloadManager in its own task group, and a
RegistryClient (through a Connector) to a fake registry on loopback that serves real
gzip'd tar layers.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from anyio.abc import TaskGroup

from ferryd.codec import LayerSink
from ferryd.distribution import downloads
from ferryd.distribution.context import BlobFetcher, DownloadDescriptor
from ferryd.distribution.downloads import DownloadManager
from ferryd.distribution.progress import Broadcast
from ferryd.distribution.transfers import RetryPolicy
from ferryd.errors import (
    ContentError,
    DiffIDMismatchError,
    DigestMismatchError,
    ManifestError,
    NotFoundError,
    RangeNotSatisfiableError,
    RegistryProtocolError,
    StorageFullError,
    TransientRegistryError,
)
from ferryd.oci.digest import Digest
from ferryd.oci.image_config import MAX_CONFIG_SIZE, RootFS
from ferryd.oci.mediatypes import OCI_MANIFEST
from ferryd.registry.auth import ANONYMOUS
from ferryd.registry.blocking import Answer, BlockingConnections
from ferryd.registry.client import OpenBlob, RegistryClient
from ferryd.registry.connector import Connector
from ferryd.registry.endpoints import RegistryService
from ferryd.store import Store
from support import disks
from support.digests import sha256
from support.fakes import (
    FakeLayer,
    FakeRegistry,
    FakeServer,
    Recorder,
    Reply,
    Request,
    background,
    make_layer,
    registry_error,
    serve_registry,
)
from support.waiting import await_until

REPO = "team/app"
BLOB_PATH = f"/v2/{REPO}/blobs/.+"
MiB = 1 << 20
MANIFEST = b'{"schemaVersion": 2, "layers": []}'


@dataclass
class Env:
    store: Store
    registry: FakeRegistry
    server: FakeServer
    manager: DownloadManager
    client: RegistryClient
    task_group: TaskGroup
    in_worker: bool  # blobs read in a worker thread, as a pull's are (small ones whole)
    connectors: list[Connector] = field(default_factory=list)

    @property
    def fetcher(self) -> BlobFetcher:
        return self.client if self.in_worker else AsyncOnly(self.client)

    async def open_client(self, **timeouts: float) -> BlobFetcher:
        """A client through a Connector of its own (say, with a short read timeout)."""
        connector = Connector(RegistryService(), **timeouts)
        self.connectors.append(connector)
        client = await chosen(connector, self.server, self.registry)
        return client if self.in_worker else AsyncOnly(client)

    def descriptor(self, layer: FakeLayer, **kwargs: int) -> DownloadDescriptor:
        return layer.descriptor(self.server.host, REPO, **kwargs)

    async def download(
        self,
        *layers: FakeLayer | DownloadDescriptor,
        progress: Recorder | None = None,
        fetcher: BlobFetcher | None = None,
    ) -> RootFS:
        descriptors = [
            item if isinstance(item, DownloadDescriptor) else self.descriptor(item)
            for item in layers
        ]
        rootfs, release = await self.manager.download(
            fetcher or self.fetcher, RootFS([]), "linux", descriptors, progress or Recorder()
        )
        release()
        return rootfs

    def blob_gets(self) -> list[Request]:
        return self.registry.seen("GET", BLOB_PATH)

    def stored(self) -> list[str]:
        return sorted(p.name for p in (self.store.root / "blobs" / "sha256").iterdir())

    def partials(self) -> dict[str, int]:
        directory = self.store.root / "partial"
        return {p.name: p.stat().st_size for p in directory.iterdir()}

    def leave_partial(self, layer: FakeLayer, data: bytes) -> Path:
        """A partial file of `layer` holding `data`, as an earlier attempt leaves one."""
        partial = self.store.blobs.partial_path(layer.digest)
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(data)
        return partial

    def partial_size(self, layer: FakeLayer) -> int:
        path = self.store.blobs.partial_path(layer.digest)
        return path.stat().st_size if path.exists() else 0

    def assert_stored(self, layer: FakeLayer) -> None:
        assert self.store.blobs.get(layer.digest) == layer.blob
        registered = self.store.layers.get(layer.diff_id)  # a first layer: ChainID = DiffID
        assert registered is not None
        assert registered.blob_digest == layer.digest
        assert registered.compressed_size == layer.size
        assert self.partials() == {}

    def assert_nothing_stored(self) -> None:
        assert self.stored() == []
        assert self.store.layers.all() == []
        assert self.partials() == {}


async def chosen(
    connector: Connector, server: FakeServer, registry: FakeRegistry
) -> RegistryClient:
    """A client whose endpoint is chosen, as a pull's is by its manifest's GET: before
    that, a blob's GET is the one that chooses it, and goes the async way."""
    registry.add_manifest(MANIFEST, OCI_MANIFEST, "v1")
    client = await connector.open(server.host, REPO, ANONYMOUS)
    await client.get_manifest("v1")
    return client


class AsyncOnly:
    """The client, with every blob streamed through the async client: what a pull does
    for a blob resumed from a partial file, for the layers sent ahead, through a proxy,
    and on a redirecting endpoint."""

    def __init__(self, client: RegistryClient) -> None:
        self._client = client

    def open_blob(
        self,
        digest: Digest,
        offset: int = 0,
        *,
        whole: int | None = None,
        keep: Callable[[bytes], object] | None = None,
        into: Callable[[bytes], None] | None = None,
    ) -> AbstractAsyncContextManager[OpenBlob]:
        return self._client.open_blob(digest, offset)

    async def get_blob(self, digest: Digest, limit: int, what: str) -> bytes:
        return await self._client.get_blob(digest, limit, what)

    async def open_connections(self, count: int) -> None:
        pass  # the async client's open as they are needed

    def reads_in_worker(self) -> bool:
        return False


@pytest.fixture(params=[True, False], ids=["in-worker", "async-client"])
async def env(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    store = Store(tmp_path / "root")
    registry = FakeRegistry()
    connector = Connector(RegistryService(), connect_timeout=5, read_timeout=5)
    connectors = [connector]
    try:
        async with serve_registry(registry) as server, background() as tg:
            manager = DownloadManager(
                store.blobs, store.layers, store.metadata, tg, retry_delay=0.01
            )
            client = await chosen(connector, server, registry)
            environment = Env(
                store, registry, server, manager, client, tg, request.param, connectors
            )
            with anyio.fail_after(10):
                yield environment
    finally:
        for each in connectors:
            await each.aclose()
        store.close()


@pytest.fixture(scope="module")
def big() -> FakeLayer:
    """Over SMALL_BLOB (4 MiB): streamed in ~1 MiB batches, so a cut leaves something
    to resume from."""
    return make_layer(5 * MiB, seed=1)


@pytest.fixture(scope="module")
def small() -> FakeLayer:
    return make_layer(100_000, seed=2)


def range_start(request: Request) -> int | None:
    value = request.headers.get("range")
    if value is None:
        return None
    assert value.startswith("bytes="), value
    assert value.endswith("-"), value
    return int(value.removeprefix("bytes=").removesuffix("-"))


def cut_once(env: Env, layer: FakeLayer, after: int) -> None:
    """The first GET of the layer sends `after` bytes of it, then closes the connection."""

    def cut(request: Request) -> Reply:
        reply = env.registry.blob_reply(request, layer.digest)
        reply.cut_after = after
        return reply

    env.registry.on("GET", BLOB_PATH, cut, times=1)


def stall_once(env: Env, layer: FakeLayer, after: int, release: anyio.Event | None = None) -> None:
    """The first GET of the layer sends `after` bytes of it, then nothing (the
    connection open) until `release` is set, or for good."""

    def stall(request: Request) -> Reply:
        reply = env.registry.blob_reply(request, layer.digest)
        reply.stall_after, reply.release = after, release
        return reply

    env.registry.on("GET", BLOB_PATH, stall, times=1)


def retries(progress: Recorder) -> list[str]:
    return [s for s in progress.statuses() if s.startswith("Retrying in")]


@pytest.fixture
def read_whole(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The limits of the blob reads made whole in a worker thread (`BlockingConnections`)."""
    return _worker_reads(monkeypatch, into=False)


@pytest.fixture
def read_into(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The limits of the blob reads made into their sinks in a worker thread."""
    return _worker_reads(monkeypatch, into=True)


def _worker_reads(monkeypatch: pytest.MonkeyPatch, *, into: bool) -> list[int]:
    limits: list[int] = []
    get = BlockingConnections.get

    async def spied(
        self: BlockingConnections,
        url: str,
        headers: Mapping[str, str],
        limit: int,
        then: Callable[[bytes], object] | None = None,
        feed: Callable[[bytes], None] | None = None,
    ) -> Answer:
        if (feed is not None) == into:
            limits.append(limit)
        return await get(self, url, headers, limit, then, feed)

    monkeypatch.setattr(BlockingConnections, "get", spied)
    return limits


async def test_a_small_layer_is_read_whole_in_a_worker_and_a_big_one_into_its_sink(
    env: Env, small: FakeLayer, big: FakeLayer, read_whole: list[int], read_into: list[int]
) -> None:
    env.registry.add_blob(small.blob)
    env.registry.add_blob(big.blob)

    await env.download(small)
    await env.download(big)

    assert read_whole == ([small.size] if env.in_worker else [])
    assert read_into == ([big.size] if env.in_worker else [])
    env.assert_stored(small)
    env.assert_stored(big)


async def test_a_small_layer_sent_ahead_is_read_whole_and_its_transfer_takes_it(
    env: Env, small: FakeLayer, read_whole: list[int]
) -> None:
    env.registry.add_blob(small.blob)

    async with env.manager.sending_ahead(env.fetcher, [env.descriptor(small).descriptor]):
        await await_until(lambda: len(env.blob_gets()) == 1)
        await env.download(small)

    assert len(env.blob_gets()) == 1
    assert read_whole == ([small.size] if env.in_worker else [])
    env.assert_stored(small)


async def test_a_big_layer_is_sent_ahead_only_where_its_transfer_would_not_read_it_in_a_worker(
    env: Env, big: FakeLayer, read_into: list[int]
) -> None:
    # In a worker, its transfer reads it into its sink; an answer sent ahead streams
    # through the async client. Where the transfer streams it anyway (a proxy, a
    # redirecting endpoint), sending it ahead saves a round trip.
    env.registry.add_blob(big.blob)

    async with env.manager.sending_ahead(env.fetcher, [env.descriptor(big).descriptor]):
        if env.in_worker:
            await anyio.sleep(0.2)
        else:
            await await_until(lambda: len(env.blob_gets()) == 1)
        assert len(env.blob_gets()) == (0 if env.in_worker else 1)
        await env.download(big)

    assert len(env.blob_gets()) == 1
    assert read_into == ([big.size] if env.in_worker else [])
    env.assert_stored(big)


async def test_a_worker_read_stalled_before_its_first_mib_is_retried_the_way_that_keeps_bytes(
    env: Env, big: FakeLayer, read_into: list[int]
) -> None:
    # A worker thread's read loses the MiB it was filling: a registry that always falls
    # silent before one would keep the download at byte 0, attempt after attempt.
    env.registry.add_blob(big.blob)
    env.registry.on("GET", BLOB_PATH, Reply(200, {}, big.blob, stall_after=500_000), times=1)
    fetcher = await env.open_client(read_timeout=0.5)

    await env.download(big, fetcher=fetcher)

    assert len(env.blob_gets()) == 2
    assert read_into == ([big.size] if env.in_worker else [])  # once, not twice
    env.assert_stored(big)


async def test_a_layer_over_2_mib_sent_ahead_waits_unread_and_its_transfer_takes_it(
    env: Env, read_whole: list[int]
) -> None:
    # Whole reads ahead hold their bodies until taken, for every pull at once: 2 MiB
    # at most, though a transfer reads up to SMALL_BLOB whole itself.
    layer = make_layer(3 * MiB, seed=41)
    assert downloads.AHEAD_WHOLE < layer.size <= downloads.SMALL_BLOB
    env.registry.add_blob(layer.blob)

    async with env.manager.sending_ahead(env.fetcher, [env.descriptor(layer).descriptor]):
        await await_until(lambda: len(env.blob_gets()) == 1)
        await env.download(layer)

    assert len(env.blob_gets()) == 1
    assert read_whole == []  # not ahead, and its transfer took the answer sent ahead
    env.assert_stored(layer)


async def test_a_fetcher_that_fails_to_open_connections_ahead_still_gets_its_layers(
    env: Env, small: FakeLayer, big: FakeLayer
) -> None:
    # Three sent ahead (two read whole), and a small one after them that wants a
    # connection opened ahead.
    later = [make_layer(50_000, seed=seed) for seed in (23, 24)]
    for layer in (big, small, *later):
        env.registry.add_blob(layer.blob)
    refused = anyio.Event()

    class Refusing(AsyncOnly):
        async def open_connections(self, count: int) -> None:
            refused.set()
            raise RuntimeError("no connections today")

        def reads_in_worker(self) -> bool:
            return True  # as the client would: the big layer's connection is opened

    fetcher = Refusing(env.client)
    layers = [env.descriptor(layer).descriptor for layer in (big, small, *later)]
    async with env.manager.sending_ahead(fetcher, layers):
        await refused.wait()
        await env.download(small, fetcher=fetcher)

    env.assert_stored(small)  # and the manager's task group (the daemon's) lives on
    assert not env.task_group.cancel_scope.cancel_called


async def test_while_layers_are_sent_ahead_the_connections_transfers_want_are_opened(
    env: Env, small: FakeLayer, big: FakeLayer
) -> None:
    opened: list[int] = []

    class Opening(AsyncOnly):
        async def open_connections(self, count: int) -> None:
            opened.append(count)

        def reads_in_worker(self) -> bool:
            return True

    smaller = [make_layer(50_000, seed=seed) for seed in (20, 21, 22)]
    layers = [env.descriptor(layer).descriptor for layer in (big, small, *smaller)]
    async with env.manager.sending_ahead(Opening(env.client), layers):
        await await_until(lambda: opened != [])

    # 3 downloads at once: the 2 small ones sent ahead open their own; the big one is not
    # sent (its transfer reads it in a worker thread), its connection is opened for it.
    assert opened == [1]


def test_a_blob_is_read_whole_up_to_small_blob_bytes() -> None:
    assert downloads._whole(downloads.SMALL_BLOB) == downloads.SMALL_BLOB
    assert downloads._whole(downloads.SMALL_BLOB + 1) is None


async def test_a_full_disk_met_before_a_cut_is_the_error_a_pull_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer thread fails on the first batch; the connection is cut before another
    # batch is piped (which would raise it). No retry mends a full disk: it, not the
    # cut, is what the transfer fails with.
    blob = random.Random(5).randbytes(3 << 20)
    sink = LayerSink(tmp_path / "partial", sha256(blob))
    sink.open()
    disks.fills_after(monkeypatch, 0)

    async def cut_after_the_first_mib() -> AsyncIterator[bytes]:
        yield blob[: 1 << 20]
        raise TransientRegistryError("connection cut")

    with pytest.raises(StorageFullError):
        await downloads._pump(
            cut_after_the_first_mib(), sink, len(blob), "layer", Broadcast(), downloads._Tally()
        )
    sink.close()


# -- cut connections ------------------------------------------------------------------


async def test_cut_mid_layer_resumes_with_range(env: Env, big: FakeLayer) -> None:
    env.registry.add_blob(big.blob)
    cut_once(env, big, big.size // 2)
    progress = Recorder()

    rootfs = await env.download(big, progress=progress)

    assert rootfs.diff_ids == [big.diff_id]
    first, second = env.blob_gets()
    assert range_start(first) is None
    resumed_from = range_start(second)
    assert resumed_from is not None
    assert 0 < resumed_from <= big.size // 2
    env.assert_stored(big)
    assert retries(progress) == ["Retrying in 1 second"]
    assert progress.statuses()[-1] == "Pull complete"
    assert "Download complete" in progress.statuses()


async def test_cut_with_a_registry_that_ignores_range(env: Env, big: FakeLayer) -> None:
    env.registry.add_blob(big.blob)
    env.registry.ignore_range = True
    cut_once(env, big, big.size // 2)

    await env.download(big)

    _first, second = env.blob_gets()
    assert range_start(second) is not None  # asked, but was sent everything again
    env.assert_stored(big)


async def test_cut_in_the_first_batch_still_resumes(env: Env) -> None:
    layer = make_layer(600_000, seed=3)
    env.registry.add_blob(layer.blob)
    cut_once(env, layer, 300_000)

    await env.download(layer)

    _first, second = env.blob_gets()
    assert range_start(second) == 300_000
    env.assert_stored(layer)


async def test_a_small_layers_partial_file_from_an_earlier_attempt_is_resumed(
    env: Env, small: FakeLayer
) -> None:
    env.registry.add_blob(small.blob)
    env.leave_partial(small, small.blob[:40_000])

    await env.download(small)

    assert [range_start(r) for r in env.blob_gets()] == [40_000]
    env.assert_stored(small)


async def test_a_small_layer_with_nothing_on_disk_is_opened_by_the_call_that_writes_it(
    env: Env, small: FakeLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.registry.add_blob(small.blob)
    calls: list[str] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(func: Callable[..., object], *args: object, **kwargs: object) -> object:
        calls.append(getattr(func, "__name__", repr(func)))
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)

    await env.download(small)

    assert "open_unless_stored" not in calls
    # Read whole in a worker thread, it is written and verified by that same call.
    assert calls.count("verify_and_commit") == (0 if env.in_worker else 1)
    env.assert_stored(small)


async def test_cut_every_time_gives_up_after_max_attempts(env: Env, small: FakeLayer) -> None:
    env.registry.add_blob(small.blob)
    cut_once(env, small, 1000)
    env.registry.on(
        "GET", BLOB_PATH, lambda r: Reply(200, {}, small.blob, cut_after=1000, cut_delay=0)
    )
    progress = Recorder()
    with pytest.raises(TransientRegistryError) as caught:
        await env.download(small, progress=progress)
    assert caught.value.retryable
    assert len(env.blob_gets()) == 5
    assert len(retries(progress)) == 4
    assert env.stored() == []


async def test_short_close_delimited_body_is_retried(env: Env, small: FakeLayer) -> None:
    # No length and a clean close: only the byte count tells the body is short.
    env.registry.add_blob(small.blob)
    env.registry.on("GET", BLOB_PATH, Reply(200, {}, small.blob[:5000], framing="close"), times=1)
    progress = Recorder()
    await env.download(small, progress=progress)
    assert len(env.blob_gets()) == 2
    assert retries(progress) == ["Retrying in 1 second"]
    env.assert_stored(small)


# -- wrong content --------------------------------------------------------------------


def corrupt(blob: bytes, position: int) -> bytes:
    wrong = bytearray(blob)
    wrong[position] ^= 0xFF
    return bytes(wrong)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda blob: corrupt(blob, 4), id="gzip-mtime"),  # still valid gzip
        pytest.param(lambda blob: random.Random(9).randbytes(len(blob)), id="random"),
        pytest.param(lambda blob: corrupt(blob, len(blob) // 2), id="deflate-data"),
        pytest.param(lambda blob: corrupt(blob, len(blob) - 3), id="gzip-trailer"),
    ],
)
async def test_wrong_bytes_are_a_digest_mismatch(
    env: Env, big: FakeLayer, tamper: Callable[[bytes], bytes]
) -> None:
    wrong = tamper(big.blob)
    assert len(wrong) == big.size
    assert wrong != big.blob
    env.registry.blobs[big.digest] = wrong
    progress = Recorder()

    with pytest.raises(DigestMismatchError, match=big.digest):
        await env.download(big, progress=progress)

    assert len(env.blob_gets()) == 1  # not retried
    assert retries(progress) == []
    env.assert_nothing_stored()


async def test_diff_id_mismatch(env: Env, small: FakeLayer, big: FakeLayer) -> None:
    env.registry.add_blob(small.blob)
    lying = DownloadDescriptor(env.descriptor(small).descriptor, big.diff_id, "r", REPO)

    with pytest.raises(DiffIDMismatchError, match=big.diff_id):
        await env.download(lying)

    assert len(env.blob_gets()) == 1
    env.assert_nothing_stored()


async def test_more_bytes_than_the_descriptor_says(env: Env, small: FakeLayer) -> None:
    env.registry.on("GET", BLOB_PATH, Reply(200, {}, small.blob + b"trailing junk"))
    with pytest.raises(ContentError, match="more than"):
        await env.download(small)
    assert len(env.blob_gets()) == 1
    env.assert_nothing_stored()


async def test_descriptor_smaller_than_the_blob(env: Env, big: FakeLayer) -> None:
    env.registry.add_blob(big.blob)
    with pytest.raises(ContentError, match="more than"):
        await env.download(env.descriptor(big, size=big.size - 10))
    assert len(env.blob_gets()) == 1
    env.assert_nothing_stored()


# -- refusals and failures ------------------------------------------------------------


async def test_not_found_is_not_retried(env: Env, small: FakeLayer) -> None:
    progress = Recorder()
    with pytest.raises(NotFoundError, match="blob unknown"):
        await env.download(small, progress=progress)
    assert len(env.blob_gets()) == 1
    assert retries(progress) == []
    assert env.stored() == []


async def test_server_errors_are_retried(env: Env, small: FakeLayer) -> None:
    env.registry.add_blob(small.blob)
    env.registry.on("GET", BLOB_PATH, Reply(500, body=b"oops"), times=2)
    progress = Recorder()

    await env.download(small, progress=progress)

    assert len(env.blob_gets()) == 3
    assert retries(progress) == ["Retrying in 1 second", "Retrying in 1 second"]
    env.assert_stored(small)


async def test_stalled_body_times_out_and_is_retried(env: Env, big: FakeLayer) -> None:
    env.registry.add_blob(big.blob)

    stall_once(env, big, 2 * MiB)
    client = await env.open_client(read_timeout=0.3)
    progress = Recorder()

    with anyio.fail_after(5):
        await env.download(big, progress=progress, fetcher=client)

    _first, second = env.blob_gets()
    resumed_from = range_start(second)
    assert resumed_from is not None
    assert resumed_from > 0
    assert retries(progress) == ["Retrying in 1 second"]
    env.assert_stored(big)


async def test_stalled_every_time_is_a_transient_error(env: Env, small: FakeLayer) -> None:
    env.registry.add_blob(small.blob)
    env.registry.on("GET", BLOB_PATH, Reply(200, {}, small.blob, stall_after=10))
    client = await env.open_client(read_timeout=0.1)
    manager = DownloadManager(
        env.store.blobs,
        env.store.layers,
        env.store.metadata,
        env.task_group,
        max_attempts=2,
        retry_delay=0.01,
    )
    descriptor = env.descriptor(small)
    with pytest.raises(TransientRegistryError, match="timed out"):
        await manager.download(client, RootFS([]), "linux", [descriptor], Recorder())
    assert len(env.blob_gets()) == 2


# -- sharing and cancellation -----------------------------------------------------------


@asynccontextmanager
async def gated(env: Env, layer: FakeLayer) -> AsyncIterator[anyio.Event]:
    """Blob GETs wait for the event before the registry answers them."""
    gate = anyio.Event()

    async def wait_then_answer(request: Request) -> Reply:
        await gate.wait()
        return env.registry.blob_reply(request, layer.digest)

    env.registry.blobs[layer.digest] = layer.blob
    env.registry.on("GET", BLOB_PATH, wait_then_answer)
    try:
        yield gate
    finally:
        gate.set()


async def test_concurrent_downloads_share_one_transfer(env: Env, big: FakeLayer) -> None:
    first, second = Recorder(), Recorder()
    results: list[RootFS] = []

    async def pull(progress: Recorder) -> None:
        results.append(await env.download(big, progress=progress))

    async with gated(env, big) as gate, anyio.create_task_group() as tg:
        tg.start_soon(pull, first)
        tg.start_soon(pull, second)
        await await_until(lambda: len(env.blob_gets()) == 1)
        await await_until(lambda: "Pulling fs layer" in second.statuses())
        assert env.manager.active == 1
        gate.set()

    assert len(env.blob_gets()) == 1
    assert results == [RootFS([big.diff_id])] * 2
    for progress in (first, second):
        statuses = progress.statuses()
        assert "Downloading" in statuses
        assert "Download complete" in statuses
        assert statuses[-1] == "Pull complete"
    env.assert_stored(big)


async def test_late_waiter_sees_the_transfer_so_far(env: Env, big: FakeLayer) -> None:
    release = anyio.Event()

    env.registry.add_blob(big.blob)
    stall_once(env, big, 2 * MiB, release)
    first, late = Recorder(), Recorder()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: env.download(big, progress=first))
        await await_until(lambda: env.partial_size(big) >= MiB)
        await await_until(lambda: "Downloading" in first.statuses())
        tg.start_soon(lambda: env.download(big, progress=late))
        await await_until(lambda: "Downloading" in late.statuses())
        release.set()
    assert late.messages[1].status == "Downloading"  # after its own "Pulling fs layer"
    assert late.statuses()[-1] == "Pull complete"
    env.assert_stored(big)


async def test_cancelling_one_waiter_keeps_the_transfer(env: Env, big: FakeLayer) -> None:
    staying = Recorder()
    async with gated(env, big) as gate, anyio.create_task_group() as tg:
        leaving = anyio.CancelScope()

        async def pull_then_leave() -> None:
            with leaving:
                await env.download(big)

        tg.start_soon(pull_then_leave)
        tg.start_soon(lambda: env.download(big, progress=staying))
        await await_until(lambda: len(env.blob_gets()) == 1)
        await await_until(lambda: "Pulling fs layer" in staying.statuses())
        leaving.cancel()
        await anyio.wait_all_tasks_blocked()  # the leaving pull is gone, the transfer waits
        assert env.manager.active == 1
        gate.set()

    assert leaving.cancelled_caught
    assert len(env.blob_gets()) == 1
    assert staying.statuses()[-1] == "Pull complete"
    env.assert_stored(big)


async def test_cancelling_the_only_waiter_cancels_and_keeps_the_partial(
    env: Env, big: FakeLayer
) -> None:
    env.registry.add_blob(big.blob)

    stall_once(env, big, 2 * MiB)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: env.download(big))
        await await_until(lambda: env.partial_size(big) >= MiB)
        tg.cancel_scope.cancel()
    await await_until(lambda: env.manager.active == 0)

    kept = env.partial_size(big)
    assert 0 < kept < big.size
    assert env.stored() == []

    await env.download(big)  # later: resumes from the partial file

    _first, second = env.blob_gets()
    assert range_start(second) == kept
    env.assert_stored(big)


class SlowToStop:
    """A fetcher whose transfer takes a while to wind down when cancelled, as it does
    when a worker thread is in the middle of writing a batch (that cannot be cancelled).
    """

    def __init__(self, inner: RegistryClient, stopping: float) -> None:
        self._inner = inner
        self._stopping = stopping

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
        try:
            opened = self._inner.open_blob(digest, offset, whole=whole, keep=keep, into=into)
            async with opened as blob:
                yield blob
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(self._stopping)


async def test_new_waiter_does_not_join_a_cancelled_transfer(env: Env, big: FakeLayer) -> None:
    env.registry.add_blob(big.blob)

    stall_once(env, big, 2 * MiB)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: env.download(big, fetcher=SlowToStop(env.client, 0.3)))
        await await_until(lambda: env.partial_size(big) >= MiB)
        tg.cancel_scope.cancel()
    assert env.manager.active == 1  # still winding down

    await env.download(big)  # a new pull of the same layer, right after

    env.assert_stored(big)


@pytest.mark.parametrize("first", ["right", "wrong"], ids=["right-first", "wrong-first"])
async def test_same_blob_with_two_diff_ids_at_once(env: Env, big: FakeLayer, first: str) -> None:
    # One image config says the right DiffID, another (wrongly) a different one: the
    # wrong pull must fail on its own without harming the right one or the store.
    # Transfers of one blob take turns on its partial file: `first` takes it, and the
    # other starts, and waits its turn, before the first's answer is sent.
    wrong = DownloadDescriptor(env.descriptor(big).descriptor, make_layer(10).diff_id, "r", REPO)
    layers: dict[str, FakeLayer | DownloadDescriptor] = {"right": big, "wrong": wrong}
    [second] = layers.keys() - {first}
    outcomes: dict[str, BaseException | RootFS] = {}
    answered = 0

    async def answer(request: Request) -> Reply:
        nonlocal answered
        answered += 1
        if answered == 1:
            await await_until(lambda: env.manager.active == 2, what="the second transfer")
        return env.registry.blob_reply(request, big.digest, big.blob)

    env.registry.on("GET", BLOB_PATH, answer)

    async def pull(name: str, layer: FakeLayer | DownloadDescriptor) -> None:
        try:
            outcomes[name] = await env.download(layer)
        except Exception as exc:
            outcomes[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(pull, first, layers[first])
        await await_until(env.blob_gets, what="the first GET")  # `first` has the partial file
        tg.start_soon(pull, second, layers[second])

    assert outcomes["right"] == RootFS([big.diff_id])
    assert isinstance(outcomes["wrong"], DiffIDMismatchError)
    env.assert_stored(big)
    # In turn: the wrong pull checks the blob the right one stored, or the right one
    # fetches it again after the wrong one failed.
    assert len(env.blob_gets()) == (1 if first == "right" else 2)


# -- image configs ----------------------------------------------------------------------


async def test_recent_configs_are_kept_up_to_a_byte_limit_and_the_oldest_go_first(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloads, "_RECENT_CONFIG_BYTES", 2500)  # two of these, not three
    configs = [
        json.dumps({"os": "linux", "architecture": "amd64", "n": n}).encode().ljust(1000)
        for n in range(3)
    ]
    digests = [env.registry.add_blob(config) for config in configs]
    first, second, third = digests

    async def config(digest: Digest) -> bytes:
        return await env.manager.config(env.client, digest, MAX_CONFIG_SIZE)

    def gets() -> list[int]:
        return [len(env.registry.seen("GET", f"/v2/{REPO}/blobs/{d}")) for d in digests]

    assert [await config(digest) for digest in digests] == configs
    assert await config(second) == configs[1]  # the two latest fit: not fetched again
    assert await config(third) == configs[2]
    assert gets() == [1, 1, 1]

    assert await config(first) == configs[0]  # dropped for the third: fetched again
    assert gets() == [2, 1, 1]
    await config(third)  # kept; the second, now the oldest, made room for the first
    await config(second)
    assert gets() == [2, 2, 1]


# -- failures that fit their retry ------------------------------------------------------


async def test_a_429_with_retry_after_in_seconds_waits_that_long(
    env: Env, small: FakeLayer
) -> None:
    env.registry.add_blob(small.blob)
    busy = registry_error(429, "TOOMANYREQUESTS", "slow down")
    busy.headers["Retry-After"] = "1"
    env.registry.on("GET", BLOB_PATH, busy, times=1)
    progress = Recorder()
    started = time.monotonic()

    await env.download(small, progress=progress)

    assert time.monotonic() - started >= 0.9  # not the 0.01 s retry_delay
    assert retries(progress) == ["Retrying in 1 second"]
    env.assert_stored(small)


async def test_a_retry_after_as_an_http_date_is_waited_for(env: Env, small: FakeLayer) -> None:
    env.registry.add_blob(small.blob)
    busy = registry_error(503, "UNAVAILABLE", "maintenance")
    busy.headers["Retry-After"] = email.utils.formatdate(time.time() + 2, usegmt=True)
    env.registry.on("GET", BLOB_PATH, busy, times=1)
    started = time.monotonic()

    await env.download(small)

    assert time.monotonic() - started >= 0.9
    env.assert_stored(small)


async def test_a_retry_after_longer_than_max_retry_after_is_cut_to_it(
    env: Env, small: FakeLayer
) -> None:
    env.manager.retries = RetryPolicy(attempts=5, delay=0.01, max_retry_after=0.2)
    env.registry.add_blob(small.blob)
    busy = registry_error(429, "TOOMANYREQUESTS", "slow down")
    busy.headers["Retry-After"] = "3600"
    env.registry.on("GET", BLOB_PATH, busy, times=1)

    await env.download(small)  # within the env's 10 s, not an hour

    env.assert_stored(small)


async def test_a_short_body_that_already_hashes_to_the_digest_fails_at_once(
    env: Env, small: FakeLayer
) -> None:
    env.registry.add_blob(small.blob)
    progress = Recorder()
    with pytest.raises(ManifestError, match="the manifest is wrong"):
        await env.download(env.descriptor(small, size=small.size + 100), progress=progress)
    assert len(env.blob_gets()) == 1
    assert retries(progress) == []
    env.assert_nothing_stored()


async def test_an_empty_body_for_a_blob_that_is_not_empty_fails_at_once(
    env: Env, small: FakeLayer
) -> None:
    env.registry.on("GET", BLOB_PATH, Reply(200, {}, b""))
    progress = Recorder()
    with pytest.raises(RegistryProtocolError, match="empty body"):
        await env.download(small, progress=progress)
    assert len(env.blob_gets()) == 1
    assert retries(progress) == []


async def test_a_416_to_a_resume_fails_at_once_and_drops_the_partial_file(
    env: Env, big: FakeLayer
) -> None:
    env.registry.add_blob(big.blob)
    partial = env.leave_partial(big, big.blob[:MiB])
    env.registry.on("GET", BLOB_PATH, Reply(416, {"Content-Range": f"bytes */{MiB}"}))
    progress = Recorder()

    with pytest.raises(RangeNotSatisfiableError, match="416"):
        await env.download(big, progress=progress)

    assert len(env.blob_gets()) == 1
    assert retries(progress) == []
    assert not partial.exists()


async def test_a_resumed_download_that_does_not_match_starts_over_once_from_byte_0(
    env: Env, big: FakeLayer
) -> None:
    env.registry.add_blob(big.blob)
    other = make_layer(3 * MiB, seed=99)  # a valid gzip start that is not this blob's
    env.leave_partial(big, other.blob[:MiB])

    await env.download(big)

    assert [range_start(r) for r in env.blob_gets()] == [MiB, None]
    env.assert_stored(big)
