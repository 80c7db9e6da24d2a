"""Removals racing the operations that use what they remove: an `rmi` (or a sweep)
while a pull, load, push or save of the same image (or of one sharing its layers) runs,
at the moments that matter, forced with hooks rather than timing; and clients that go
away in the middle of a load, a save or a pull.

After both, the store is whole (`fsck` clean), and each operation either did all of its
work or failed saying why."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from ferryd.daemon.api.app import build_app
from ferryd.distribution import pull as pull_module
from ferryd.distribution import push as push_module
from ferryd.distribution import tagging
from ferryd.distribution.archives import save as save_module
from ferryd.distribution.prune import prune
from ferryd.distribution.service import ImageService
from ferryd.distribution.tagging import remove
from ferryd.errors import StoreError
from ferryd.oci.digest import Digest
from ferryd.oci.mediatypes import OCI_LAYER_GZIP
from ferryd.oci.platform import host_platform
from ferryd.store import Store, gc
from ferryd.store import sweep as sweep_module
from ferryd.store.fsck import check
from support.app import running
from support.archives import (
    IMAGE_NAME,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    TarWriter,
    load,
)
from support.daemon import Daemon, errors
from support.digests import sha256
from support.fakes import FakeRegistry, Reply, UploadRegistry, make_layer, serve_registry
from support.served import add_image, served
from support.slow_pulls import REPO, held
from support.waiting import await_until, wait_until

MiB = 1 << 20


@dataclass
class InProcess:
    """The daemon's API in this process, with the store and service it serves."""

    client: httpx.AsyncClient
    store: Store
    service: ImageService

    def rmi(self, name: str, *, force: bool = False) -> list[dict[str, Any]]:
        """`rmi` as the API runs it (call it from a worker thread, as the API does)."""
        return remove(self.store, name, force=force, log=self.service.event_logger)

    def problems(self) -> list[str]:
        return [problem.message for problem in check(self.store).problems]


@asynccontextmanager
async def in_process(workdir: Path, **settings: Any) -> AsyncIterator[InProcess]:
    """As `support.app.in_process_api`, keeping hold of the store and the service."""
    async with running(workdir, **settings) as daemon:
        transport = httpx.ASGITransport(app=build_app(daemon.service, daemon.state))
        async with httpx.AsyncClient(transport=transport, base_url="http://ferryd") as client:
            yield InProcess(client, daemon.store, daemon.service)


async def pull(daemon: InProcess, name: str) -> httpx.Response:
    return await daemon.client.post("/images/create", params={"fromImage": name})


async def tag(daemon: InProcess, name: str, repository: str, tag: str) -> None:
    answer = await daemon.client.post(
        f"/images/{name}/tag", params={"repo": repository, "tag": tag}
    )
    assert answer.status_code == 201


async def load_in_process(daemon: InProcess, archive: bytes) -> httpx.Response:
    return await daemon.client.post("/images/load", content=archive)


def blob_files(store: Store) -> list[str]:
    """What is under blobs/ and partial/ (temp files too), relative to the root."""
    return sorted(
        str(path.relative_to(store.root))
        for directory in ("blobs", "partial")
        for path in (store.root / directory).rglob("*")
        if path.is_file()
    )


def stream_errors(answer: httpx.Response) -> list[str]:
    """The errors of a progress stream (or of an answer refused with a status)."""
    if answer.status_code != 200:
        return [answer.json()["message"]]
    return [line["error"] for line in _lines(answer) if "error" in line]


def _lines(answer: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in answer.text.splitlines() if line.strip()]


def plain_layer(size: int, seed: int) -> bytes:
    """An uncompressed layer whose one file holds `size` random bytes."""
    return TarWriter().file(f"file-{seed}", random.Random(seed).randbytes(size)).bytes()


def oci_archive(
    name: str, layer: bytes, *, diff_id: str | None = None, media_type: str = OCI_LAYER_TAR
) -> bytes:
    """An OCI archive of one image named `name` with one layer, the blob `layer` (whose
    DiffID is its digest unless given)."""
    config = json.dumps(
        {
            "architecture": host_platform().architecture,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id or sha256(layer)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": media_type, "digest": sha256(layer), "size": len(layer)}],
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": sha256(manifest),
                "size": len(manifest),
                "annotations": {IMAGE_NAME: name},
            }
        ],
    }
    archive = TarWriter().json("oci-layout", {"imageLayoutVersion": "1.0.0"})
    archive.json("index.json", index)
    for blob in (config, manifest, layer):
        archive.file(f"blobs/sha256/{sha256(blob).removeprefix('sha256:')}", blob)
    return archive.bytes()


# -- 1. rmi while a pull runs ---------------------------------------------------------


@pytest.mark.parametrize("removal", ["rmi", "prune"])
async def test_a_pull_of_a_stored_image_removed_before_its_commit_stores_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, removal: str
) -> None:
    """The pull found the image stored (nothing to fetch); an `rmi` (or `image prune
    -a`) takes it, with its layers and blobs, before the pull commits."""
    registry = FakeRegistry()
    add_image(registry, "v1", [make_layer(50_000, seed=9101), make_layer(60_000, seed=9102)])
    async with serve_registry(registry) as server, in_process(tmp_path) as daemon:
        name = f"{server.host}/{REPO}:v1"
        assert stream_errors(await pull(daemon, name)) == []
        image_id = (await daemon.client.get(f"/images/{name}/json")).json()["Id"]
        real = pull_module._commit

        def removed_first(*args: Any) -> Any:
            if removal == "rmi":
                assert daemon.rmi(name)
            else:
                log = daemon.service.event_logger
                assert prune(daemon.store, [image_id], dangling_only=False, log=log).deleted
            return real(*args)

        monkeypatch.setattr(pull_module, "_commit", removed_first)
        again = await pull(daemon, name)

        assert stream_errors(again) == []
        assert "Status: Downloaded newer image" in again.text  # its tags were made again
        assert daemon.problems() == []
        inspected = await daemon.client.get(f"/images/{name}/json")
        assert inspected.json()["Id"] == image_id
        saved = await daemon.client.get(f"/images/{name}/get")  # every blob of it is there
        assert saved.status_code == 200


async def test_a_layer_blob_a_pull_takes_up_between_an_rmis_commit_and_its_deletions_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rmi of `a` has committed (its layer's row is gone, the blob is to go) when a
    pull of `b`, which has the same layer, finds the blob there and registers it."""
    registry = FakeRegistry()
    shared = make_layer(70_000, seed=9111)
    add_image(registry, "a", [shared, make_layer(40_000, seed=9112)])
    add_image(registry, "b", [shared])
    async with serve_registry(registry) as server, in_process(tmp_path) as daemon:
        a, b = f"{server.host}/{REPO}:a", f"{server.host}/{REPO}:b"
        assert stream_errors(await pull(daemon, a)) == []
        real = tagging.delete_blobs
        pulled: list[httpx.Response] = []

        def pull_b_first(*args: Any) -> None:
            pulled.append(anyio.from_thread.run(pull, daemon, b))
            real(*args)

        monkeypatch.setattr(tagging, "delete_blobs", pull_b_first)
        await anyio.to_thread.run_sync(daemon.rmi, a)

        [answer] = pulled
        assert stream_errors(answer) == []
        assert daemon.problems() == []
        assert daemon.store.blobs.has(shared.digest)


async def test_a_layer_blob_a_load_takes_up_between_an_rmis_commit_and_its_deletions_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for a pull: an archive with `a`'s layer is loaded between the commit of
    `rmi a` and its deletions, and finds the layer's blob still there."""
    registry = FakeRegistry()
    shared = make_layer(70_000, seed=9115)
    add_image(registry, "a", [shared])
    archive = oci_archive(
        "example.test/races/loaded:v1",
        shared.blob,
        diff_id=shared.diff_id,
        media_type=OCI_LAYER_GZIP,
    )
    async with serve_registry(registry) as server, in_process(tmp_path) as daemon:
        a = f"{server.host}/{REPO}:a"
        assert stream_errors(await pull(daemon, a)) == []
        real = tagging.delete_blobs
        loaded: list[httpx.Response] = []

        def load_first(*args: Any) -> None:
            loaded.append(anyio.from_thread.run(load_in_process, daemon, archive))
            real(*args)

        monkeypatch.setattr(tagging, "delete_blobs", load_first)
        await anyio.to_thread.run_sync(daemon.rmi, a)

        [answer] = loaded
        assert stream_errors(answer) == []
        assert daemon.problems() == []
        assert daemon.store.blobs.has(shared.digest)


async def test_an_orphan_blob_a_pull_takes_up_while_a_sweep_runs_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layer blob no row references (a pull that failed after storing it): the sweep
    has listed it as an orphan when a pull finds it there and registers its layer."""
    registry = FakeRegistry()
    layer = make_layer(80_000, seed=9121)
    add_image(registry, "v1", [layer])
    async with serve_registry(registry) as server, in_process(tmp_path) as daemon:
        name = f"{server.host}/{REPO}:v1"
        daemon.store.blobs.path(layer.digest).write_bytes(layer.blob)
        real = sweep_module.leftovers
        pulled: list[httpx.Response] = []

        def pull_meanwhile(*args: Any) -> Any:
            found = real(*args)
            pulled.append(anyio.from_thread.run(pull, daemon, name))
            return found

        monkeypatch.setattr(sweep_module, "leftovers", pull_meanwhile)
        await anyio.to_thread.run_sync(lambda: sweep_module.sweep(daemon.store, reason="test"))

        [answer] = pulled
        assert stream_errors(answer) == []
        assert registry.seen("GET", f"/v2/{REPO}/blobs/{layer.digest}") == []  # taken up
        assert daemon.problems() == []
        assert daemon.store.blobs.has(layer.digest)


# -- 2. rmi while a push or a save runs -------------------------------------------------


async def test_an_image_removed_while_it_is_pushed_is_pushed_whole_with_its_own_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = FakeRegistry(), UploadRegistry()
    add_image(source, "v1", [make_layer(90_000, seed=9131), make_layer(30_000, seed=9132)])
    _, pulled_manifest = source.manifests["v1"]
    async with (
        serve_registry(source) as origin,
        serve_registry(target) as destination,
        in_process(tmp_path) as daemon,
    ):
        name = f"{origin.host}/{REPO}:v1"
        assert stream_errors(await pull(daemon, name)) == []
        image_id = (await daemon.client.get(f"/images/{name}/json")).json()["Id"]
        pushed = f"{destination.host}/{REPO}"
        await tag(daemon, name, pushed, "v1")
        real = push_module._upload_layers

        async def removed_once_uploaded(*args: Any, **kwargs: Any) -> Any:
            uploaded = await real(*args, **kwargs)
            await anyio.to_thread.run_sync(lambda: daemon.rmi(image_id, force=True))
            return uploaded

        monkeypatch.setattr(push_module, "_upload_layers", removed_once_uploaded)
        answer = await daemon.client.post(f"/images/{pushed}/push", params={"tag": "v1"})

        assert stream_errors(answer) == []
        _, raw = target.manifests["v1"]
        assert raw == pulled_manifest  # the manifest it started with, digest and all
        assert daemon.problems() == []
        assert (await daemon.client.get(f"/images/{image_id}/json")).status_code == 404


async def test_an_image_removed_before_its_push_takes_hold_of_it_fails_as_no_such_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The push has found the tag (its plan is made) when an rmi takes the image, before
    the push reads its config: it fails saying so, having sent nothing."""
    source, target = FakeRegistry(), UploadRegistry()
    add_image(source, "v1", [make_layer(50_000, seed=9135)])
    async with (
        serve_registry(source) as origin,
        serve_registry(target) as destination,
        in_process(tmp_path) as daemon,
    ):
        name = f"{origin.host}/{REPO}:v1"
        assert stream_errors(await pull(daemon, name)) == []
        image_id = (await daemon.client.get(f"/images/{name}/json")).json()["Id"]
        pushed = f"{destination.host}/{REPO}"
        await tag(daemon, name, pushed, "v1")
        real = push_module._push_image

        async def removed_first(*args: Any, **kwargs: Any) -> Any:
            await anyio.to_thread.run_sync(lambda: daemon.rmi(image_id, force=True))
            return await real(*args, **kwargs)

        monkeypatch.setattr(push_module, "_push_image", removed_first)
        answer = await daemon.client.post(f"/images/{pushed}/push", params={"tag": "v1"})

        assert stream_errors(answer) == [f"No such image: {image_id}"]
        assert target.manifests == {}
        assert target.repositories == {}
        assert daemon.problems() == []


async def test_an_image_removed_while_it_is_saved_is_saved_whole_and_leaves_no_orphan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = FakeRegistry()
    layers = [make_layer(300_000, seed=9141), make_layer(200_000, seed=9142)]
    add_image(registry, "v1", layers)
    async with serve_registry(registry) as server, in_process(tmp_path) as daemon:
        name = f"{server.host}/{REPO}:v1"
        assert stream_errors(await pull(daemon, name)) == []
        before = await daemon.client.get(f"/images/{name}/get")
        assert before.status_code == 200
        real = save_module._blob_pieces
        removed: list[list[dict[str, Any]]] = []

        async def removed_as_it_streams(entry: Any) -> AsyncIterator[bytes]:
            if not removed:  # the first blob from disk: the archive has begun
                removed.append(await anyio.to_thread.run_sync(daemon.rmi, name))
            async for piece in real(entry):
                yield piece

        monkeypatch.setattr(save_module, "_blob_pieces", removed_as_it_streams)
        during = await daemon.client.get(f"/images/{name}/get")

        assert during.status_code == 200
        assert during.content == before.content
        assert [record for record in removed[0] if "Deleted" in record]
        assert (await daemon.client.get("/images/json")).json() == []
        assert daemon.problems() == []
        # The config and the manifest went with the rmi; the layers the save held are
        # left as layers no image uses (a cache for the next pull, as fsck says).
        assert blob_files(daemon.store) == sorted(
            f"blobs/sha256/{layer.digest.removeprefix('sha256:')}" for layer in layers
        )


async def test_an_image_removed_while_its_save_is_prepared_is_saved_and_leaves_no_orphan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rmi lands once the save has pinned the image's config and held its layers,
    before the archive's files are listed: the archive is whole (it loads again), and
    the config the save kept from the rmi goes once the save lets go of it."""
    registry = FakeRegistry()
    add_image(registry, "v1", [make_layer(100_000, seed=9151)])
    async with serve_registry(registry) as server, in_process(tmp_path) as daemon:
        name = f"{server.host}/{REPO}:v1"
        assert stream_errors(await pull(daemon, name)) == []
        image_id = (await daemon.client.get(f"/images/{name}/json")).json()["Id"]
        real = save_module._entries

        def removed_first(*args: Any) -> Any:
            assert daemon.rmi(name)  # in the save's worker thread, as a concurrent rmi
            return real(*args)

        monkeypatch.setattr(save_module, "_entries", removed_first)
        saved = await daemon.client.get(f"/images/{name}/get")

        assert saved.status_code == 200
        assert daemon.problems() == []
        assert not daemon.store.blobs.has(image_id)
        loaded = await daemon.client.post("/images/load", content=saved.content)
        assert stream_errors(loaded) == []
        assert (await daemon.client.get(f"/images/{name}/json")).json()["Id"] == image_id
        assert daemon.problems() == []


@pytest.mark.parametrize(
    "moment", ["downloading", "blobs-written", "layers-registered", "image-committed"]
)
async def test_removing_an_image_while_one_that_shares_its_layers_is_pulled_keeps_both_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """`b` has `a`'s first layer as its own first layer (one ChainID), `a`'s second as
    its third (another ChainID, the same blob), and a layer of its own. `rmi a` (and the
    sweep after it) lands while that layer downloads, once its blob is in the store and
    before its layer is registered, once the layers are and before the image is, or just
    after the pull's commit."""
    registry = FakeRegistry()
    base, top, own = (make_layer(60_000, seed=9160 + n) for n in range(3))
    add_image(registry, "a", [base, top])
    add_image(registry, "b", [base, own, top])
    async with serve_registry(registry) as server, in_process(tmp_path) as daemon:
        a, b = f"{server.host}/{REPO}:a", f"{server.host}/{REPO}:b"
        assert stream_errors(await pull(daemon, a)) == []
        removed: list[list[dict[str, Any]]] = []

        def rmi_a() -> None:
            removed.append(daemon.rmi(a))

        downloads = daemon.service.downloads
        register_all, commit = downloads._register_all, pull_module._commit

        def register_after_rmi(*args: Any) -> Any:
            rmi_a()
            return register_all(*args)

        def commit_around_rmi(*args: Any) -> Any:
            if moment == "layers-registered":
                rmi_a()
            recorded = commit(*args)
            if moment == "image-committed":
                rmi_a()
            return recorded

        if moment == "blobs-written":
            monkeypatch.setattr(downloads, "_register_all", register_after_rmi)
        monkeypatch.setattr(pull_module, "_commit", commit_around_rmi)
        release = held(registry, "GET", f"/v2/{REPO}/blobs/{own.digest}")
        if moment != "downloading":
            release.set()
        answers: list[httpx.Response] = []
        async with anyio.create_task_group() as tg:

            async def pull_b() -> None:
                answers.append(await pull(daemon, b))

            tg.start_soon(pull_b)
            if moment == "downloading":
                await await_until(lambda: registry.seen("GET", f"/v2/{REPO}/blobs/{own.digest}"))
                await anyio.to_thread.run_sync(rmi_a)
                release.set()

        assert stream_errors(answers[0]) == []
        assert [record for record in removed[0] if "Deleted" in record]
        assert daemon.problems() == []
        assert (await daemon.client.get(f"/images/{a}/json")).status_code == 404
        assert (await daemon.client.get(f"/images/{b}/json")).status_code == 200
        # Only `b`'s blobs are left: its three layers, its config and its manifest.
        assert len(blob_files(daemon.store)) == 5


# -- 3. a client that leaves in the middle of a load -------------------------------------


def staged(daemon: Daemon) -> int:
    """Bytes in the daemon's staging directories (loads under way)."""
    total = 0
    for path in (daemon.root / "loading").rglob("*"):
        with contextlib.suppress(FileNotFoundError):  # gone since it was listed
            total += path.stat().st_size if path.is_file() else 0
    return total


def fsck_problems(daemon: Daemon) -> list[str]:
    with daemon.http() as client:
        report = client.post("/fsck").json()
    return [problem["Message"] for problem in report["Problems"]]


@pytest.mark.parametrize("how", ["closed", "half-closed"])
def test_a_load_whose_client_leaves_half_way_stores_nothing_and_the_next_one_loads(
    daemon: Daemon, how: str
) -> None:
    """The client sends half of the archive it announced, then closes the connection (or
    shuts down its sending side and waits for the answer)."""
    name = "example.test/races/cut:v1"
    archive = oci_archive(name, plain_layer(12 * MiB, seed=9171))
    head = (
        "POST /v1.47/images/load?quiet=0 HTTP/1.1\r\nHost: ferryd\r\n"
        f"Content-Type: application/x-tar\r\nContent-Length: {len(archive)}\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(daemon.socket))
        client.sendall(head + archive[: len(archive) // 2])
        # The daemon is writing the layer to its staging directory: the load is under way.
        wait_until(lambda: staged(daemon) > 2 * MiB, what="the load to stage the layer")
        if how == "half-closed":
            client.shutdown(socket.SHUT_WR)
            client.settimeout(30)
            answer = b""
            while piece := client.recv(65536):
                answer += piece  # whatever it says, the daemon ends the answer

    [failed] = wait_until(lambda: daemon.log_events("image.load_failed"))
    assert failed["error"] == "cancelled"
    wait_until(lambda: not any((daemon.root / "loading").iterdir()), what="staging removed")
    assert daemon.alive
    assert daemon.images() == []
    assert fsck_problems(daemon) == []
    assert daemon.blob_files() == []

    loaded = load(daemon, archive)
    assert loaded.error is None
    assert loaded.lines == [f"Loaded image: {name}"]
    assert fsck_problems(daemon) == []


# -- 4. a client that leaves in the middle of a save or a pull ----------------------------


def open_store_files(daemon: Daemon) -> list[str]:
    """The files under the daemon's root that it has open (its database aside)."""
    assert daemon.process is not None
    opened = []
    for fd in Path(f"/proc/{daemon.process.pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue  # closed since it was listed
        if target.startswith(str(daemon.root)) and "ferryd." not in Path(target).name:
            opened.append(target)
    return opened


def test_a_client_that_leaves_mid_save_leaves_nothing_open_or_held(daemon: Daemon) -> None:
    registry = FakeRegistry()
    add_image(registry, "v1", [make_layer(8 * MiB, seed=9181)])
    with served(registry) as (_, server):
        name = f"{server.host}/{REPO}:v1"
        assert errors(daemon.pull(name)) == []
    with daemon.http() as client, client.stream("GET", f"/images/{name}/get") as response:
        assert response.status_code == 200
        next(response.iter_raw(65536))  # then the connection closes, the archive unread

    [failed] = wait_until(lambda: daemon.log_events("image.save_failed"))
    assert failed["error"] == "cancelled"
    wait_until(lambda: open_store_files(daemon) == [], what="the layer blob closed")
    assert daemon.alive
    assert fsck_problems(daemon) == []
    # Nothing is held: the rmi takes the image and every blob of it.
    assert daemon.client().request("DELETE", f"/images/{name}").status == 200
    assert daemon.blob_files() == []


def test_a_client_that_leaves_mid_pull_leaves_only_the_partial_the_next_pull_resumes(
    daemon: Daemon,
) -> None:
    registry = FakeRegistry()
    layer = make_layer(8 * MiB, seed=9191)
    add_image(registry, "v1", [layer])
    stalled = anyio.Event()
    path = f"/v2/{REPO}/blobs/{layer.digest}"
    registry.on(
        "GET", path, Reply(200, {}, layer.blob, stall_after=3 * MiB, release=stalled), times=1
    )
    with served(registry) as (portal, server):
        name = f"{server.host}/{REPO}:v1"
        with (
            daemon.http() as client,
            client.stream("POST", "/images/create", params={"fromImage": name}) as response,
        ):
            assert response.status_code == 200
            # Until the layer's first 3 MiB are in its partial file, the rest stalled.
            daemon.wait_for_download(layer.digest, 2 * MiB)
        # The client has gone: the pull is cancelled, its transfer with it.
        [failed] = wait_until(lambda: daemon.log_events("image.pull_failed"))
        assert failed["error"] == "cancelled"
        wait_until(lambda: daemon.client().get_json("/transfers") == [], what="no transfer")
        assert daemon.client().get_json("/jobs") == []
        wait_until(lambda: open_store_files(daemon) == [], what="the partial file closed")
        assert daemon.alive
        assert daemon.images() == []
        assert fsck_problems(daemon) == []
        kept = daemon.partial_path(layer.digest).stat().st_size
        assert kept >= 2 * MiB

        assert errors(daemon.pull(name)) == []  # resumed where the first one stopped
        portal.call(stalled.set)
        [*_, resumed] = registry.seen("GET", path)
        assert resumed.headers.get("range") == f"bytes={kept}-"

    assert fsck_problems(daemon) == []
    assert not daemon.partial_path(layer.digest).exists()


async def test_a_save_whose_pins_cannot_be_let_go_cleanly_still_lets_go_of_its_layers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An rmi while the save is prepared, then a database that fails as the save lets go
    of the pins: what is left is the sweep's, and no layer stays held."""
    registry = FakeRegistry()
    add_image(registry, "v1", [make_layer(100_000, seed=1)])
    async with serve_registry(registry) as server, in_process(tmp_path) as daemon:
        name = f"{server.host}/{REPO}:v1"
        assert stream_errors(await pull(daemon, name)) == []
        real = save_module._entries

        def removed_first(*args: Any) -> Any:
            assert daemon.rmi(name)
            return real(*args)

        def failing(store: Store, digest: Digest) -> bool:
            raise StoreError("database disk image is malformed (a test)")

        monkeypatch.setattr(save_module, "_entries", removed_first)
        monkeypatch.setattr(gc, "is_referenced", failing)
        await daemon.client.get(f"/images/{name}/get")
        assert daemon.store.layers.holds.keys() == []
