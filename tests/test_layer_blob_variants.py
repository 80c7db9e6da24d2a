"""One layer, several blobs: two entries of an index whose layer has the same DiffID (so
the same ChainID) but another compressed blob (gzip level 1 and 9 on two platforms, or
gzip and zstd entries of one image). Every manifest kept is kept with the blobs it
names: pulled (in turn or at once), pushed and saved, loaded and pushed again, the
index and each child come back byte for byte, as skopeo copy --all copies them; rmi,
fsck and the schema migration keep and check every blob of a layer.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from ferryd.store import Store
from ferryd.store.db import _MIGRATIONS, _SCHEMA_V1, SCHEMA_VERSION
from ferryd.store.fsck import MISSING_BLOB, check
from support.archives import load, members, save
from support.daemon import Daemon, errors
from support.digests import sha256
from support.images import (
    BuiltIndex,
    LayerSpec,
    PlatformSpec,
    build_index,
    seed,
    skopeo_inspect_raw,
)
from support.registry import Registry

pytestmark = pytest.mark.registry

AMD64, ARM64 = "linux/amd64", "linux/arm64"
ALL = {"all-platforms": "1"}


def two_levels(layout: Path, base: int) -> BuiltIndex:
    """amd64 and arm64 on one layer, gzipped at level 1 and at level 9, each with a layer
    of its own on top."""
    index = build_index(
        layout,
        [
            PlatformSpec(
                [
                    LayerSpec(size=20_000, seed=base, compressible=True, level=1),
                    LayerSpec(size=1_000, seed=base + 1),
                ],
                architecture="amd64",
            ),
            PlatformSpec(
                [
                    LayerSpec(size=20_000, seed=base, compressible=True, level=9),
                    LayerSpec(size=1_000, seed=base + 2),
                ],
                architecture="arm64",
            ),
        ],
    )
    amd, arm = index.images
    assert amd.diff_ids[0] == arm.diff_ids[0]
    assert amd.layers[0].digest != arm.layers[0].digest
    return index


def two_compressions(layout: Path, base: int) -> BuiltIndex:
    """One amd64 image (one config) listed twice: its layer gzipped, and zstd."""
    index = build_index(
        layout,
        [
            PlatformSpec([LayerSpec(size=20_000, seed=base, compression="gzip")]),
            PlatformSpec([LayerSpec(size=20_000, seed=base, compression="zstd")]),
        ],
    )
    gzipped, zstd = index.images
    assert gzipped.config_digest == zstd.config_digest
    assert gzipped.layers[0].digest != zstd.layers[0].digest
    return index


def push(daemon: Daemon, source: str, target: str) -> list[dict[str, Any]]:
    repository, _, tag = target.rpartition(":")
    client = daemon.client()
    client.request("POST", f"/images/{source}/tag", {"repo": repository, "tag": tag}).read()
    return list(client.stream("POST", f"/images/{repository}/push", {"tag": tag}))


def assert_same_index(registry: Registry, name: str, index: BuiltIndex) -> None:
    """The registry has the index and every child as they were built, byte for byte."""
    assert skopeo_inspect_raw(registry, f"{name}:v1") == index.index
    repository = name.rpartition(":")[0] or name
    for image in index.images:
        child = skopeo_inspect_raw(registry, f"{repository}@{image.manifest_digest}")
        assert child == image.manifest


def layer_blobs(index: BuiltIndex) -> set[str]:
    return {layer.digest for image in index.images for layer in image.layers}


def stored_blobs(daemon: Daemon) -> set[str]:
    return {f"sha256:{path.name}" for path in daemon.blob_files()}


def tables(root: Path) -> set[str]:
    with sqlite3.connect(root / "ferryd.db") as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


# -- pull, push ------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["at once", "in turn"])
def test_platforms_whose_layer_is_compressed_differently_push_back_byte_for_byte(
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    order: str,
) -> None:
    base = 47_100 if order == "at once" else 47_110
    index = two_levels(layout, base)
    seed(registry, layout, "latest", f"variants/levels-{base}:v1")
    source = f"{registry.host}/variants/levels-{base}:v1"
    daemon = start_daemon(default_platform=AMD64)

    if order == "at once":
        assert errors(daemon.pull(source, **ALL)) == []
    else:
        assert errors(daemon.pull(source, platform=AMD64)) == []
        arm = daemon.pull(source, platform=ARM64)
        assert errors(arm) == []
        # arm64's blob of the shared layer is not amd64's: fetched, not "Already exists".
        shared = index.image("arm64").layers[0].digest
        statuses = [m["status"] for m in arm if m.get("id") == shared[7:19]]
        assert "Already exists" not in statuses
    assert registry.blob_gets(index.image("arm64").layers[0].digest) == 1
    assert layer_blobs(index) <= stored_blobs(daemon)

    target = f"{other_registry.host}/variants/levels-{base}:v1"
    pushed = push(daemon, source, target)

    assert errors(pushed) == []
    assert {"aux": {"Tag": "v1", "Digest": index.digest, "Size": index.size}} in pushed
    assert_same_index(other_registry, f"variants/levels-{base}", index)


def test_gzip_and_zstd_entries_of_one_image_push_back_byte_for_byte(
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
) -> None:
    index = two_compressions(layout, 47_120)
    seed(registry, layout, "latest", "variants/zstd:v1")
    source = f"{registry.host}/variants/zstd:v1"
    daemon = start_daemon(default_platform=AMD64)

    assert errors(daemon.pull(source, **ALL)) == []
    assert layer_blobs(index) <= stored_blobs(daemon)
    pushed = push(daemon, source, f"{other_registry.host}/variants/zstd:v1")

    assert errors(pushed) == []
    assert_same_index(other_registry, "variants/zstd", index)


def test_a_config_two_manifests_share_goes_up_once_so_no_manifest_put_meets_its_commit(
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
) -> None:
    # The registry rewrites a blob's link at each commit; a manifest PUT that read it
    # meanwhile was refused now and then ("digest invalid", "blob unknown").
    index = two_compressions(layout, 47_130)
    seed(registry, layout, "latest", "variants/config-once:v1")
    source = f"{registry.host}/variants/config-once:v1"
    daemon = start_daemon(default_platform=AMD64)
    assert errors(daemon.pull(source, **ALL)) == []

    pushed = push(daemon, source, f"{other_registry.host}/variants/config-once:v1")

    assert errors(pushed) == []
    config = index.images[0].config_digest
    commits = [
        entry
        for entry in other_registry.access_log()
        if entry.method == "PUT" and parse_qs(entry.query).get("digest") == [config]
    ]
    assert len(commits) == 1


# -- save, load ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["levels", "zstd"])
def test_save_then_load_into_a_fresh_daemon_then_push_keeps_every_manifest_and_blob(
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    kind: str,
) -> None:
    base = 47_130 if kind == "levels" else 47_140
    index = two_levels(layout, base) if kind == "levels" else two_compressions(layout, base)
    name = f"variants/saved-{kind}"
    seed(registry, layout, "latest", f"{name}:v1")
    source = f"{registry.host}/{name}:v1"
    first = start_daemon(default_platform=AMD64)
    assert errors(first.pull(source, **ALL)) == []

    archive = save(first, source)

    files = members(archive)
    for image in index.images:
        assert files[f"blobs/sha256/{image.manifest_digest[7:]}"] == image.manifest
        for layer in image.layers:
            assert sha256(files[f"blobs/sha256/{layer.digest[7:]}"]) == layer.digest
    fresh = start_daemon(default_platform=AMD64)
    loaded = load(fresh, archive)
    assert loaded.status == 200, loaded.messages
    assert errors(loaded.messages) == []
    assert layer_blobs(index) <= stored_blobs(fresh)
    pushed = push(fresh, source, f"{other_registry.host}/{name}:v1")
    assert errors(pushed) == []
    assert_same_index(other_registry, name, index)


# -- rmi, fsck ---------------------------------------------------------------------------


def test_rmi_of_one_platform_keeps_the_others_blob_and_rmi_of_all_leaves_no_blob(
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
) -> None:
    index = two_levels(layout, 47_150)
    seed(registry, layout, "latest", "variants/rmi:v1")
    source = f"{registry.host}/variants/rmi:v1"
    daemon = start_daemon(default_platform=AMD64)
    # arm64 first: the shared layer is stored with its blob first, amd64's after it.
    assert errors(daemon.pull(source, platform=ARM64)) == []
    assert errors(daemon.pull(source, platform=AMD64)) == []
    amd, arm = index.image("amd64"), index.image("arm64")

    with daemon.http() as client:
        forced = client.delete(f"/images/{arm.config_digest}", params={"force": "1"})
    assert forced.status_code == 200, forced.text

    assert {layer.digest for layer in amd.layers} <= stored_blobs(daemon)
    assert arm.layers[1].digest not in stored_blobs(daemon)
    target = f"{other_registry.host}/variants/rmi-amd64:v1"
    client = daemon.client()
    repository, _, tag = target.rpartition(":")
    client.request("POST", f"/images/{source}/tag", {"repo": repository, "tag": tag}).read()
    pushed = list(
        client.stream("POST", f"/images/{repository}/push", {"tag": tag, "platform": AMD64})
    )
    assert errors(pushed) == []
    assert skopeo_inspect_raw(other_registry, "variants/rmi-amd64:v1") == amd.manifest

    with daemon.http() as client:
        for name in (target, source):
            removed = client.delete(f"/images/{name}")
            assert removed.status_code == 200, removed.text
    assert daemon.blob_files() == []


def test_fsck_is_clean_and_finds_a_missing_blob_of_a_platform(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    index = two_levels(layout, 47_160)
    seed(registry, layout, "latest", "variants/fsck:v1")
    source = f"{registry.host}/variants/fsck:v1"
    daemon = start_daemon(default_platform=AMD64)
    # amd64 first: the shared layer's first blob is amd64's, arm64's is kept beside it.
    assert errors(daemon.pull(source, platform=AMD64)) == []
    assert errors(daemon.pull(source, platform=ARM64)) == []
    daemon.stop()
    arm = index.image("arm64")
    shared = arm.layers[0].digest

    store = Store(daemon.root)
    try:
        assert check(store).problems == []
        (daemon.root / "blobs" / "sha256" / shared[7:]).unlink()
        report = check(store)
        # Repair forgets arm64's manifest, and so its platform: amd64's stays whole.
        check(store, repair=True)
        assert check(store).problems == []
        stored = store.indexes.stored_children(index.digest)
        assert set(stored) == {index.image("amd64").manifest_digest}
    finally:
        store.close()

    found = {(problem.kind, problem.subject) for problem in report.problems}
    assert (MISSING_BLOB, shared) in found
    assert ("broken-manifest", arm.manifest_digest) in found
    assert not any(subject == index.image("amd64").manifest_digest for _, subject in found)


# -- the migration ---------------------------------------------------------------------


def previous_schema_copy(root: Path, into: Path) -> None:
    """The store at `root` as the previous schema version keeps it: every row it has a
    column for, in a database made by the migrations up to that version."""
    shutil.copytree(root, into)
    (into / "ferryd.db").unlink()
    for suffix in ("-wal", "-shm"):
        (into / f"ferryd.db{suffix}").unlink(missing_ok=True)
    previous = SCHEMA_VERSION - 1
    with sqlite3.connect(into / "ferryd.db") as db:
        steps = "".join(_MIGRATIONS[version] for version in range(2, previous + 1))
        db.executescript(f"BEGIN; {_SCHEMA_V1} {steps} PRAGMA user_version = {previous}; COMMIT;")
        db.execute("ATTACH DATABASE ? AS new", (str(root / "ferryd.db"),))
        for (table,) in db.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'"):
            columns = [row[1] for row in db.execute(f"PRAGMA main.table_info({table})")]
            listed = ", ".join(columns)
            db.execute(f"INSERT INTO main.{table} ({listed}) SELECT {listed} FROM new.{table}")
        db.commit()
        db.execute("DETACH DATABASE new")


def test_a_store_of_the_previous_schema_keeps_its_layer_blobs_and_takes_new_ones(
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    tmp_path: Path,
) -> None:
    index = two_levels(layout, 47_170)
    seed(registry, layout, "latest", "variants/migrated:v1")
    source = f"{registry.host}/variants/migrated:v1"
    before = start_daemon(default_platform=AMD64)
    assert errors(before.pull(source, platform=AMD64)) == []
    before.stop()
    old_root = tmp_path / "old-store"
    previous_schema_copy(before.root, old_root)
    assert "layer_blobs" not in tables(old_root)
    amd, arm = index.image("amd64"), index.image("arm64")

    daemon = start_daemon(default_platform=AMD64, root=str(old_root))
    assert errors(daemon.pull(source, platform=ARM64)) == []
    pushed = push(daemon, source, f"{other_registry.host}/variants/migrated:v1")
    assert errors(pushed) == []
    assert_same_index(other_registry, "variants/migrated", index)
    daemon.stop()

    with sqlite3.connect(old_root / "ferryd.db") as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        kept = {digest for (digest,) in db.execute("SELECT blob_digest FROM layer_blobs")}
    assert version == SCHEMA_VERSION
    assert kept == layer_blobs(index)
    assert {layer.digest for layer in amd.layers + arm.layers} == kept
    store = Store(old_root)
    try:
        assert check(store).problems == []
    finally:
        store.close()
