"""SIGKILL at many points inside a pull, a push and an rmi: each time the daemon starts
again, `ferryd fsck --root` (daemon stopped) finds the store clean, and doing the same
again completes, reusing what was verified before the crash."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ferryd.cli.client import DaemonError
from ferryd.cli.commands import main
from support.crash import kill, killed_during
from support.daemon import Daemon, errors
from support.images import BuiltImage, LayerSpec, build_image, seed
from support.registry import Registry, start_registry
from support.slow_link import slow_link
from support.throttle import throttled

pytestmark = [pytest.mark.crash, pytest.mark.registry]

# Seconds after the request at which the daemon is killed: from before it has read the
# request to past the end of the operation.
PULL_POINTS = [0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 0.7, 0.8, 0.9, 1.05, 1.15, 1.4]
PUSH_POINTS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9]
# An rmi takes milliseconds: killed at once, or once it has deleted N of its files.
RMI_LAYERS = 24
RMI_AFTER = [0.0, 0.001, 0.002]
RMI_GONE = [1, 2, 3, 5, 8, 12, 16, 20]


def restart_and_fsck(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    """The daemon starts again (sweeping before it serves); stopped again, `ferryd fsck
    --root` finds nothing wrong; then it runs for what comes next."""
    daemon.start()
    kill(daemon)  # idle: the kill only frees the store for fsck
    capsys.readouterr()
    status = main(["fsck", "--root", str(daemon.root)])
    out = capsys.readouterr().out
    assert status == 0, f"fsck after a crash:\n{out}\n{daemon.log_tail()}"
    daemon.start()


def registered_blobs(root: Path) -> set[str]:
    """The blobs of the layers the store has registered (read with the daemon down)."""
    with sqlite3.connect(root / "ferryd.db") as db:
        return {row[0] for row in db.execute("SELECT blob_digest FROM layers")}


def partial_sizes(root: Path) -> dict[str, int]:
    return {
        "sha256:" + path.name.removeprefix("sha256-"): path.stat().st_size
        for path in (root / "partial").iterdir()
    }


@pytest.fixture
def image(registry: Registry, layout: Path) -> BuiltImage:
    """Three layers of incompressible bytes, in a registry every test can reach."""
    built = build_image(
        layout,
        layers=[
            LayerSpec(size=2_300_000, seed=9401),
            LayerSpec(size=600_000, seed=9402),
            LayerSpec(size=250_000, seed=9403),
        ],
    )
    seed(registry, layout, "latest", "crash/app:v1")
    return built


def test_a_pull_killed_anywhere_leaves_a_clean_store_and_resumes(
    registry: Registry,
    image: BuiltImage,
    start_daemon: Callable[..., Daemon],
    capsys: pytest.CaptureFixture[str],
) -> None:
    daemon = start_daemon()
    with throttled(registry.host, 2_000_000) as proxy:
        ref = f"{proxy.host}/crash/app:v1"
        for after in PULL_POINTS:
            killed_during(daemon, lambda: daemon.pull(ref), after)
            # What the store has verified now must not be fetched again.
            daemon.start()
            kill(daemon)
            registered, partials = registered_blobs(daemon.root), partial_sizes(daemon.root)
            gets = {layer.digest: registry.blob_gets(layer.digest) for layer in image.layers}
            ranged = {layer.digest: registry.ranged_gets(layer.digest) for layer in image.layers}
            capsys.readouterr()
            assert main(["fsck", "--root", str(daemon.root)]) == 0, capsys.readouterr().out
            daemon.start()

            assert errors(daemon.pull(ref)) == [], f"killed {after} s into the pull"

            assert daemon.inspect(ref)["Id"] == image.config_digest
            for layer in image.layers:
                fetched = registry.blob_gets(layer.digest) - gets[layer.digest]
                kept = partials.get(layer.digest, 0)
                if layer.digest in registered or kept == layer.size:
                    assert fetched == 0, f"{layer.digest} fetched again ({after} s)"
                elif kept:
                    assert registry.ranged_gets(layer.digest) > ranged[layer.digest], (
                        f"{layer.digest}: {kept} bytes kept but not resumed ({after} s)"
                    )
            daemon.client().request("DELETE", f"/images/{ref}").read()
    daemon.stop()
    assert main(["fsck", "--root", str(daemon.root)]) == 0


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Registry]:
    """A registry of its own, emptied before each push."""
    with start_registry(tmp_path / "target") as reg:
        yield reg


def emptied(registry: Registry) -> None:
    registry.stop()
    shutil.rmtree(registry.storage, ignore_errors=True)
    registry.storage.mkdir()
    registry.start()


def has_blob(registry: Registry, repository: str, digest: str) -> bool:
    with registry.client() as client:
        return client.head(f"/v2/{repository}/blobs/{digest}").status_code == 200


def test_a_push_killed_anywhere_leaves_a_clean_store_and_uploads_only_what_is_missing(
    registry: Registry,
    target: Registry,
    image: BuiltImage,
    start_daemon: Callable[..., Daemon],
    capsys: pytest.CaptureFixture[str],
) -> None:
    daemon = start_daemon()
    assert errors(daemon.pull(f"{registry.host}/crash/app:v1")) == []
    blobs = [layer.digest for layer in image.layers] + [image.config_digest]
    with slow_link(target.host, 4_000_000) as link:
        ref = f"{link.host}/crash/pushed"
        daemon.client().request(
            "POST", f"/images/{registry.host}/crash/app:v1/tag", {"repo": ref, "tag": "v1"}
        ).read()
        for after in PUSH_POINTS:
            emptied(target)

            def push() -> None:
                list(daemon.client().stream("POST", f"/images/{ref}/push", {"tag": "v1"}))

            killed_during(daemon, push, after)
            restart_and_fsck(daemon, capsys)
            there = {digest for digest in blobs if has_blob(target, "crash/pushed", digest)}
            uploads = target.requests("PUT", "/blobs/uploads/")

            messages = list(daemon.client().stream("POST", f"/images/{ref}/push", {"tag": "v1"}))

            assert errors(messages) == [], f"killed {after} s into the push"
            assert any("Digest" in m.get("aux", {}) for m in messages)
            assert target.requests("PUT", "/blobs/uploads/") - uploads == len(blobs) - len(there)
    daemon.stop()
    assert main(["fsck", "--root", str(daemon.root)]) == 0


@pytest.fixture
def many_layers(registry: Registry, layout: Path) -> BuiltImage:
    """An image of many small layers: an rmi that deletes many files, to kill inside."""
    layers = [LayerSpec(size=4_000, seed=9500 + n) for n in range(RMI_LAYERS)]
    built = build_image(layout, layers=layers, tag="many")
    seed(registry, layout, "many", "crash/many:v1")
    return built


def killed_when(daemon: Daemon, operation: Callable[[], Any], point: Callable[[], bool]) -> None:
    """Start `operation` and SIGKILL the daemon as soon as `point()` is true (or the
    operation is over)."""
    worker = threading.Thread(target=operation)
    worker.start()
    deadline = time.monotonic() + 10
    while not point() and worker.is_alive() and time.monotonic() < deadline:
        pass
    kill(daemon)
    worker.join(30)


def test_an_rmi_killed_anywhere_leaves_a_clean_store_and_removes_the_image(
    registry: Registry,
    many_layers: BuiltImage,
    start_daemon: Callable[..., Daemon],
    capsys: pytest.CaptureFixture[str],
) -> None:
    daemon = start_daemon()
    ref = f"{registry.host}/crash/many:v1"
    blobs = daemon.root / "blobs" / "sha256"
    stored = RMI_LAYERS + 2  # the layers, the config and the manifest

    def rmi() -> None:
        with contextlib.suppress(DaemonError):
            daemon.client().request("DELETE", f"/images/{ref}").read()

    started = 0.0
    points: list[Callable[[], bool]] = [
        *(lambda s=seconds: time.monotonic() - started >= s for seconds in RMI_AFTER),
        *(lambda n=gone: len(os.listdir(blobs)) <= stored - n for gone in RMI_GONE),
    ]
    for point in points:
        assert errors(daemon.pull(ref)) == []
        started = time.monotonic()
        killed_when(daemon, rmi, point)
        restart_and_fsck(daemon, capsys)

        rmi()  # again, or for the first time if the kill came before it began

        assert daemon.images() == []
        # What the rmi was deleting is gone, not kept as partial downloads.
        assert daemon.blob_files() == []
        assert list((daemon.root / "partial").iterdir()) == []
    daemon.stop()
    assert main(["fsck", "--root", str(daemon.root)]) == 0
