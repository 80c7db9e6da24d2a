"""Layer GETs sent while the image config is fetched: taken by their transfers (one GET
per blob still), let go when the pull fails, their errors met as a first attempt's."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from ferryd.distribution import pull as pull_module
from ferryd.distribution.downloads import AHEAD_WHOLE, SMALL_BLOB, DownloadManager
from ferryd.oci.image_config import RootFS
from ferryd.registry.auth import ANONYMOUS
from ferryd.registry.connector import Connector
from ferryd.registry.endpoints import RegistryService
from ferryd.store import Store
from support.app import in_process_api
from support.daemon import Daemon, errors
from support.fakes import (
    FakeRegistry,
    Recorder,
    Reply,
    Request,
    background,
    make_layer,
    serve_registry,
)
from support.served import add_image, served
from support.slow_pulls import REPO, held
from support.waiting import await_until, wait_until

MiB = 1 << 20


def gets(registry: FakeRegistry, digest: str) -> int:
    return len(registry.seen("GET", f"/v2/{REPO}/blobs/{digest}"))


def far_away(registry: FakeRegistry) -> None:
    """Answer manifests after 50 ms, as a registry a round trip away does: a pull sends
    layer GETs ahead only when a round trip costs something."""

    async def late(request: Request) -> None:
        await anyio.sleep(0.05)  # then the normal answer

    registry.on("GET", f"/v2/{REPO}/manifests/.*", late)


@pytest.mark.parametrize(
    ("sizes", "ahead"),
    [
        # As many as download at once, in the manifest's order.
        ([300_000] * 5, [1, 1, 1, 0, 0]),
        # A big one's transfer reads it in a worker thread, into its sink: an answer
        # sent ahead would have to stream through the event loop.
        ([6 * MiB, 300_000, 300_000], [0, 1, 1]),
    ],
    ids=["small-layers", "a-big-layer-first"],
)
def test_the_first_layers_are_asked_for_while_the_config_is_on_its_way(
    start_daemon: Callable[..., Daemon], sizes: list[int], ahead: list[int]
) -> None:
    registry = FakeRegistry()
    layers = [make_layer(size, seed=820 + n) for n, size in enumerate(sizes)]
    assert (layers[0].size > SMALL_BLOB) == (ahead[0] == 0)
    config = add_image(registry, "v1", layers)
    far_away(registry)
    config_released = held(registry, "GET", f"/v2/{REPO}/blobs/{config}")
    daemon = start_daemon(max_concurrent_downloads=3)
    result: list[list[str]] = []
    with served(registry) as (portal, server):
        puller = threading.Thread(
            target=lambda: result.append(errors(daemon.pull(f"{server.host}/{REPO}:v1")))
        )
        puller.start()
        wait_until(lambda: [gets(registry, layer.digest) for layer in layers] == ahead)
        time.sleep(0.2)  # what was sent ahead went out at once: nothing more comes
        assert [gets(registry, layer.digest) for layer in layers] == ahead
        portal.call(config_released.set)
        puller.join(60)

    assert result == [[]]
    assert [gets(registry, layer.digest) for layer in layers] == [1] * len(layers)
    assert daemon.inspect(f"{server.host}/{REPO}:v1")["Id"] == config


@pytest.mark.anyio
@pytest.mark.parametrize(("threshold", "ahead"), [(60.0, False), (0.0, True)])
async def test_layer_gets_go_ahead_only_after_a_manifest_slow_enough_to_be_worth_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threshold: float, ahead: bool
) -> None:
    """On loopback (a manifest in under 10 ms) a round trip costs nothing to save: the
    config is fetched before any layer is asked for. Here the bar is set beyond (60 s)
    or below (0) any manifest's time; the config's answer waits up to half a second
    for a layer GET."""
    monkeypatch.setattr(pull_module, "SEND_AHEAD_AFTER", threshold)
    registry = FakeRegistry()
    layer = make_layer(100_000, seed=860)
    config = add_image(registry, "v1", [layer])
    layer_asked = anyio.Event()
    asked_while_the_config_waited: list[bool] = []

    async def note_the_layer(request: Request) -> None:
        layer_asked.set()  # then the normal answer

    async def after_any_layer_get(request: Request) -> None:
        with anyio.move_on_after(0.5):
            await layer_asked.wait()
        asked_while_the_config_waited.append(layer_asked.is_set())

    registry.on("GET", f"/v2/{REPO}/blobs/{layer.digest}", note_the_layer)
    registry.on("GET", f"/v2/{REPO}/blobs/{config}", after_any_layer_get, times=1)
    async with serve_registry(registry) as server, in_process_api(tmp_path) as api:
        answer = await api.post("/images/create", params={"fromImage": f"{server.host}/{REPO}:v1"})
        assert "errorDetail" not in answer.text

    assert asked_while_the_config_waited == [ahead]
    assert gets(registry, layer.digest) == 1


def test_layers_already_here_are_not_asked_for_ahead(
    start_daemon: Callable[..., Daemon],
) -> None:
    registry = FakeRegistry()
    base, top = make_layer(200_000, seed=830), make_layer(100_000, seed=831)
    add_image(registry, "base", [base])
    config = add_image(registry, "app", [base, top])
    far_away(registry)
    daemon = start_daemon()
    with served(registry) as (_, server):
        assert errors(daemon.pull(f"{server.host}/{REPO}:base")) == []
        assert errors(daemon.pull(f"{server.host}/{REPO}:app")) == []

    assert (gets(registry, base.digest), gets(registry, top.digest)) == (1, 1)
    assert daemon.inspect(f"{server.host}/{REPO}:app")["Id"] == config


def test_a_pull_whose_config_fails_lets_go_of_what_it_asked_for_ahead(
    start_daemon: Callable[..., Daemon],
) -> None:
    registry = FakeRegistry()
    layer = make_layer(3 * MiB, seed=840)  # sent ahead and held unread
    assert AHEAD_WHOLE < layer.size <= SMALL_BLOB
    config = add_image(registry, "v1", [layer])
    far_away(registry)

    layer_asked = anyio.Event()

    async def note_the_layer(request: Request) -> None:
        layer_asked.set()  # then the normal answer

    async def missing_once_the_layer_is_asked_for(request: Request) -> Reply:
        with anyio.move_on_after(10):  # never asked for: the assertion below says so
            await layer_asked.wait()
        return Reply(404)

    registry.on("GET", f"/v2/{REPO}/blobs/{layer.digest}", note_the_layer)
    registry.on("GET", f"/v2/{REPO}/blobs/{config}", missing_once_the_layer_is_asked_for, times=1)
    daemon = start_daemon()
    with served(registry) as (_, server):
        reference = f"{server.host}/{REPO}:v1"
        [failed] = errors(daemon.pull(reference))
        assert config in failed
        assert gets(registry, layer.digest) == 1
        wait_until(lambda: daemon.client().get_json("/transfers") == [])

        # The answer let go is not taken by the next pull's transfer: it asks again.
        assert errors(daemon.pull(reference)) == []

    assert gets(registry, layer.digest) == 2
    assert daemon.inspect(reference)["Id"] == config


def test_an_error_to_a_get_sent_ahead_is_its_transfers_first_attempt(
    start_daemon: Callable[..., Daemon],
) -> None:
    registry = FakeRegistry()
    layer = make_layer(100_000, seed=850)
    add_image(registry, "v1", [layer])
    far_away(registry)
    registry.on("GET", f"/v2/{REPO}/blobs/{layer.digest}", Reply(503), times=1)
    daemon = start_daemon(retry_delay=0.1)
    with served(registry) as (_, server):
        assert errors(daemon.pull(f"{server.host}/{REPO}:v1")) == []

    [retry] = daemon.log_events("transfer.retry")
    assert (retry["attempt"], retry["cause"]) == (1, "TransientRegistryError")
    assert gets(registry, layer.digest) == 2


@pytest.mark.anyio
async def test_a_layer_whose_transfer_starts_while_the_disk_is_looked_at_is_not_asked_for_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GETs to send ahead are chosen by what memory knows (the transfers running),
    then by the disk in a worker call. Another platform's pull of the same layer may
    start its transfer, and send its GET, during that call: seen in a bench run of an
    index pulled whole, its shared layer asked for twice."""
    registry = FakeRegistry()
    layer = make_layer(200_000, seed=870)
    registry.add_blob(layer.blob)
    store = Store(tmp_path / "root")
    connector = Connector(RegistryService())
    looked: list[list[str]] = []
    try:
        async with serve_registry(registry) as server, background() as tg:
            manager = DownloadManager(store.blobs, store.layers, store.metadata, tg)
            client = await connector.open(server.host, REPO, ANONYMOUS)
            descriptor = layer.descriptor(server.host, REPO)
            run_sync = anyio.to_thread.run_sync

            async def download() -> None:
                _, release = await manager.download(
                    client, RootFS([]), "linux", [descriptor], Recorder()
                )
                release()

            async def meanwhile(
                func: Callable[[], list[str]], *args: object, **kw: object
            ) -> object:
                result = await run_sync(func, *args, **kw)  # type: ignore[arg-type]
                if getattr(func, "__name__", "") == "nowhere":
                    looked.append(result)
                    tg.start_soon(download)  # and its GET goes out before we go on
                    await await_until(lambda: gets(registry, layer.digest) == 1)
                return result

            monkeypatch.setattr(anyio.to_thread, "run_sync", meanwhile)
            with anyio.fail_after(10):
                async with manager.sending_ahead(client, [descriptor.descriptor]):
                    monkeypatch.setattr(anyio.to_thread, "run_sync", run_sync)
                    sent_ahead = layer.digest in manager._ahead
                    await await_until(lambda: store.blobs.has(layer.digest))
    finally:
        await connector.aclose()
        store.close()

    assert looked == [[layer.digest]]  # the disk had nothing of it when looked at
    assert not sent_ahead
    assert gets(registry, layer.digest) == 1
