"""What a removal leaves for those who hold or pin what it removes, and how they let go.

A pull that finds an image stored holds it (its config pinned, its top layer held): an
`rmi` meanwhile leaves the config blob and the layers to it. Whether the pull then fails
or an `rmi` comes after its commit, once it lets go nothing of the image is left (but
what another layer registered since stands on); a pull that nothing disturbs lets go
without leaving the event loop, and looks at the database twice. And a removal's rename
of a blob holds up the pins of that blob only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from ferryd.distribution import pull as pull_module
from ferryd.distribution.prune import prune
from ferryd.errors import StoreError
from ferryd.oci.digest import Digest
from ferryd.store import Store
from ferryd.store.blobs import BlobStore
from ferryd.store.db import Database
from support.fakes import FakeRegistry, make_layer, serve_registry
from support.served import add_image
from support.slow_pulls import REPO
from test_races_store import InProcess, blob_files, in_process, pull, stream_errors

FAILED = "the pull's commit failed (a test)"


def nothing_left(store: Store, image_id: Digest) -> None:
    """No blob file, layer, pin, hold or deferral of the image is left."""
    left = {
        "files": blob_files(store),
        "layers": [layer.chain_id for layer in store.layers.all()],
        "holds": store.layers.holds.keys(),
        "pins": store.blobs.pins.keys(),
        "deferred": sorted(store.blobs.deferred([image_id])),
    }
    assert left == {"files": [], "layers": [], "holds": [], "pins": [], "deferred": []}


def removal(daemon: InProcess, how: str, name: str, image_id: Digest) -> None:
    """`rmi name` or `image prune -a` of the image, as the API runs them."""
    if how == "rmi":
        assert [record for record in daemon.rmi(name) if "Deleted" in record]
    else:
        log = daemon.service.event_logger
        assert prune(daemon.store, [image_id], dangling_only=False, log=log).deleted


# -- a pull of a stored image, and an rmi that takes it while the pull holds it ----------


@pytest.mark.parametrize("how", ["rmi", "prune"])
@pytest.mark.parametrize("moment", ["before-a-failed-commit", "after-the-commit"])
async def test_an_image_removed_while_a_pull_holds_it_leaves_nothing_once_the_pull_lets_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, moment: str
) -> None:
    """The second pull finds the image stored and holds it. The removal lands before the
    pull's commit, which then fails (the pull records nothing), or once it has committed
    (the pull succeeded, then the image went): it left the config blob (pinned) and the
    layers (held), which go as the pull lets go of them, not at the next removal."""
    registry = FakeRegistry()
    add_image(registry, "v1", [make_layer(50_000, seed=9201), make_layer(60_000, seed=9202)])
    async with serve_registry(registry) as server, in_process(tmp_path) as daemon:
        name = f"{server.host}/{REPO}:v1"
        assert stream_errors(await pull(daemon, name)) == []
        image_id = Digest((await daemon.client.get(f"/images/{name}/json")).json()["Id"])
        real = pull_module._commit

        def commit(*args: Any) -> Any:
            if moment == "after-the-commit":
                recorded = real(*args)
                removal(daemon, how, name, image_id)
                return recorded
            removal(daemon, how, name, image_id)
            # Left for the pull: its config (pinned) and its layers (held).
            assert daemon.store.blobs.has(image_id)
            assert len(daemon.store.layers.all()) == 2
            raise StoreError(FAILED)

        monkeypatch.setattr(pull_module, "_commit", commit)
        again = await pull(daemon, name)

        expected = [] if moment == "after-the-commit" else [FAILED]
        assert stream_errors(again) == expected
        assert (await daemon.client.get(f"/images/{name}/json")).status_code == 404
        nothing_left(daemon.store, image_id)
        assert daemon.problems() == []


@pytest.mark.parametrize("outcome", ["fails", "succeeds"])
async def test_an_image_removed_between_a_pulls_two_looks_serves_its_fetch_then_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    """The rmi lands once the pull holds the image and before it looks again: the pull
    fetches it as new, from what the rmi left for the hold (nothing is downloaded). If
    the pull fails, that goes as it lets go; if it succeeds, the image is whole."""
    registry = FakeRegistry()
    layers = [make_layer(50_000, seed=9211), make_layer(60_000, seed=9212)]
    add_image(registry, "v1", layers)
    async with serve_registry(registry) as server, in_process(tmp_path) as daemon:
        name = f"{server.host}/{REPO}:v1"
        assert stream_errors(await pull(daemon, name)) == []
        image_id = Digest((await daemon.client.get(f"/images/{name}/json")).json()["Id"])
        record = daemon.store.images.record(image_id)
        assert record is not None
        top = record.top_layer
        assert top is not None
        holds = daemon.store.layers.holds
        acquire = holds.acquire
        removed: list[list[dict[str, Any]]] = []

        def removed_once_held(chain: Digest) -> None:
            acquire(chain)
            if chain == top and not removed:
                removed.append(daemon.rmi(name))  # between the pull's two looks

        monkeypatch.setattr(holds, "acquire", removed_once_held)
        if outcome == "fails":

            def failing(*args: Any) -> Any:
                raise StoreError(FAILED)

            monkeypatch.setattr(pull_module, "_commit", failing)
        again = await pull(daemon, name)

        assert [record for record in removed[0] if "Deleted" in record]
        assert not [
            request
            for layer in layers
            for request in registry.seen("GET", f"/v2/{REPO}/blobs/{layer.digest}")[1:]
        ]  # each fetched once, by the first pull
        if outcome == "fails":
            assert stream_errors(again) == [FAILED]
            nothing_left(daemon.store, image_id)
        else:
            assert stream_errors(again) == []
            assert (await daemon.client.get(f"/images/{name}/json")).json()["Id"] == image_id
            assert (await daemon.client.get(f"/images/{name}/get")).status_code == 200
            assert daemon.store.layers.holds.keys() == []
            assert daemon.store.blobs.pins.keys() == []
        assert daemon.problems() == []


async def test_what_a_failed_pull_registered_since_the_removal_keeps_the_layers_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`a` is removed while a pull holds it; before that pull fails, a pull of `b` (`a`'s
    base, and a layer of its own on it) registers its layer and fails too. The layer `b`
    left stands on `a`'s base: that stays with it, for the next pull or removal; `a`'s
    top layer goes."""
    registry = FakeRegistry()
    base, top, own = (make_layer(40_000, seed=9231 + n) for n in range(3))
    add_image(registry, "a", [base, top])
    add_image(registry, "b", [base, own])
    async with serve_registry(registry) as server, in_process(tmp_path) as daemon:
        a, b = f"{server.host}/{REPO}:a", f"{server.host}/{REPO}:b"
        assert stream_errors(await pull(daemon, a)) == []
        image_id = Digest((await daemon.client.get(f"/images/{a}/json")).json()["Id"])
        pulled: list[httpx.Response] = []

        def commit(ctx: Any, reference: Any, *args: Any) -> Any:
            if reference.tag == "a":
                removal(daemon, "rmi", a, image_id)
                pulled.append(anyio.from_thread.run(pull, daemon, b))
            raise StoreError(FAILED)

        monkeypatch.setattr(pull_module, "_commit", commit)
        again = await pull(daemon, a)

        assert stream_errors(again) == [FAILED]
        assert stream_errors(pulled[0]) == [FAILED]
        files = {f"blobs/sha256/{layer.digest.removeprefix('sha256:')}" for layer in (base, own)}
        assert set(blob_files(daemon.store)) == files
        diff_ids = {layer.diff_id for layer in (base, own)}
        assert {layer.diff_id for layer in daemon.store.layers.all()} == diff_ids
        assert daemon.store.layers.holds.keys() == []
        assert daemon.store.blobs.pins.keys() == []
        assert daemon.problems() == []


async def test_a_pull_of_a_stored_image_looks_twice_on_the_loop_and_lets_go_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing removes the image: the pull looks for it with two queries, holds it, and
    lets go of it without a worker thread."""
    registry = FakeRegistry()
    add_image(registry, "v1", [make_layer(40_000, seed=9221), make_layer(30_000, seed=9222)])
    async with serve_registry(registry) as server, in_process(tmp_path) as daemon:
        name = f"{server.host}/{REPO}:v1"
        assert stream_errors(await pull(daemon, name)) == []
        queries = count_queries(monkeypatch, daemon.store.db)
        keep_stored = pull_module._keep_stored
        kept: list[int] = []

        def counted(*args: Any) -> Any:
            before = queries()
            found = keep_stored(*args)
            kept.append(queries() - before)
            return found

        deleted: list[Any] = []
        monkeypatch.setattr(pull_module, "_keep_stored", counted)
        monkeypatch.setattr(pull_module, "delete_left", deleted.append, raising=False)
        again = await pull(daemon, name)

        assert stream_errors(again) == []
        assert "Status: Image is up to date" in again.text
        assert kept == [2]
        assert deleted == []
        assert daemon.store.layers.holds.keys() == []
        assert daemon.store.blobs.pins.keys() == []


def count_queries(monkeypatch: pytest.MonkeyPatch, db: Database) -> Callable[[], int]:
    """Count the statements run on this thread from now on: the count so far."""
    thread = threading.get_ident()
    count = 0

    def counting(real: Callable[..., Any]) -> Callable[..., Any]:
        def statement(*args: Any) -> Any:
            nonlocal count
            count += threading.get_ident() == thread
            return real(*args)

        return statement

    for method in ("one", "all", "execute"):
        monkeypatch.setattr(db, method, counting(getattr(db, method)))
    return lambda: count


# -- a removal's rename of a blob, and pins meanwhile -------------------------------------


class HeldRename:
    """`os.replace` of one file (a blob a removal takes) waits until `go` is set; other
    renames go through (`BlobStore` calls the `os` module's)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, source: Path) -> None:
        self.source = source
        self.started = threading.Event()
        self.go = threading.Event()
        self.done = threading.Event()
        real = os.replace

        def replace(src: Any, dst: Any) -> None:
            if Path(src) != self.source:
                real(src, dst)
                return
            self.started.set()
            assert self.go.wait(30)
            real(src, dst)
            self.done.set()

        monkeypatch.setattr(os, "replace", replace)


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """`work` in a thread of its own, started; the list gets what it returns."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
    thread.start()
    return thread, result


@pytest.fixture
def two_blobs(tmp_path: Path) -> tuple[BlobStore, Digest, Digest]:
    store = BlobStore(tmp_path)
    return store, store.put(b'{"taken": true}'), store.put(b'{"pinned": true}')


def removal_of(store: BlobStore, digest: Digest) -> Callable[[], int]:
    """What `delete_blobs` does with one blob: the bytes it freed."""

    def remove() -> int:
        with store.pins.watching() as watch:
            return store.delete_unless_used(digest, watch)

    return remove


def test_a_pin_of_another_blob_does_not_wait_for_a_removals_rename(
    monkeypatch: pytest.MonkeyPatch, two_blobs: tuple[BlobStore, Digest, Digest]
) -> None:
    store, taken, other = two_blobs
    rename = HeldRename(monkeypatch, store.path(taken))
    remover, freed = in_thread(removal_of(store, taken))
    try:
        assert rename.started.wait(10)
        pinner, _ = in_thread(lambda: store.pins.acquire(other))
        pinner.join(5)
        assert not pinner.is_alive(), "the pin waited for another blob's rename"
        assert not rename.done.is_set()
        assert other in store.pins
    finally:
        rename.go.set()
        remover.join(10)
    assert freed == [len(b'{"taken": true}')]
    assert store.has(other)
    assert not store.has(taken)


def test_a_pin_of_the_blob_being_taken_waits_for_the_rename_and_finds_it_gone(
    monkeypatch: pytest.MonkeyPatch, two_blobs: tuple[BlobStore, Digest, Digest]
) -> None:
    """Pinned once the removal has chosen it, mid-rename: the pinner finds no half state
    (the blob there, then gone under it), but no blob, and the removal took it."""
    store, taken, _ = two_blobs
    rename = HeldRename(monkeypatch, store.path(taken))
    remover, freed = in_thread(removal_of(store, taken))
    try:
        assert rename.started.wait(10)

        def pin_and_look() -> tuple[bool, bool]:
            store.pins.acquire(taken)
            return rename.done.is_set(), store.has(taken)

        pinner, seen = in_thread(pin_and_look)
        pinner.join(0.3)
        assert pinner.is_alive()  # waiting for the rename
    finally:
        rename.go.set()
        remover.join(10)
    pinner.join(10)
    assert seen == [(True, False)]  # after the rename, and nothing there
    assert freed == [len(b'{"taken": true}')]
    assert taken in store.pins
    assert store.deferred([taken]) == set()
