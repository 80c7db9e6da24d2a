"""An rmi frees the blobs of a layer that stays which only the removed manifests named:
one layer kept with several compressed blobs (two platforms' gzip levels, gzip and zstd
entries of one image) loses the row and the file of a blob once no stored manifest names
it, and keeps its first blob and every blob a stored manifest still names. fsck finds
nothing wrong afterwards, and what stays pushes back byte for byte.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ferryd.oci.digest import Digest
from ferryd.store import Store
from ferryd.store.gc import remove_image
from support.daemon import Daemon, errors
from support.images import (
    BuiltIndex,
    LayerSpec,
    PlatformSpec,
    build_index,
    seed,
    skopeo_inspect_raw,
)
from support.registry import Registry
from test_layer_blob_variants import ALL, AMD64, ARM64, stored_blobs, two_compressions, two_levels

pytestmark = pytest.mark.registry

ARMV7, PPC64LE = "linux/arm/v7", "linux/ppc64le"


def rows(root: Path, statement: str, params: tuple[object, ...] = ()) -> list[Any]:
    with sqlite3.connect(root / "ferryd.db") as db:
        return db.execute(statement, params).fetchall()


def kept_for_layers(root: Path) -> set[str]:
    """Every blob a `layer_blobs` row keeps."""
    return {digest for (digest,) in rows(root, "SELECT blob_digest FROM layer_blobs")}


def first_blob(root: Path, blobs: set[str]) -> str:
    """Which of `blobs` (of one layer) is the layer's first."""
    firsts = {digest for (digest,) in rows(root, "SELECT blob_digest FROM layers")}
    [first] = blobs & firsts
    return first


def fsck_problems(daemon: Daemon) -> list[Any]:
    problems: list[Any] = json.loads(daemon.client().request("POST", "/fsck").read())["Problems"]
    return problems


def rmi(daemon: Daemon, name: str, *, force: bool = False) -> None:
    with daemon.http() as client:
        removed = client.delete(f"/images/{name}", params={"force": "1"} if force else {})
    assert removed.status_code == 200, removed.text


def push_platform(daemon: Daemon, source: str, target: str, platform: str) -> list[dict[str, Any]]:
    repository, _, tag = target.rpartition(":")
    client = daemon.client()
    client.request("POST", f"/images/{source}/tag", {"repo": repository, "tag": tag}).read()
    return list(
        client.stream("POST", f"/images/{repository}/push", {"tag": tag, "platform": platform})
    )


def four_sharing(layout: Path, base: int) -> BuiltIndex:
    """amd64 with its one layer gzipped at level 1; arm64, arm/v7 and ppc64le with the
    same layer gzipped at level 9 (one blob the three manifests name)."""

    def platform(architecture: str, level: int, variant: str | None = None) -> PlatformSpec:
        layer = LayerSpec(size=20_000, seed=base, compressible=True, level=level)
        return PlatformSpec([layer], architecture=architecture, variant=variant)

    index = build_index(
        layout,
        [
            platform("amd64", 1),
            platform("arm64", 9),
            platform("arm", 9, "v7"),
            platform("ppc64le", 9),
        ],
    )
    shared = {image.layers[0].digest for image in index.images[1:]}
    assert len(shared) == 1
    assert index.images[0].layers[0].digest not in shared
    return index


def test_forced_rmi_of_a_platform_frees_the_blob_only_its_manifest_named(
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
) -> None:
    index = two_levels(layout, 49_100)
    seed(registry, layout, "latest", "release/levels:v1")
    source = f"{registry.host}/release/levels:v1"
    daemon = start_daemon(default_platform=AMD64)
    assert errors(daemon.pull(source, **ALL)) == []
    amd, arm = index.image("amd64"), index.image("arm64")
    shared = {amd.layers[0].digest, arm.layers[0].digest}
    # Whichever platform's blob the shared layer was stored with first stays with it:
    # the other platform goes.
    first = first_blob(daemon.root, shared)
    kept, gone = (amd, arm) if first == amd.layers[0].digest else (arm, amd)
    platform = AMD64 if kept is amd else ARM64
    (only_gone,) = shared - {first}

    rmi(daemon, gone.config_digest, force=True)

    assert only_gone not in stored_blobs(daemon)
    assert only_gone not in kept_for_layers(daemon.root)
    assert {layer.digest for layer in kept.layers} <= stored_blobs(daemon)
    assert {layer.digest for layer in kept.layers} <= kept_for_layers(daemon.root)
    assert gone.layers[1].digest not in stored_blobs(daemon)
    assert fsck_problems(daemon) == []
    target = f"{other_registry.host}/release/levels-left:v1"
    assert errors(push_platform(daemon, source, target, platform)) == []
    assert skopeo_inspect_raw(other_registry, "release/levels-left:v1") == kept.manifest


def test_rmi_of_an_image_with_gzip_and_zstd_manifests_frees_both_blobs(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    two_compressions(layout, 49_200)
    seed(registry, layout, "latest", "release/zstd:v1")
    source = f"{registry.host}/release/zstd:v1"
    daemon = start_daemon(default_platform=AMD64)
    assert errors(daemon.pull(source, **ALL)) == []

    rmi(daemon, source)

    assert daemon.blob_files() == []


def test_rmi_of_the_index_keeps_the_blobs_of_an_image_a_digest_reference_names(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    # A stored image keeps every manifest it came with until it goes: the index's
    # removal leaves the image (named by its gzip manifest's digest) with both.
    index = two_compressions(layout, 49_300)
    gzipped, zstd = index.images
    seed(registry, layout, "latest", "release/zstd-named:v1")
    source = f"{registry.host}/release/zstd-named:v1"
    daemon = start_daemon(default_platform=AMD64)
    assert errors(daemon.pull(source, **ALL)) == []
    # Of another repository: untagging `source` takes its own digest references.
    seed(registry, layout, "latest", "release/zstd-other:v1")
    assert (
        errors(daemon.pull(f"{registry.host}/release/zstd-other@{gzipped.manifest_digest}")) == []
    )

    rmi(daemon, source)

    assert rows(daemon.root, "SELECT digest FROM indexes") == []
    assert {gzipped.layers[0].digest, zstd.layers[0].digest} <= stored_blobs(daemon)
    assert {gzipped.layers[0].digest, zstd.layers[0].digest} <= kept_for_layers(daemon.root)
    assert fsck_problems(daemon) == []


def test_a_blob_stays_while_a_stored_manifest_names_it_and_goes_with_the_last(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    index = four_sharing(layout, 49_400)
    seed(registry, layout, "latest", "release/four:v1")
    source = f"{registry.host}/release/four:v1"
    daemon = start_daemon(default_platform=AMD64)
    # amd64 first: its level-1 blob is the layer's first, the level-9 one kept beside it.
    for platform in (AMD64, ARM64, ARMV7, PPC64LE):
        assert errors(daemon.pull(source, platform=platform)) == []
    amd = index.image("amd64")
    level9 = index.image("arm64").layers[0].digest
    assert first_blob(daemon.root, {amd.layers[0].digest, level9}) == amd.layers[0].digest

    rmi(daemon, index.image("ppc64le").config_digest, force=True)
    after_third = (level9 in stored_blobs(daemon), level9 in kept_for_layers(daemon.root))
    rmi(daemon, index.image("arm64").config_digest, force=True)
    after_second = (level9 in stored_blobs(daemon), level9 in kept_for_layers(daemon.root))
    rmi(daemon, index.image("arm", "v7").config_digest, force=True)

    assert after_third == (True, True)  # arm64's and arm/v7's manifests name it
    assert after_second == (True, True)  # arm/v7's does
    assert level9 not in stored_blobs(daemon)
    assert level9 not in kept_for_layers(daemon.root)
    assert amd.layers[0].digest in stored_blobs(daemon)
    assert fsck_problems(daemon) == []


@pytest.mark.parametrize("held", [False, True])
def test_a_blob_of_a_layer_a_transfer_holds_waits_for_the_layer(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path, held: bool
) -> None:
    # A pull holding the layer may have found it stored with the blob, for a manifest
    # it has yet to commit: the row stays while it holds the layer.
    base = 49_510 if held else 49_500
    index = two_levels(layout, base)
    name = f"release/held-{base}:v1"
    seed(registry, layout, "latest", name)
    source = f"{registry.host}/{name}"
    daemon = start_daemon(default_platform=AMD64)
    assert errors(daemon.pull(source, platform=AMD64)) == []
    assert errors(daemon.pull(source, platform=ARM64)) == []
    daemon.stop()
    amd, arm = index.image("amd64"), index.image("arm64")
    shared = arm.layers[0].digest
    ((amd_top,),) = rows(
        daemon.root, "SELECT top_layer FROM images WHERE id = ?", (amd.config_digest,)
    )

    store = Store(daemon.root)
    try:
        if held:
            store.layers.holds.acquire(Digest(amd_top))  # its shared layer is under it
        with store.db.transaction():
            _, blobs = remove_image(store, Digest(arm.config_digest))
        kept = {blob.digest for blob in store.layers.all_blobs()}
    finally:
        store.close()

    assert (shared in kept, shared in blobs) == ((True, False) if held else (False, True))
    assert amd.layers[0].digest in kept
