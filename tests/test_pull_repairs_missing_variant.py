"""A pull that finds an image stored with the manifest it pulls checks that the layers
are stored with every blob that manifest names (one query). When one is missing (a
store migrated from schema 2 kept one blob a layer; fsck --repair removes a blob it
finds broken), the pull fetches that blob, and only it, instead of saying "up to date":
a push of the index sends it back byte for byte. An image stored whole is still one
manifest request.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from support.daemon import Daemon, errors
from support.images import BuiltImage, BuiltIndex, seed
from support.registry import Registry
from test_layer_blob_variants import (
    ALL,
    AMD64,
    ARM64,
    assert_same_index,
    layer_blobs,
    push,
    stored_blobs,
    two_levels,
)

pytestmark = pytest.mark.registry


def without_a_variant(daemon: Daemon, index: BuiltIndex) -> BuiltImage:
    """With the daemon stopped: forget the shared layer's second blob (the one that is
    not the layer's first) and delete its file; the image whose manifest names it."""
    daemon.stop()
    with sqlite3.connect(daemon.root / "ferryd.db") as db:
        rows = db.execute(
            "SELECT blob_digest FROM layer_blobs "
            "WHERE blob_digest NOT IN (SELECT blob_digest FROM layers)"
        ).fetchall()
        assert len(rows) == 1, rows
        (variant,) = rows[0]
        db.execute("DELETE FROM layer_blobs WHERE blob_digest = ?", (variant,))
    (daemon.root / "blobs" / "sha256" / variant[7:]).unlink()
    daemon.start()
    (image,) = [image for image in index.images if image.layers[0].digest == variant]
    return image


def blob_gets(registry: Registry, index: BuiltIndex) -> dict[str, int]:
    """GETs of each layer blob and config of the index."""
    digests = layer_blobs(index) | {image.config_digest for image in index.images}
    return {digest: registry.blob_gets(digest) for digest in sorted(digests)}


def fetched_since(registry: Registry, index: BuiltIndex, before: dict[str, int]) -> set[str]:
    after = blob_gets(registry, index)
    return {digest for digest, count in after.items() if count != before[digest]}


def test_pull_of_all_platforms_fetches_the_blob_a_stored_manifest_names_and_lacks(
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
) -> None:
    index = two_levels(layout, 47_300)
    seed(registry, layout, "latest", "variants/repair-all:v1")
    source = f"{registry.host}/variants/repair-all:v1"
    daemon = start_daemon(default_platform=AMD64)
    assert errors(daemon.pull(source, **ALL)) == []
    image = without_a_variant(daemon, index)
    missing = image.layers[0].digest
    before = blob_gets(registry, index)

    pulled = daemon.pull(source, **ALL)

    assert errors(pulled) == []
    assert fetched_since(registry, index, before) == {missing}
    assert registry.blob_gets(missing) == before[missing] + 1
    assert any("Downloaded newer image" in str(m.get("status")) for m in pulled)
    assert layer_blobs(index) <= stored_blobs(daemon)
    pushed = push(daemon, source, f"{other_registry.host}/variants/repair-all:v1")
    assert errors(pushed) == []
    assert_same_index(other_registry, "variants/repair-all", index)


def test_pull_by_the_childs_digest_fetches_the_blob_its_stored_manifest_lacks(
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
) -> None:
    index = two_levels(layout, 47_310)
    seed(registry, layout, "latest", "variants/repair-digest:v1")
    source = f"{registry.host}/variants/repair-digest:v1"
    daemon = start_daemon(default_platform=AMD64)
    assert errors(daemon.pull(source, **ALL)) == []
    image = without_a_variant(daemon, index)
    missing = image.layers[0].digest
    before = blob_gets(registry, index)

    pulled = daemon.pull(f"{registry.host}/variants/repair-digest@{image.manifest_digest}")

    assert errors(pulled) == []
    assert fetched_since(registry, index, before) == {missing}
    statuses = [m.get("status") for m in pulled if m.get("id") == missing[7:19]]
    assert "Pull complete" in statuses
    assert layer_blobs(index) <= stored_blobs(daemon)
    pushed = push(daemon, source, f"{other_registry.host}/variants/repair-digest:v1")
    assert errors(pushed) == []
    assert_same_index(other_registry, "variants/repair-digest", index)


def test_once_repaired_an_up_to_date_pull_is_one_manifest_request(
    registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
) -> None:
    index = two_levels(layout, 47_320)
    seed(registry, layout, "latest", "variants/repair-once:v1")
    source = f"{registry.host}/variants/repair-once:v1"
    repository = f"{registry.host}/variants/repair-once"
    daemon = start_daemon(default_platform=AMD64)
    assert errors(daemon.pull(source, **ALL)) == []
    image = without_a_variant(daemon, index)
    platform = AMD64 if image.platform["architecture"] == "amd64" else ARM64
    before = blob_gets(registry, index)
    # The platform's pull of the index repairs it too.
    assert errors(daemon.pull(source, platform=platform)) == []
    assert fetched_since(registry, index, before) == {image.layers[0].digest}

    for child in index.images:
        reference = f"{repository}@{child.manifest_digest}"
        assert errors(daemon.pull(reference)) == []  # the connection's first request
        requests = len(registry.access_log())
        pulled = daemon.pull(reference)

        assert errors(pulled) == []
        assert any("Image is up to date" in str(m.get("status")) for m in pulled)
        log = registry.access_log()[requests:]
        assert [(entry.method, entry.path) for entry in log] == [
            ("GET", f"/v2/variants/repair-once/manifests/{child.manifest_digest}")
        ]
