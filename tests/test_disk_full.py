"""A store on a disk that fills up: pulls fail saying so and resume when there is room,
the daemon starts on a full disk, and rmi frees space there."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.archives import load
from support.daemon import Daemon, errors
from support.images import LayerSpec, build_image, seed
from support.registry import Registry
from support.tmpfs import fill, free_bytes, mounted_tmpfs, remount

pytestmark = pytest.mark.registry

FULL = "no space left on device"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs for the store's root."""
    with mounted_tmpfs(tmp_path / "disk", "8m") as mount:
        yield mount


def blob_file(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.removeprefix("sha256:")


def partial_file(root: Path, digest: str) -> Path:
    return root / "partial" / ("sha256-" + digest.removeprefix("sha256:"))


def test_a_pull_that_fills_the_disk_fails_naming_it_and_resumes_once_there_is_room(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path, disk: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=12_000_000, seed=9101)])
    seed(registry, layout, "latest", "diskfull/app:v1")
    root = disk / "root"
    daemon = start_daemon(root=str(root))
    [layer] = built.layers

    [error] = errors(daemon.pull(f"{registry.host}/diskfull/app:v1"))

    assert FULL in error
    assert "BrokenResourceError" not in error
    assert daemon.log_events("transfer.crashed") == []
    [failed] = daemon.log_events("image.pull_failed")
    assert FULL in failed["error"]
    assert daemon.images() == []
    assert not blob_file(root, layer.digest).exists()
    assert not blob_file(root, built.config_digest).exists()
    kept = partial_file(root, layer.digest).stat().st_size
    assert kept > 1_000_000, "the partial download was not kept for a resume"

    remount(disk, "size=64m")
    assert errors(daemon.pull(f"{registry.host}/diskfull/app:v1")) == []

    assert daemon.inspect(f"{registry.host}/diskfull/app:v1")["Id"] == built.config_digest
    resumed = [e for e in registry.access_log() if e.status == 206 and layer.digest in e.path]
    assert resumed, "the pull after the disk had room again did not resume with Range"


def test_the_daemon_starts_on_a_full_disk_and_rmi_frees_space_there(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path, disk: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=2_500_000, seed=9102)])
    seed(registry, layout, "latest", "diskfull/small:v1")
    root = disk / "root"
    daemon = start_daemon(root=str(root))
    assert errors(daemon.pull(f"{registry.host}/diskfull/small:v1")) == []
    daemon.stop()
    fill(disk)
    assert free_bytes(disk) == 0

    daemon.start()

    daemon.client().request("GET", "/_ping").read()
    assert daemon.log_events("store.reserve_released")
    assert daemon.inspect(f"{registry.host}/diskfull/small:v1")["Id"] == built.config_digest
    response = daemon.client().request("DELETE", f"/images/{registry.host}/diskfull/small:v1")
    assert {"Deleted": built.config_digest} in json.loads(response.read())
    assert not blob_file(root, built.layers[0].digest).exists()
    assert free_bytes(disk) > 2_000_000


def test_a_store_on_a_full_disk_without_room_kept_fails_to_start_saying_so(
    start_daemon: Callable[..., Daemon], disk: Path
) -> None:
    fill(disk)

    with pytest.raises(RuntimeError) as failed:
        start_daemon(root=str(disk / "root"))

    assert "disk full" in str(failed.value)
    assert f"free space under {disk / 'root'}" in str(failed.value)


def test_a_compressed_load_that_expands_past_the_disk_fails_naming_it_and_leaves_nothing(
    start_daemon: Callable[..., Daemon], disk: Path
) -> None:
    """A 20 KB gzip that expands to 24 MB on an 8 MiB disk: its staging stops at the full
    disk, the load says so, its staging directory goes, and the disk is as before."""
    daemon = start_daemon(root=str(disk / "root"))
    before = free_bytes(disk)
    zeros = bytes(24 << 20)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(f"blobs/sha256/{hashlib.sha256(zeros).hexdigest()}")
        info.size = len(zeros)
        tar.addfile(info, io.BytesIO(zeros))
    assert len(buffer.getvalue()) < 100_000

    answer = load(daemon, buffer.getvalue())

    assert FULL in (answer.error or "")
    assert [p for p in (disk / "root" / "loading").rglob("*") if p.is_file()] == []
    assert free_bytes(disk) >= before - 64 * 1024
    daemon.client().request("GET", "/_ping").read()
