"""fsck and the blobs kept for layers (`layer_blobs`): a row whose layer is gone or that
records another layer's blob, a layer's first blob without its row, a lost blob or
manifest of an index's default platform, and a lost blob a single image's manifest
names. Each is reported, one `--repair` leaves a clean store that keeps the index and
its names, and a pull then restores what went: a push is byte for byte the source."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from support.daemon import Daemon, errors
from support.images import seed
from support.registry import Registry
from test_fsck import blob_path, fsck, sql
from test_layer_blob_variants import (
    ALL,
    AMD64,
    ARM64,
    assert_same_index,
    push,
    two_compressions,
    two_levels,
)

pytestmark = pytest.mark.registry


def rows(root: Path, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with sqlite3.connect(root / "ferryd.db") as db:
        return db.execute(statement, params).fetchall()


def repaired(capsys: pytest.CaptureFixture[str], root: Path) -> list[str]:
    """Check, repair once, check again: the problems found (the store is then clean)."""
    status, found, _ = fsck(capsys, "fsck", "--root", str(root))
    assert status == 1
    fsck(capsys, "fsck", "--root", str(root), "--repair")
    status, again, _ = fsck(capsys, "fsck", "--root", str(root))
    assert status == 0, again
    return found


@pytest.mark.parametrize("kind", ["orphan missing", "orphan present", "another layer's"])
def test_layer_blob_rows_of_no_layer_or_of_another_layers_blob_are_repaired(
    capsys: pytest.CaptureFixture[str],
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    kind: str,
) -> None:
    base = {"orphan missing": 48_100, "orphan present": 48_110, "another layer's": 48_120}[kind]
    index = two_levels(layout, base)
    name = f"fsckrows/r{base}"
    seed(registry, layout, "latest", f"{name}:v1")
    source = f"{registry.host}/{name}:v1"
    daemon = start_daemon(default_platform=AMD64)
    assert errors(daemon.pull(source, platform=AMD64)) == []
    assert errors(daemon.pull(source, platform=ARM64)) == []
    daemon.stop()
    amd, arm = index.image("amd64"), index.image("arm64")
    gzip = "application/vnd.oci.image.layer.v1.tar+gzip"
    if kind == "another layer's":
        ((chain,),) = rows(daemon.root, "SELECT chain_id FROM layers WHERE parent IS NULL")
        blob = arm.layers[1]
        sql(
            daemon.root,
            "INSERT INTO layer_blobs VALUES (?, ?, ?, ?, 0)",
            (chain, blob.digest, gzip, blob.size),
        )
        expected = "wrong-layer-blob"
    else:
        digest = "sha256:" + "d" * 64 if kind == "orphan missing" else arm.layers[0].digest
        sql(
            daemon.root,
            "INSERT INTO layer_blobs VALUES (?, ?, ?, 12, 0)",
            ("sha256:" + "e" * 64, digest, gzip),
        )
        expected = "orphan-layer-blob"

    found = repaired(capsys, daemon.root)

    assert any(line.startswith(f"{expected}:") for line in found), found
    for image in (amd, arm):
        for layer in image.layers:
            assert blob_path(daemon.root, layer.digest).exists()
    assert (
        rows(daemon.root, "SELECT 1 FROM layer_blobs WHERE chain_id = ?", ("sha256:" + "e" * 64,))
        == []
    )
    daemon.start()
    assert errors(daemon.pull(source, **ALL)) == []
    assert errors(push(daemon, source, f"{other_registry.host}/{name}:v1")) == []
    assert_same_index(other_registry, name, index)


@pytest.mark.parametrize("lost", ["layer blob", "manifest"])
def test_a_lost_blob_of_the_default_platform_keeps_the_index_and_its_names(
    capsys: pytest.CaptureFixture[str],
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    lost: str,
) -> None:
    base = 48_200 if lost == "layer blob" else 48_210
    index = two_levels(layout, base)
    name = f"fsckrows/d{base}"
    seed(registry, layout, "latest", f"{name}:v1")
    source = f"{registry.host}/{name}:v1"
    daemon = start_daemon(default_platform=AMD64)
    # arm64 first: the shared layer's first blob is arm64's, amd64's is kept beside it.
    assert errors(daemon.pull(source, platform=ARM64)) == []
    assert errors(daemon.pull(source, platform=AMD64)) == []
    daemon.stop()
    amd, arm = index.image("amd64"), index.image("arm64")
    gone = amd.layers[0].digest if lost == "layer blob" else amd.manifest_digest
    blob_path(daemon.root, gone).unlink()

    found = repaired(capsys, daemon.root)

    assert any(
        line.startswith(f"broken-manifest: manifest {amd.manifest_digest}") for line in found
    )
    assert rows(daemon.root, "SELECT index_digest FROM refs WHERE name = ?", (source,)) == [
        (index.digest,)
    ]
    assert rows(daemon.root, "SELECT digest FROM manifests") == [(arm.manifest_digest,)]
    daemon.start()
    assert errors(daemon.pull(source, platform=AMD64)) == []
    assert errors(push(daemon, source, f"{other_registry.host}/{name}:v1")) == []
    assert_same_index(other_registry, name, index)


def test_a_layers_first_blob_without_its_row_gets_it_back(
    capsys: pytest.CaptureFixture[str],
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
) -> None:
    index = two_levels(layout, 48_300)
    name = "fsckrows/first"
    seed(registry, layout, "latest", f"{name}:v1")
    source = f"{registry.host}/{name}:v1"
    daemon = start_daemon(default_platform=AMD64)
    assert errors(daemon.pull(source, platform=AMD64)) == []
    assert errors(daemon.pull(source, platform=ARM64)) == []
    daemon.stop()
    first = index.image("amd64").layers[0].digest
    sql(daemon.root, "DELETE FROM layer_blobs WHERE blob_digest = ?", (first,))

    found = repaired(capsys, daemon.root)

    assert any(line.startswith("missing-layer-blob:") for line in found), found
    assert not any(line.startswith("broken-manifest:") for line in found), found
    assert len(rows(daemon.root, "SELECT 1 FROM layer_blobs WHERE blob_digest = ?", (first,))) == 1
    assert len(rows(daemon.root, "SELECT digest FROM manifests")) == 2
    daemon.start()
    assert errors(push(daemon, source, f"{other_registry.host}/{name}:v1")) == []
    assert_same_index(other_registry, name, index)


def test_a_single_images_manifest_whose_layer_blob_is_lost_goes(
    capsys: pytest.CaptureFixture[str],
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
) -> None:
    index = two_compressions(layout, 48_400)
    name = "fsckrows/zstd"
    seed(registry, layout, "latest", f"{name}:v1")
    gzipped, zstd = index.images
    # Each pulled by its digest: kept as single images' manifests, no index lists them.
    daemon = start_daemon(default_platform=AMD64)
    assert errors(daemon.pull(f"{registry.host}/{name}@{gzipped.manifest_digest}")) == []
    source = f"{registry.host}/{name}@{zstd.manifest_digest}"
    assert errors(daemon.pull(source)) == []
    daemon.stop()
    blob_path(daemon.root, zstd.layers[0].digest).unlink()

    found = repaired(capsys, daemon.root)

    assert any(
        line.startswith(f"broken-manifest: manifest {zstd.manifest_digest}") for line in found
    )
    assert rows(daemon.root, "SELECT digest FROM manifests") == [(gzipped.manifest_digest,)]
    daemon.start()
    assert errors(daemon.pull(source)) == []
    daemon.stop()
    # The pull restored the manifest and its blob (a push of a digest reference to one
    # of two single-image manifests of one image is not byte for byte yet: see report).
    assert sorted(rows(daemon.root, "SELECT digest FROM manifests")) == sorted(
        [(gzipped.manifest_digest,), (zstd.manifest_digest,)]
    )
    assert fsck(capsys, "fsck", "--root", str(daemon.root))[0] == 0
