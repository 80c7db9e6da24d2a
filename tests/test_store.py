"""The store, in this process: reference counts, garbage collection of images, layers and
blobs, the tables (manifests, references, images), name resolution and the blob files.

Each test opens a Store in tmp_path. Layers are registered on tiny blobs (the store does
not look inside them) and released at once, as a finished pull does: only what a test
holds or pins itself is kept from collection.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from ferryd.errors import DigestMismatchError, ImageNotFoundError, StoreError
from ferryd.oci.digest import Digest
from ferryd.oci.reference import parse_reference
from ferryd.store import Store
from ferryd.store import blobs as blobs_module
from ferryd.store.blobs import TEMP_PREFIX, BlobStore
from ferryd.store.gc import delete_blobs, remove_image
from ferryd.store.layers import Layer
from ferryd.store.refcount import RefCounter
from support.digests import sha256

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def stack(store: Store, *contents: bytes, on: Layer | None = None) -> list[Layer]:
    """Register one layer per content, each on the one before (the first on `on`), with
    the content as its blob and the content's digest as its DiffID; no hold is kept."""
    layers: list[Layer] = []
    parent = on
    for content in contents:
        blob = store.blobs.put(b"blob of " + content)
        layer = store.layers.register(
            parent.chain_id if parent else None,
            sha256(content),
            blob,
            "application/vnd.oci.image.layer.v1.tar+gzip",
            len(content) + 8,
            len(content),
        )
        store.layers.holds.release(layer.chain_id)  # registering holds; the pull is over
        layers.append(layer)
        parent = layer
    return layers


def config(layers: list[Layer], *, name: str = "", architecture: str = "amd64") -> bytes:
    """An image config over `layers` (bottom first); `name` makes it a config of its own."""
    return json.dumps(
        {
            "architecture": architecture,
            "os": "linux",
            "created": "2023-11-14T22:13:20Z",
            "config": {"Labels": {"name": name}},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        }
    ).encode()


def image(store: Store, layers: list[Layer], *tags: str, name: str = "") -> Digest:
    """An image over `layers`, with a manifest and a reference per tag."""
    image_id = store.images.put(config(layers, name=name), media_type=OCI_CONFIG)
    manifest = json.dumps({"config": image_id, "layers": [x.blob_digest for x in layers]})
    store.manifests.add(sha256(manifest.encode()), image_id, OCI_MANIFEST, manifest.encode())
    for tag in tags:
        store.references.add(parse_reference(tag), image_id)
    return image_id


def removed(store: Store, image_id: Digest) -> tuple[list[Digest], set[Digest]]:
    with store.db.transaction():
        return remove_image(store, image_id)


def temp_files(store: Store) -> list[Path]:
    return [p for p in store.blobs.blobs_dir.rglob("*") if p.name.startswith(TEMP_PREFIX)]


# -- RefCounter -------------------------------------------------------------------------


def test_a_key_is_counted_until_every_acquire_is_released() -> None:
    counter: RefCounter[str] = RefCounter()

    counter.acquire("a")
    counter.acquire("a")
    counter.release("a")
    still = "a" in counter
    counter.release("a")

    assert still
    assert "a" not in counter
    assert counter.keys() == []


def test_keys_are_the_ones_in_use_now() -> None:
    counter: RefCounter[str] = RefCounter()
    for key in ("a", "b", "c"):
        counter.acquire(key)
    counter.release("b")

    assert sorted(counter.keys()) == ["a", "c"]
    assert "b" not in counter


def test_acquires_and_releases_from_many_threads_balance_out() -> None:
    counter: RefCounter[int] = RefCounter()
    start = threading.Barrier(8)

    def use() -> None:
        start.wait()
        for round_ in range(2000):
            counter.acquire(round_ % 5)
            counter.release(round_ % 5)

    threads = [threading.Thread(target=use) for _ in range(8)]
    counter.acquire(7)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert counter.keys() == [7]


# -- garbage collection -----------------------------------------------------------------


def test_removing_an_image_deletes_its_references_manifests_and_row(store: Store) -> None:
    layers = stack(store, b"only")
    image_id = image(store, layers, "example.com/app:v1", "example.com/app:latest")
    digest_ref = parse_reference(f"example.com/app@{sha256(b'manifest')}")
    store.references.add(digest_ref, image_id)

    removed(store, image_id)

    assert store.references.for_image(image_id) == []
    assert store.references.get(parse_reference("example.com/app:v1")) is None
    assert store.manifests.for_image(image_id) == []
    assert store.images.record(image_id) is None
    assert store.images.ids() == []


def test_removing_an_image_deletes_the_layers_only_it_used_children_first(
    store: Store,
) -> None:
    bottom, middle, top = stack(store, b"bottom", b"middle", b"top")
    image_id = image(store, [bottom, middle, top], "example.com/app:v1")
    [manifest] = store.manifests.digests_of(image_id)

    deleted, unused = removed(store, image_id)

    assert deleted == [top.chain_id, middle.chain_id, bottom.chain_id]
    assert store.layers.all() == []
    assert unused == {image_id, manifest, bottom.blob_digest, middle.blob_digest, top.blob_digest}


def test_removing_an_image_keeps_the_layers_and_blobs_another_image_uses(
    store: Store,
) -> None:
    base, own = stack(store, b"base", b"own")
    [other] = stack(store, b"other", on=base)
    first = image(store, [base, own], "example.com/first:v1")
    second = image(store, [base, other], "example.com/second:v1")
    [manifest] = store.manifests.digests_of(first)

    deleted, unused = removed(store, first)

    assert deleted == [own.chain_id]
    assert {layer.chain_id for layer in store.layers.all()} == {base.chain_id, other.chain_id}
    assert unused == {first, manifest, own.blob_digest}
    assert store.images.ids() == [second]
    assert store.references.for_image(second) == [parse_reference("example.com/second:v1")]


def test_a_blob_another_layer_stands_on_is_not_returned_for_deletion(store: Store) -> None:
    # The same layer content on two different parents: two layers, one blob.
    [first_base] = stack(store, b"first base")
    [second_base] = stack(store, b"second base")
    [on_first] = stack(store, b"shared", on=first_base)
    [on_second] = stack(store, b"shared", on=second_base)
    assert on_first.blob_digest == on_second.blob_digest
    first = image(store, [first_base, on_first], "example.com/first:v1")
    image(store, [second_base, on_second], "example.com/second:v1")

    deleted, unused = removed(store, first)

    assert set(deleted) == {on_first.chain_id, first_base.chain_id}
    assert on_first.blob_digest not in unused
    assert first_base.blob_digest in unused


def test_a_held_layer_keeps_itself_and_the_layers_below_it(store: Store) -> None:
    bottom, middle, top = stack(store, b"bottom", b"middle", b"top")
    image_id = image(store, [bottom, middle, top], "example.com/app:v1")
    store.layers.holds.acquire(middle.chain_id)  # a push is reading it

    deleted, unused = removed(store, image_id)

    assert deleted == [top.chain_id]
    assert {layer.chain_id for layer in store.layers.all()} == {bottom.chain_id, middle.chain_id}
    assert top.blob_digest in unused
    assert not {bottom.blob_digest, middle.blob_digest} & unused


def test_an_image_still_tagged_elsewhere_is_removed_whole_all_the_same(store: Store) -> None:
    # remove_image removes what it is given: untagging first is the caller's business.
    [layer] = stack(store, b"layer")
    image_id = image(store, [layer], "example.com/a:v1", "example.com/b:v1")

    removed(store, image_id)

    assert store.references.get(parse_reference("example.com/b:v1")) is None


def test_deleting_blobs_skips_a_pinned_one(store: Store) -> None:
    kept, gone = store.blobs.put(b"pinned"), store.blobs.put(b"not pinned")
    store.blobs.pins.acquire(kept)  # a pull is about to register a layer on it

    delete_blobs(store, {kept, gone})

    assert store.blobs.has(kept)
    assert not store.blobs.has(gone)


def test_deleting_blobs_removes_a_blob_once_its_pin_is_released(store: Store) -> None:
    digest = store.blobs.put(b"briefly pinned")
    with store.blobs.pinned(digest):
        delete_blobs(store, {digest})
        assert store.blobs.has(digest)

    delete_blobs(store, {digest})

    assert not store.blobs.has(digest)


def test_a_removal_that_fails_in_its_transaction_changes_nothing(store: Store) -> None:
    layers = stack(store, b"layer")
    image_id = image(store, layers, "example.com/app:v1")

    def remove_then_fail() -> None:
        with store.db.transaction():
            remove_image(store, image_id)
            raise RuntimeError("between the rows and the files")

    with pytest.raises(RuntimeError, match="between the rows and the files"):
        remove_then_fail()

    assert store.images.ids() == [image_id]
    assert store.layers.all() == layers
    assert store.references.get(parse_reference("example.com/app:v1")) == image_id


# -- ManifestStore ----------------------------------------------------------------------


def test_manifests_are_kept_per_image_with_their_bytes(store: Store) -> None:
    [layer] = stack(store, b"layer")
    first = store.images.put(config([layer], name="first"))
    second = store.images.put(config([layer], name="second"))
    raws = [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']

    store.manifests.add(sha256(raws[0]), first, OCI_MANIFEST, raws[0])
    store.manifests.add(sha256(raws[1]), first, "application/vnd.oci.image.index.v1+json", raws[1])
    store.manifests.add(sha256(raws[2]), second, OCI_MANIFEST, raws[2])

    kept = sorted(store.manifests.for_image(first), key=lambda m: m.raw)
    assert [(m.digest, m.raw) for m in kept] == [(sha256(r), r) for r in raws[:2]]
    assert kept[1].media_type == "application/vnd.oci.image.index.v1+json"
    assert sorted(store.manifests.digests_of(first)) == sorted(sha256(r) for r in raws[:2])
    assert store.manifests.digests() == {sha256(r) for r in raws}
    assert store.blobs.get(sha256(raws[2])) == raws[2]


def test_a_manifest_added_twice_is_kept_once(store: Store) -> None:
    image_id = store.images.put(config([]))
    raw = b'{"once": true}'

    store.manifests.add(sha256(raw), image_id, OCI_MANIFEST, raw)
    store.manifests.add(sha256(raw), image_id, OCI_MANIFEST, raw)

    assert store.manifests.digests_of(image_id) == [sha256(raw)]


def test_a_manifest_whose_bytes_do_not_match_its_digest_is_refused(store: Store) -> None:
    image_id = store.images.put(config([]))

    with pytest.raises(DigestMismatchError):
        store.manifests.add(sha256(b"what was asked for"), image_id, OCI_MANIFEST, b"other")

    assert store.manifests.for_image(image_id) == []


def test_forgetting_an_images_manifests_keeps_their_blobs_and_the_others(store: Store) -> None:
    first = store.images.put(config([], name="first"))
    second = store.images.put(config([], name="second"))
    store.manifests.add(sha256(b"1"), first, OCI_MANIFEST, b"1")
    store.manifests.add(sha256(b"2"), second, OCI_MANIFEST, b"2")

    store.manifests.delete_image(first)

    assert store.manifests.for_image(first) == []
    assert store.manifests.digests() == {sha256(b"2")}
    assert store.blobs.has(sha256(b"1"))  # garbage collection's to delete


# -- ReferenceStore ---------------------------------------------------------------------


def test_adding_a_reference_returns_the_image_it_named_before(store: Store) -> None:
    old = store.images.put(config([], name="old"))
    new = store.images.put(config([], name="new"))
    tag = parse_reference("example.com/app:v1")

    first = store.references.add(tag, old)
    moved = store.references.add(tag, new)
    again = store.references.add(tag, new)

    assert (first, moved, again) == (None, old, new)
    assert store.references.get(tag) == new


def test_the_tags_of_a_repository_are_its_tags_only(store: Store) -> None:
    one = store.images.put(config([], name="one"))
    two = store.images.put(config([], name="two"))
    for name, image_id in [
        ("example.com/app:v2", two),
        ("example.com/app:v1", one),
        (f"example.com/app@{sha256(b'm')}", one),  # a digest, not a tag
        ("example.com/other:v1", one),
        ("example.com/app/sub:v1", one),
    ]:
        store.references.add(parse_reference(name), image_id)

    tags = store.references.tags_of(parse_reference("example.com/app"))

    assert [(str(ref), image_id) for ref, image_id in tags] == [
        ("example.com/app:v1", one),
        ("example.com/app:v2", two),
    ]


def test_the_references_of_an_image_are_every_name_it_has_in_order(store: Store) -> None:
    image_id = store.images.put(config([]))
    other = store.images.put(config([], name="other"))
    digest = f"example.com/app@{sha256(b'm')}"
    for name in ("example.com/b:v1", digest, "example.com/a:v1"):
        store.references.add(parse_reference(name), image_id)
    store.references.add(parse_reference("example.com/c:v1"), other)

    names = [str(ref) for ref in store.references.for_image(image_id)]

    assert names == ["example.com/a:v1", digest, "example.com/b:v1"]


def test_deleting_a_reference_says_whether_there_was_one(store: Store) -> None:
    image_id = store.images.put(config([]))
    tag = parse_reference("example.com/app:v1")
    store.references.add(tag, image_id)

    assert store.references.delete(tag) is True
    assert store.references.delete(tag) is False
    assert store.references.get(tag) is None


def test_deleting_an_images_references_leaves_the_others(store: Store) -> None:
    gone = store.images.put(config([], name="gone"))
    stays = store.images.put(config([], name="stays"))
    store.references.add(parse_reference("example.com/app:v1"), gone)
    store.references.add(parse_reference("example.com/app:v2"), gone)
    store.references.add(parse_reference("example.com/app:v3"), stays)

    store.references.delete_image(gone)

    assert store.references.for_image(gone) == []
    assert store.references.for_image(stays) == [parse_reference("example.com/app:v3")]


# -- ImageConfigStore -------------------------------------------------------------------


def test_an_images_id_is_its_configs_digest_and_its_record_says_what_it_is(
    store: Store,
) -> None:
    layers = stack(store, b"bottom", b"top")
    raw = config(layers, architecture="arm64")

    image_id = store.images.put(raw, media_type=OCI_CONFIG, size=1234)

    assert image_id == sha256(raw)
    assert store.images.get(image_id) == raw
    record = store.images.record(image_id)
    assert record is not None
    assert record.id == image_id
    assert record.top_layer == layers[-1].chain_id
    assert (record.os, record.architecture, record.variant) == ("linux", "arm64", None)
    assert (record.config_media_type, record.size) == (OCI_CONFIG, 1234)


def test_putting_a_config_again_keeps_the_first_record(store: Store) -> None:
    raw = config([])
    image_id = store.images.put(raw, size=1)
    first = store.images.record(image_id)

    assert store.images.put(raw, size=2) == image_id

    assert store.images.record(image_id) == first
    assert store.images.ids() == [image_id]


def test_only_images_with_layers_have_a_top_layer(store: Store) -> None:
    layers = stack(store, b"layer")
    layered = store.images.put(config(layers))
    empty = store.images.put(config([]))

    assert sorted(store.images.ids()) == sorted([layered, empty])
    assert store.images.top_layers() == [layers[0].chain_id]
    record = store.images.record(empty)
    assert record is not None
    assert record.top_layer is None


def test_deleting_an_image_row_leaves_its_config_blob(store: Store) -> None:
    image_id = store.images.put(config([]))

    store.images.delete(image_id)

    assert store.images.record(image_id) is None
    assert store.images.ids() == []
    assert store.blobs.has(image_id)  # garbage collection's to delete


def test_an_unknown_image_has_no_record(store: Store) -> None:
    assert store.images.record(sha256(b"nothing")) is None


# -- resolving names --------------------------------------------------------------------


def test_an_image_is_found_by_its_full_id_with_or_without_the_algorithm(store: Store) -> None:
    image_id = store.images.put(config([]))

    assert store.resolve(image_id) == image_id
    assert store.resolve(image_id.removeprefix("sha256:")) == image_id
    assert store.resolve_id(image_id) == image_id


def test_an_image_is_found_by_a_unique_prefix_of_its_id(store: Store) -> None:
    image_id = store.images.put(config([]))
    hex_ = image_id.removeprefix("sha256:")

    assert store.resolve(hex_[:12]) == image_id
    assert store.resolve(hex_[:1]) == image_id
    assert store.resolve_id(f"sha256:{hex_[:12]}") == image_id  # as dockerd: sha256: optional


def test_an_id_prefix_two_images_share_is_ambiguous(store: Store) -> None:
    ids: dict[str, Digest] = {}
    number = 0
    while True:  # at most 17 configs before two IDs share their first hex digit
        image_id = store.images.put(config([], name=str(number)))
        first = image_id.removeprefix("sha256:")[0]
        if first in ids:
            break
        ids[first] = image_id
        number += 1

    with pytest.raises(ImageNotFoundError, match=f"image ID prefix '{first}' is ambiguous"):
        store.resolve(first)


def test_an_image_is_found_by_a_reference(store: Store) -> None:
    image_id = store.images.put(config([]))
    store.references.add(parse_reference("example.com/app:v1"), image_id)
    store.references.add(parse_reference("alpine"), image_id)

    assert store.resolve("example.com/app:v1") == image_id
    assert store.resolve("alpine") == image_id  # docker.io/library/alpine:latest
    assert store.resolve("docker.io/library/alpine:latest") == image_id


def test_an_id_wins_over_a_name_that_looks_like_one(store: Store) -> None:
    by_id = store.images.put(config([], name="by id"))
    by_name = store.images.put(config([], name="by name"))
    prefix = by_id.removeprefix("sha256:")[:12]
    store.references.add(parse_reference(prefix), by_name)  # docker.io/library/<hex>:latest

    assert store.resolve(prefix) == by_id
    assert store.resolve(f"{prefix}:latest") == by_name


@pytest.mark.parametrize(
    "name", ["example.com/app:v2", "nothing", f"sha256:{'0' * 64}", "Not A Reference!"]
)
def test_a_name_nothing_matches_is_no_such_image(store: Store, name: str) -> None:
    image_id = store.images.put(config([]))
    store.references.add(parse_reference("example.com/app:v1"), image_id)

    with pytest.raises(ImageNotFoundError, match="No such image"):
        store.resolve(name)


# -- BlobStore --------------------------------------------------------------------------


def test_a_blob_is_stored_under_its_digest(store: Store) -> None:
    digest = store.blobs.put(b"content")

    assert digest == sha256(b"content")
    assert store.blobs.has(digest)
    assert store.blobs.get(digest) == b"content"
    assert store.blobs.size(digest) == len(b"content")
    assert store.blobs.path(digest).read_bytes() == b"content"
    assert temp_files(store) == []


def test_a_blob_put_again_is_the_same_blob(store: Store) -> None:
    first = store.blobs.put(b"twice")
    written = store.blobs.path(first).stat().st_mtime_ns

    assert store.blobs.put(b"twice", sha256(b"twice")) == first
    assert store.blobs.path(first).stat().st_mtime_ns == written


def test_a_blob_that_is_not_what_was_expected_is_refused_and_not_written(store: Store) -> None:
    with pytest.raises(DigestMismatchError, match=sha256(b"expected")):
        store.blobs.put(b"actual", sha256(b"expected"))

    assert not store.blobs.has(sha256(b"actual"))
    assert not store.blobs.has(sha256(b"expected"))
    assert temp_files(store) == []


def test_a_blob_write_that_fails_leaves_neither_the_blob_nor_a_temp_file(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing_fsync)

    with pytest.raises(StoreError, match="I/O error"):
        store.blobs.put(b"never whole")

    monkeypatch.undo()
    assert not store.blobs.has(sha256(b"never whole"))
    assert temp_files(store) == []


def _count_directory_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    synced: list[Path] = []
    real = blobs_module._fsync_dir

    def counted(directory: Path) -> None:
        synced.append(directory)
        real(directory)

    monkeypatch.setattr(blobs_module, "_fsync_dir", counted)
    return synced


def _held_in_a_flush(
    monkeypatch: pytest.MonkeyPatch, work: Callable[[], object]
) -> tuple[threading.Thread, threading.Event]:
    """`work` started in a thread, stopped inside a directory's fsync until the returned
    event is set (every fsync from now on waits for it)."""
    flushing, release = threading.Event(), threading.Event()
    real = blobs_module._fsync_dir

    def slow(directory: Path) -> None:
        flushing.set()
        release.wait(10)
        real(directory)

    monkeypatch.setattr(blobs_module, "_fsync_dir", slow)
    thread = threading.Thread(target=work)
    thread.start()
    assert flushing.wait(10)
    return thread, release


def _waits_for_the_flush(
    held: threading.Thread, release: threading.Event, sync: Callable[[], object]
) -> bool:
    """Whether `sync`, run in a thread while `held` is stopped inside a flush, returns
    only once `release` lets that flush end."""
    done = threading.Event()
    syncing = threading.Thread(target=lambda: (sync(), done.set()))
    syncing.start()
    early = done.wait(0.2)
    release.set()
    held.join(10)
    syncing.join(10)
    return not early and done.is_set()


def test_sync_flushes_the_directory_blobs_went_into_once_and_then_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = _count_directory_fsyncs(monkeypatch)
    first = store.blobs.put(b"config", sync_dir=False)
    digest = sha256(b"layer")
    store.blobs.partial_path(digest).write_bytes(b"layer")
    store.blobs.commit_partial(digest, sync_dir=False)
    assert synced == []

    store.blobs.sync()
    assert synced == [store.blobs.path(first).parent]

    # Everything there already (an up-to-date pull): nothing written, nothing flushed.
    store.blobs.put(b"config", sync_dir=False)
    store.blobs.sync()
    assert synced == [store.blobs.path(first).parent]


def test_a_sync_flushes_a_blob_whose_own_directory_fsync_has_not_ended(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another pull may find the blob there before that fsync ends: its rows must wait.
    putting, release = _held_in_a_flush(monkeypatch, lambda: store.blobs.put(b"manifest"))

    assert _waits_for_the_flush(putting, release, store.blobs.sync)
    # Once that fsync has ended, the name is durable: nothing is left to flush.
    monkeypatch.undo()
    flushed = _count_directory_fsyncs(monkeypatch)
    store.blobs.sync()
    assert flushed == []


def test_a_sync_for_a_blob_whose_own_directory_fsync_has_not_ended_waits_for_a_flush(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = sha256(b"manifest")
    putting, release = _held_in_a_flush(monkeypatch, lambda: store.blobs.put(b"manifest"))

    assert _waits_for_the_flush(putting, release, lambda: store.blobs.sync([digest]))


def test_a_store_opened_flushes_what_an_earlier_process_left_in_each_blob_directory(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    (store.blobs.blobs_dir / "sha512").mkdir()
    synced = _count_directory_fsyncs(monkeypatch)

    BlobStore(store.root)

    blobs_dir = store.blobs.blobs_dir
    assert sorted(synced) == [blobs_dir / "sha256", blobs_dir / "sha512"]


def test_the_first_blob_of_a_digest_algorithm_makes_its_directory_durable(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = Digest("sha512:" + hashlib.sha512(b"layer").hexdigest())
    store.blobs.partial_path(digest).write_bytes(b"layer")
    synced = _count_directory_fsyncs(monkeypatch)

    store.blobs.commit_partial(digest)

    blobs_dir = store.blobs.blobs_dir
    assert synced == [blobs_dir, blobs_dir / "sha512"]


def test_a_put_that_finds_a_blob_another_has_not_flushed_flushes_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = store.blobs.put(b"config", sync_dir=False)  # a pull, before its sync
    synced = _count_directory_fsyncs(monkeypatch)

    store.blobs.put(b"config")  # a push or a load, whose rows come next
    assert synced == [store.blobs.path(digest).parent]

    store.blobs.put(b"config")  # durable now: nothing to flush
    assert synced == [store.blobs.path(digest).parent]


def test_a_sync_for_durable_blobs_leaves_another_pulls_renames_to_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = store.blobs.put(b"stored long ago", sync_dir=False)
    store.blobs.sync()
    theirs = store.blobs.put(b"another pull's layer", sync_dir=False)
    synced = _count_directory_fsyncs(monkeypatch)

    store.blobs.sync([mine])  # an up-to-date pull while another pull writes
    assert synced == []

    store.blobs.sync([mine, theirs])
    assert synced == [store.blobs.path(theirs).parent]


def test_a_sync_that_failed_is_done_again_by_the_next(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = store.blobs.put(b"config", sync_dir=False)

    def failing(directory: Path) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(blobs_module, "_fsync_dir", failing)
    with pytest.raises(StoreError, match="I/O error"):
        store.blobs.sync()

    monkeypatch.undo()
    synced = _count_directory_fsyncs(monkeypatch)
    store.blobs.sync()
    assert synced == [store.blobs.path(digest).parent]


def test_a_sync_that_wrote_nothing_still_flushes_what_another_moved_in(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One pull wrote the config and has not synced yet; another finds it there.
    digest = store.blobs.put(b"config", sync_dir=False)
    synced = _count_directory_fsyncs(monkeypatch)

    store.blobs.put(b"config", sync_dir=False)
    store.blobs.sync()

    assert synced == [store.blobs.path(digest).parent]


def test_a_sync_does_not_return_before_a_flush_under_way_has_ended(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pull that finds its config stored (by another pull, whose sync is flushing its
    # directory now) writes nothing: its rows must still wait for that flush.
    store.blobs.put(b"config", sync_dir=False)
    first, release = _held_in_a_flush(monkeypatch, store.blobs.sync)

    assert _waits_for_the_flush(first, release, store.blobs.sync)


def test_a_blob_is_moved_in_while_a_sync_flushes(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The disk's flush does not hold up other pulls' renames (only the next sync).
    store.blobs.put(b"first", sync_dir=False)
    syncing, release = _held_in_a_flush(monkeypatch, store.blobs.sync)
    second = sha256(b"second")
    moving = threading.Thread(target=store.blobs.put, args=(b"second",), kwargs={"sync_dir": False})
    try:
        moving.start()
        moving.join(5)  # while the flush is held (it waits 10 s for the release)
        assert not moving.is_alive()
        assert store.blobs.has(second)
    finally:
        release.set()
        syncing.join(10)
        moving.join(10)
    synced = _count_directory_fsyncs(monkeypatch)
    store.blobs.sync()  # the second blob's rename came after the flush began
    assert synced == [store.blobs.path(second).parent]


def test_a_missing_blob_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="is missing from the store"):
        store.blobs.get(sha256(b"never stored"))


def test_deleting_a_blob_removes_it_and_a_missing_one_is_no_error(store: Store) -> None:
    digest = store.blobs.put(b"doomed")

    store.blobs.delete(digest)
    store.blobs.delete(digest)

    assert not store.blobs.has(digest)


def test_a_committed_partial_download_becomes_the_blob(store: Store) -> None:
    digest = sha256(b"downloaded")
    partial = store.blobs.partial_path(digest)
    partial.write_bytes(b"downloaded")

    store.blobs.commit_partial(digest)

    assert store.blobs.get(digest) == b"downloaded"
    assert not partial.exists()


def test_a_discarded_partial_download_is_gone(store: Store) -> None:
    digest = sha256(b"abandoned")
    store.blobs.partial_path(digest).write_bytes(b"aban")

    store.blobs.discard_partial(digest)
    store.blobs.discard_partial(digest)  # already gone: no error

    assert not store.blobs.partial_path(digest).exists()
    assert not store.blobs.has(digest)


def test_only_an_empty_partial_download_is_discarded_when_empty(store: Store) -> None:
    empty, started = sha256(b"empty"), sha256(b"started")
    store.blobs.partial_path(empty).write_bytes(b"")
    store.blobs.partial_path(started).write_bytes(b"sta")

    for digest in (empty, started, sha256(b"never began")):
        store.blobs.discard_partial_if_empty(digest)

    assert not store.blobs.partial_path(empty).exists()
    assert store.blobs.partial_path(started).read_bytes() == b"sta"
