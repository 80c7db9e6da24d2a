"""Leftovers never accumulate: the daemon sweeps at start and after each rmi, and keeps
what a running transfer uses and what a later pull can resume."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from ferryd.oci.digest import Digest, sha256_digest
from ferryd.store import Store
from ferryd.store.sweep import PARTIAL_MAX_AGE, note_removal, sweep
from support.daemon import Daemon, errors
from support.images import LayerSpec, build_image, seed
from support.registry import Registry

WEEK_AND_A_DAY = PARTIAL_MAX_AGE + 24 * 3600


def plant(path: Path, data: bytes, *, age: float = 0.0) -> Path:
    """A file as a crash would leave it, `age` seconds old."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


def layer_bytes(seed: int) -> bytes:
    """Bytes that look like a gzip layer (not JSON)."""
    return b"\x1f\x8b" + hashlib.sha256(str(seed).encode()).digest() * 100


def blob_path(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.removeprefix("sha256:")


def partial_path(root: Path, digest: str) -> Path:
    return root / "partial" / ("sha256-" + digest.removeprefix("sha256:"))


def test_a_sweep_removes_orphans_and_gives_recent_layer_blobs_back_to_partial(
    store: Store,
) -> None:
    root = store.root
    config = b'{"architecture": "amd64"}'
    old_layer, new_layer = layer_bytes(1), layer_bytes(2)
    plant(blob_path(root, sha256_digest(config)), config)
    plant(blob_path(root, sha256_digest(old_layer)), old_layer, age=WEEK_AND_A_DAY)
    plant(blob_path(root, sha256_digest(new_layer)), new_layer)
    temp = plant(root / "blobs" / "sha256" / ".tmp-abc123", b"half a blob")

    with structlog.testing.capture_logs() as logs:
        result = sweep(store, reason="start")

    assert (result.blobs, result.blobs_to_partial, result.temp_files) == (2, 1, 1)
    assert result.bytes == len(config) + len(old_layer) + len(b"half a blob")
    assert not blob_path(root, sha256_digest(config)).exists()
    assert not blob_path(root, sha256_digest(old_layer)).exists()
    assert not temp.exists()
    assert not blob_path(root, sha256_digest(new_layer)).exists()
    assert partial_path(root, sha256_digest(new_layer)).read_bytes() == new_layer
    [line] = [entry for entry in logs if entry["event"] == "store.swept"]
    assert line["reason"] == "start"
    assert (line["blobs"], line["blobs_to_partial"], line["temp_files"]) == (2, 1, 1)
    assert line["bytes"] == result.bytes


def test_layer_blobs_an_rmi_was_deleting_when_it_died_are_deleted_not_kept(
    store: Store,
) -> None:
    doomed, other = layer_bytes(4), layer_bytes(5)
    plant(blob_path(store.root, sha256_digest(doomed)), doomed)
    plant(blob_path(store.root, sha256_digest(other)), other)
    note_removal(store, {Digest(sha256_digest(doomed))})

    result = sweep(store, reason="start")

    assert (result.blobs, result.blobs_to_partial) == (1, 1)
    assert not partial_path(store.root, sha256_digest(doomed)).exists()
    assert partial_path(store.root, sha256_digest(other)).exists()
    assert not (store.root / "removing").exists()


def test_a_sweep_keeps_resumable_partials_and_drops_stale_ones(store: Store) -> None:
    root = store.root
    resumable = plant(partial_path(root, sha256_digest(b"a")), b"the start of a")
    abandoned = plant(partial_path(root, sha256_digest(b"b")), b"the start of b", age=8 * 86400)
    stored = store.blobs.put(b'{"stored": true}')
    duplicate = plant(partial_path(root, stored), b'{"sto')
    store.db.execute("PRAGMA foreign_keys=OFF")
    store.db.execute(
        "INSERT INTO images VALUES (?, NULL, '', 'linux', 'amd64', NULL, 0, 0)", (stored,)
    )

    result = sweep(store, reason="rmi")

    assert result.partials == 2
    assert resumable.exists()
    assert not abandoned.exists()
    assert not duplicate.exists()
    assert store.blobs.has(stored)


def test_a_sweep_leaves_what_running_transfers_pin(store: Store) -> None:
    root = store.root
    data = layer_bytes(3)
    digest = Digest(sha256_digest(data))
    plant(blob_path(root, digest), data, age=WEEK_AND_A_DAY)
    partial = plant(partial_path(root, sha256_digest(b"c")), b"c", age=WEEK_AND_A_DAY)

    with store.blobs.pinned(digest, Digest(sha256_digest(b"c"))):
        result = sweep(store, reason="rmi")

    assert result.removed == 0
    assert store.blobs.has(digest)
    assert partial.exists()
    assert sweep(store, reason="rmi").removed == 2


def test_a_sweep_with_nothing_to_do_logs_nothing(store: Store) -> None:
    store.blobs.put(b"{}")  # an orphan config...
    sweep(store, reason="start")  # ...swept once

    with structlog.testing.capture_logs() as logs:
        result = sweep(store, reason="start")

    assert result.removed == 0
    assert [entry for entry in logs if entry["event"] == "store.swept"] == []


@pytest.mark.registry
def test_the_daemon_sweeps_at_start_before_it_serves(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=200_000, seed=9201)])
    seed(registry, layout, "latest", "sweep/start:v1")
    daemon = start_daemon()
    assert errors(daemon.pull(f"{registry.host}/sweep/start:v1")) == []
    daemon.stop()
    root = daemon.root
    orphan = plant(blob_path(root, sha256_digest(b'{"orphan": 1}')), b'{"orphan": 1}')
    temp = plant(root / "blobs" / "sha256" / ".tmp-crashed", b"x")
    layer = built.layers[0].digest
    duplicate = plant(partial_path(root, layer), blob_path(root, layer).read_bytes()[:1000])

    daemon.start()

    assert not orphan.exists()
    assert not temp.exists()
    assert not duplicate.exists()
    [line] = daemon.log_events("store.swept")
    assert (line["reason"], line["blobs"], line["temp_files"], line["partials"]) == (
        "start",
        1,
        1,
        1,
    )
    events = [e["event"] for e in daemon.log_events()]
    second_run = events[events.index("daemon.stopped") :]
    assert second_run.index("store.swept") < second_run.index("daemon.ready")
    assert daemon.inspect(f"{registry.host}/sweep/start:v1")["Id"] == built.config_digest


@pytest.mark.registry
def test_rmi_sweeps_what_an_earlier_crash_left(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=200_000, seed=9202)])
    seed(registry, layout, "latest", "sweep/rmi:v1")
    daemon = start_daemon()
    ref = f"{registry.host}/sweep/rmi:v1"
    assert errors(daemon.pull(ref)) == []
    # As a crash in an earlier rmi leaves it while the daemon runs on: an orphan.
    orphan = plant(blob_path(daemon.root, sha256_digest(b'{"orphan": 2}')), b'{"orphan": 2}')

    records = json.loads(daemon.client().request("DELETE", f"/images/{ref}").read())

    assert {"Deleted": built.config_digest} in records
    assert not orphan.exists()
    assert daemon.blob_files() == []
    [line] = daemon.log_events("store.swept")
    assert (line["reason"], line["blobs"]) == ("rmi", 1)
