"""Indexes in the store, in this process: the rows kept for an index and its entries,
which child a reference to an index gives, references that name an index, what goes
when an index loses its last name, and what fsck says of index rows. Also the index
vocabulary below them: entry kinds and choosing platforms."""

from __future__ import annotations

import json

import pytest

from ferryd.errors import PlatformNotFoundError
from ferryd.oci.digest import Digest, sha256_digest
from ferryd.oci.manifest import (
    decode_index,
    entry_kind,
    pullable_entries,
    select_platforms,
)
from ferryd.oci.platform import parse_platform
from ferryd.oci.reference import parse_reference
from ferryd.store import Store
from ferryd.store.fsck import check
from ferryd.store.gc import forget_unnamed_indexes, in_use, release
from ferryd.store.indexes import default_child
from ferryd.store.references import Target

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def entry(digest: str, platform: dict[str, str] | None, **annotations: str) -> dict[str, object]:
    out: dict[str, object] = {"mediaType": OCI_MANIFEST, "digest": digest, "size": 100}
    if platform is not None:
        out["platform"] = platform
    if annotations:
        out["annotations"] = {k.replace("_", "."): v for k, v in annotations.items()}
    return out


def index_bytes(*entries: dict[str, object]) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(entries)}
    ).encode()


def stored_image(store: Store, architecture: str, name: str, *, shared: bytes = b"") -> Digest:
    """An image (one layer of its own, on `shared` when given) and its manifest; the
    manifest's digest."""
    layers = []
    parent = None
    for content in [*([shared] if shared else []), name.encode()]:
        blob = store.blobs.put(b"blob of " + content)
        layer = store.layers.register(
            parent, sha256_digest(content), blob, GZIP, len(content) + 8, len(content)
        )
        store.layers.holds.release(layer.chain_id)
        layers.append(layer)
        parent = layer.chain_id
    config = json.dumps(
        {
            "architecture": architecture,
            "os": "linux",
            "config": {"Labels": {"name": name}},
            "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]},
        }
    ).encode()
    image_id = store.images.put(config, media_type=OCI_CONFIG)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": image_id, "size": len(config)},
            "layers": [
                {"mediaType": GZIP, "digest": x.blob_digest, "size": x.compressed_size}
                for x in layers
            ],
        }
    ).encode()
    digest = sha256_digest(manifest)
    store.manifests.add(digest, image_id, OCI_MANIFEST, manifest)
    return digest


def keep_index(store: Store, raw: bytes) -> Digest:
    digest = store.blobs.put(raw)
    with store.db.transaction():
        store.indexes.add(digest, OCI_INDEX, raw, decode_index(raw))
    return digest


# -- the vocabulary ------------------------------------------------------------------------


def test_entries_are_images_attestations_nested_indexes_or_unknown() -> None:
    index = decode_index(
        index_bytes(
            entry("sha256:" + "1" * 64, {"os": "linux", "architecture": "amd64"}),
            entry(
                "sha256:" + "2" * 64,
                {"os": "unknown", "architecture": "unknown"},
                vnd_docker_reference_type="attestation-manifest",
                vnd_docker_reference_digest="sha256:" + "1" * 64,
            ),
            entry("sha256:" + "3" * 64, {"os": "unknown", "architecture": "unknown"}),
            {"mediaType": OCI_INDEX, "digest": "sha256:" + "4" * 64, "size": 5},
            {
                "mediaType": "application/vnd.cncf.helm.config",
                "digest": "sha256:" + "5" * 64,
                "size": 5,
            },
            entry("sha256:" + "6" * 64, None),
        )
    )

    kinds = [entry_kind(e) for e in index.manifests]

    assert kinds == ["image", "attestation", "unknown", "index", "unknown", "image"]
    assert [e.digest[-1] for e in pullable_entries(index)] == ["1", "2", "6"]


def test_choosing_platforms_takes_each_with_its_attestation_and_names_what_is_missing() -> None:
    index = decode_index(
        index_bytes(
            entry("sha256:" + "1" * 64, {"os": "linux", "architecture": "amd64"}),
            entry("sha256:" + "2" * 64, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
            entry(
                "sha256:" + "3" * 64,
                {"os": "unknown", "architecture": "unknown"},
                vnd_docker_reference_type="attestation-manifest",
                vnd_docker_reference_digest="sha256:" + "2" * 64,
            ),
        )
    )

    chosen = select_platforms(index, [parse_platform("linux/arm64")])

    assert [e.digest[-1] for e in chosen] == ["2", "3"]
    with pytest.raises(PlatformNotFoundError, match=r"linux/s390x.*available: linux/amd64"):
        select_platforms(index, [parse_platform("linux/amd64"), parse_platform("linux/s390x")])


# -- the rows ------------------------------------------------------------------------------


def test_an_index_is_kept_with_a_row_per_entry_and_its_bytes(store: Store) -> None:
    raw = index_bytes(
        entry("sha256:" + "1" * 64, {"os": "linux", "architecture": "amd64"}),
        entry(
            "sha256:" + "2" * 64,
            {"os": "windows", "architecture": "amd64", "os.version": "10.0.20348.2322"},
            org_example="kept",
        ),
    )
    digest = store.blobs.put(raw)

    with store.db.transaction():
        first = store.indexes.add(digest, OCI_INDEX, raw, decode_index(raw))
        second = store.indexes.add(digest, OCI_INDEX, raw, decode_index(raw))
    kept = store.indexes.get(digest)

    assert (first, second) == (True, False)
    assert kept is not None
    assert store.indexes.raw(digest) == raw
    assert (kept.media_type, kept.size) == (OCI_INDEX, len(raw))
    windows = kept.entries[1]
    assert (windows.position, windows.kind, windows.os, windows.architecture) == (
        1,
        "image",
        "windows",
        "amd64",
    )
    assert windows.descriptor() == json.loads(raw)["manifests"][1]
    assert store.indexes.containing(Digest("sha256:" + "2" * 64)) == [digest]
    assert store.indexes.with_prefix(digest[:12]) == [digest]


def test_a_reference_to_an_index_gives_the_default_platforms_child_else_the_first_stored(
    store: Store,
) -> None:
    arm = stored_image(store, "arm64", "arm")
    amd = stored_image(store, "amd64", "amd")
    raw = index_bytes(
        entry("sha256:" + "9" * 64, {"os": "linux", "architecture": "s390x"}),
        entry(arm, {"os": "linux", "architecture": "arm64"}),
        entry(amd, {"os": "linux", "architecture": "amd64"}),
    )
    digest = keep_index(store, raw)
    entries = store.indexes.entries(digest)
    stored = store.indexes.stored_children(digest)

    assert default_child(entries, stored, parse_platform("linux/amd64")) == stored[amd]
    assert default_child(entries, stored, parse_platform("linux/ppc64le")) == stored[arm]
    assert default_child(entries, {}, parse_platform("linux/amd64")) is None


def test_a_reference_to_an_index_gives_the_closest_older_platform_stored(store: Store) -> None:
    """As a pull chooses (containerd's `platforms.Only`): arm/v7 takes v6 before v5,
    whatever the order of the entries."""
    v5 = stored_image(store, "arm", "v5")
    v6 = stored_image(store, "arm", "v6")
    raw = index_bytes(
        entry(v5, {"os": "linux", "architecture": "arm", "variant": "v5"}),
        entry(v6, {"os": "linux", "architecture": "arm", "variant": "v6"}),
    )
    digest = keep_index(store, raw)
    entries = store.indexes.entries(digest)
    stored = store.indexes.stored_children(digest)

    assert default_child(entries, stored, parse_platform("linux/arm/v7")) == stored[v6]


def test_the_stored_children_of_an_index_are_its_entries_with_a_manifest_row_in_its_order(
    store: Store,
) -> None:
    arm = stored_image(store, "arm64", "arm")
    amd = stored_image(store, "amd64", "amd")
    raw = index_bytes(
        entry(amd, {"os": "linux", "architecture": "amd64"}),
        entry("sha256:" + "9" * 64, {"os": "linux", "architecture": "s390x"}),
        entry(arm, {"os": "linux", "architecture": "arm64"}),
        entry(amd, {"os": "linux", "architecture": "amd64", "variant": "v2"}),
    )
    digest = keep_index(store, raw)

    children = store.indexes.stored_children(digest)

    assert list(children.items()) == [
        (amd, store.manifests.image_of(amd)),
        (arm, store.manifests.image_of(arm)),
    ]
    assert store.indexes.stored_children(Digest("sha256:" + "8" * 64)) == {}


def test_references_name_an_index_and_follow_its_default_child(store: Store) -> None:
    arm = stored_image(store, "arm64", "arm")
    amd = stored_image(store, "amd64", "amd")
    digest = keep_index(
        store,
        index_bytes(
            entry(arm, {"os": "linux", "architecture": "arm64"}),
            entry(amd, {"os": "linux", "architecture": "amd64"}),
        ),
    )
    tag = parse_reference("reg.example/app:1")
    arm_image = store.manifests.image_of(arm)
    amd_image = store.manifests.image_of(amd)
    assert arm_image is not None
    assert amd_image is not None

    with store.db.transaction():
        before = store.references.point(tag, Target(arm_image, digest))
        moved = store.references.repoint_index(digest, amd_image)

    assert before is None
    assert moved == [tag]
    assert store.references.target(tag) == Target(amd_image, digest)
    assert store.references.get(tag) == amd_image
    assert store.references.naming_index(digest) == [tag]
    assert store.resolve_target(digest) == Target(amd_image, digest)
    assert store.resolve_target(digest[7:19]) == Target(amd_image, digest)
    assert store.resolve("reg.example/app:1") == amd_image


def test_the_last_name_of_an_index_takes_it_and_the_children_nothing_else_uses(
    store: Store,
) -> None:
    arm = stored_image(store, "arm64", "arm", shared=b"base")
    amd = stored_image(store, "amd64", "amd", shared=b"base")
    digest = keep_index(
        store,
        index_bytes(
            entry(arm, {"os": "linux", "architecture": "arm64"}),
            entry(amd, {"os": "linux", "architecture": "amd64"}),
        ),
    )
    arm_image = store.manifests.image_of(arm)
    amd_image = store.manifests.image_of(amd)
    assert arm_image is not None
    assert amd_image is not None
    first, second = parse_reference("reg.example/app:1"), parse_reference("reg.example/app:2")
    plain = parse_reference("reg.example/plain:1")
    with store.db.transaction():
        store.references.point(first, Target(amd_image, digest))
        store.references.point(second, Target(amd_image, digest))
        store.references.add(plain, arm_image)

    with store.db.transaction():
        store.references.delete(first)
        kept = release(store, [amd_image])
    in_use_then = in_use(store, arm_image), in_use(store, amd_image)
    with store.db.transaction():
        store.references.delete(second)
        released = release(store, [amd_image])

    assert (kept.indexes, kept.images) == ([], [])
    assert in_use_then == (True, True)
    assert released.indexes == [digest]
    assert released.images == [amd_image]  # the arm image has a name of its own
    assert store.indexes.digests() == set()
    assert digest in released.blobs
    assert store.images.record(arm_image) is not None
    assert store.resolve("reg.example/plain:1") == arm_image


def test_a_tag_moved_off_an_index_forgets_it_and_leaves_its_children(store: Store) -> None:
    amd = stored_image(store, "amd64", "amd")
    digest = keep_index(store, index_bytes(entry(amd, {"os": "linux", "architecture": "amd64"})))
    image_id = store.manifests.image_of(amd)
    assert image_id is not None
    tag = parse_reference("reg.example/app:1")
    with store.db.transaction():
        store.references.point(tag, Target(image_id, digest))

    with store.db.transaction():
        store.references.add(tag, image_id)  # now a plain reference
        forgotten = forget_unnamed_indexes(store)

    assert forgotten == {digest: {image_id}}
    assert store.indexes.get(digest) is None
    assert store.images.record(image_id) is not None


def test_fsck_finds_orphaned_index_rows_and_repair_removes_them_with_the_blob(
    store: Store,
) -> None:
    amd = stored_image(store, "amd64", "amd")
    digest = keep_index(store, index_bytes(entry(amd, {"os": "linux", "architecture": "amd64"})))

    found = check(store)
    repaired = check(store, repair=True)
    after = check(store)

    assert [(p.kind, p.subject) for p in found.problems] == [("orphan-index", digest)]
    assert found.checked["Indexes"] == 1
    removed = {(r.kind, r.subject) for r in repaired.removed}
    assert ("index", digest) in removed
    assert ("blob", digest) in removed
    # Its child is an image like any other now (a dangling one, not a problem).
    assert after.problems == []


def test_fsck_finds_a_reference_whose_image_is_not_one_of_its_index(store: Store) -> None:
    amd = stored_image(store, "amd64", "amd")
    other = stored_image(store, "arm64", "other")
    digest = keep_index(store, index_bytes(entry(amd, {"os": "linux", "architecture": "amd64"})))
    other_image = store.manifests.image_of(other)
    assert other_image is not None
    with store.db.transaction():
        store.references.point(parse_reference("reg.example/app:1"), Target(other_image, digest))

    found = check(store)
    check(store, repair=True)

    assert [p.kind for p in found.problems] == ["dangling-reference"]
    assert "none of the platforms its index" in found.problems[0].message
    # Repaired: the reference keeps naming its image, without the index (then unnamed).
    assert store.references.target(parse_reference("reg.example/app:1")) == Target(other_image)
    assert store.indexes.digests() == set()
    assert check(store).problems == []
