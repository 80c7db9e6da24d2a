"""Our own CLI, a client of the socket."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.daemon import Daemon, ferryd, start_failure
from support.images import LayerSpec, build_image, seed
from support.registry import Registry


@pytest.mark.registry
def test_cli_pull_images_and_inspect(registry: Registry, daemon: Daemon, layout: Path) -> None:
    built = build_image(layout, layers=[LayerSpec(size=2000, seed=100)])
    seed(registry, layout, "latest", "ourcli/app:v1")
    ref = f"{registry.host}/ourcli/app:v1"

    pulled = ferryd("--host", daemon.host, "pull", ref)
    listed = ferryd("--host", daemon.host, "images")
    inspected = ferryd("--host", daemon.host, "inspect", ref)

    assert pulled.returncode == 0, pulled.stderr
    assert f"Status: Downloaded newer image for {ref}" in pulled.stdout
    assert f"{built.layers[0].digest[7:19]}: Pull complete" in pulled.stdout
    assert listed.returncode == 0
    assert f"{registry.host}/ourcli/app" in listed.stdout
    assert built.config_digest[7:19] in listed.stdout
    assert json.loads(inspected.stdout)[0]["Id"] == built.config_digest


@pytest.mark.registry
def test_cli_pull_failure_exits_non_zero_with_the_reason(
    registry: Registry, daemon: Daemon
) -> None:
    result = ferryd("--host", daemon.host, "pull", f"{registry.host}/ourcli/missing:v1")

    assert result.returncode == 1
    assert "not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_takes_the_socket_from_ferryd_host(daemon: Daemon) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ferryd", "images", "-q"],
        capture_output=True,
        text=True,
        env={"FERRYD_HOST": daemon.host, "PATH": "/usr/bin:/bin"},
        timeout=60,
    )

    assert result.returncode == 0, result.stderr


def test_cli_says_clearly_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    result = ferryd("--host", f"unix://{tmp_path}/nothing.sock", "images")

    assert result.returncode == 1
    assert "cannot connect to the ferryd daemon" in result.stderr


def test_cli_refuses_an_invalid_reference(tmp_path: Path) -> None:
    result = ferryd("--host", f"unix://{tmp_path}/nothing.sock", "pull", "Bad:Ref:x")

    assert result.returncode == 1
    assert "invalid reference format" in result.stderr


def test_serve_with_a_broken_config_exits_non_zero_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("max_concurrent_downloads = 0\n")

    result = ferryd("serve", "--config", str(config))

    assert result.returncode == 2
    assert "max_concurrent_downloads" in start_failure(result)["error"]


@pytest.mark.registry
def test_cli_tag_push_and_rmi(registry: Registry, daemon: Daemon, layout: Path) -> None:
    built = build_image(layout, layers=[LayerSpec(size=2000, seed=101)])
    seed(registry, layout, "latest", "ourcli/src:v1")
    source, target = f"{registry.host}/ourcli/src:v1", f"{registry.host}/ourcli/dst:v2"
    assert ferryd("--host", daemon.host, "pull", source).returncode == 0

    tagged = ferryd("--host", daemon.host, "tag", source, target)
    pushed = ferryd("--host", daemon.host, "push", target)
    removed = ferryd("--host", daemon.host, "rmi", target, source)

    assert tagged.returncode == 0, tagged.stderr
    assert pushed.returncode == 0, pushed.stderr
    assert f"v2: digest: {built.manifest_digest} size: {built.manifest_size}" in pushed.stdout
    assert "Mounted from ourcli/src" in pushed.stdout
    assert removed.returncode == 0, removed.stderr
    assert f"Untagged: {target}" in removed.stdout
    assert f"Deleted: {built.config_digest}" in removed.stdout
    assert not list((daemon.root / "blobs" / "sha256").iterdir())


def test_cli_rmi_of_an_unknown_image_fails_with_the_reason(daemon: Daemon) -> None:
    result = ferryd("--host", daemon.host, "rmi", "nothing:here")

    assert result.returncode == 1
    assert "No such image" in result.stderr


def test_cli_push_refuses_a_digest(daemon: Daemon) -> None:
    result = ferryd("--host", daemon.host, "push", f"x/y@sha256:{'a' * 64}")

    assert result.returncode == 1
    assert "not a digest" in result.stderr


def test_serve_with_an_unusable_root_says_why_without_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    result = ferryd("serve", "--root", str(blocker / "root"), "--socket", str(tmp_path / "s"))

    assert result.returncode == 2  # the setting's fault: a config error
    assert str(blocker) in start_failure(result)["error"]


def test_pull_all_tags_refuses_a_tag(daemon: Daemon) -> None:
    done = daemon.ferryd("pull", "-a", "alpine:3")

    assert done.returncode == 1
    assert "tag can't be used with --all-tags/-a" in done.stderr
