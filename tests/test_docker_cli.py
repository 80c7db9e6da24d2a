"""The docker CLI as a client of our socket (skipped where `docker` is not installed)."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from support.daemon import Daemon
from support.docker_cli import docker
from support.images import LayerSpec, PlatformSpec, build_image, build_index, seed
from support.registry import PASSWORD, USER, Registry

pytestmark = [
    pytest.mark.registry,
    pytest.mark.docker_cli,
    pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed"),
]


def test_docker_pull_images_and_inspect(
    registry: Registry, daemon: Daemon, layout: Path, docker_config: Path
) -> None:
    built = build_image(
        layout, layers=[LayerSpec(size=200_000, seed=90), LayerSpec(size=100, seed=91)]
    )
    seed(registry, layout, "latest", "cli/app:v1")
    ref = f"{registry.host}/cli/app:v1"

    pulled = docker(daemon, "pull", ref, config=docker_config)

    assert "v1: Pulling from cli/app" in pulled.stdout
    assert f"Digest: {built.manifest_digest}" in pulled.stdout
    assert f"Status: Downloaded newer image for {ref}" in pulled.stdout
    listed = docker(
        daemon, "images", "--format", "{{.Repository}} {{.Tag}} {{.ID}}", config=docker_config
    )
    assert f"{registry.host}/cli/app v1 {built.config_digest[7:19]}" in listed.stdout.splitlines()
    inspected = json.loads(docker(daemon, "image", "inspect", ref, config=docker_config).stdout)
    assert inspected[0]["Id"] == built.config_digest
    assert inspected[0]["RootFS"]["Layers"] == built.diff_ids


def test_docker_pull_twice_says_up_to_date(
    registry: Registry, daemon: Daemon, layout: Path, docker_config: Path
) -> None:
    build_image(layout, layers=[LayerSpec(size=1000, seed=92)])
    seed(registry, layout, "latest", "cli/again:v1")
    docker(daemon, "pull", f"{registry.host}/cli/again:v1", config=docker_config)

    again = docker(daemon, "pull", f"{registry.host}/cli/again:v1", config=docker_config)

    assert "Status: Image is up to date" in again.stdout


def test_docker_pull_by_digest_and_platform(
    registry: Registry, daemon: Daemon, layout: Path, docker_config: Path
) -> None:
    index = build_index(
        layout,
        [
            PlatformSpec([LayerSpec(size=100, seed=93)], architecture="amd64"),
            PlatformSpec([LayerSpec(size=100, seed=94)], architecture="arm64", variant="v8"),
        ],
    )
    seed(registry, layout, "latest", "cli/multi:v1")

    docker(
        daemon,
        "pull",
        "--platform",
        "linux/arm64",
        f"{registry.host}/cli/multi@{index.digest}",
        config=docker_config,
    )

    inspected = json.loads(
        docker(
            daemon,
            "image",
            "inspect",
            f"{registry.host}/cli/multi@{index.digest}",
            config=docker_config,
        ).stdout
    )
    assert inspected[0]["Id"] == index.image("arm64", "v8").config_digest


def test_docker_pull_of_a_missing_tag_fails_with_the_reason(
    registry: Registry, daemon: Daemon, docker_config: Path
) -> None:
    result = docker(
        daemon, "pull", f"{registry.host}/cli/none:v9", config=docker_config, check=False
    )

    assert result.returncode != 0
    assert "not found" in result.stderr
    assert daemon.alive


def test_docker_inspect_of_an_unknown_image_fails(daemon: Daemon, docker_config: Path) -> None:
    result = docker(daemon, "image", "inspect", "nothing:here", config=docker_config, check=False)

    assert result.returncode != 0
    assert "No such image" in result.stderr


def test_docker_pull_sends_the_login_from_its_config(
    tls_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    docker_config: Path,
    ca: trustme.CA,
) -> None:
    daemon = start_daemon(insecure_registries=[])
    daemon.trust(tls_registry.host, ca)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (docker_config / "config.json").write_text(
        json.dumps({"auths": {tls_registry.host: {"auth": token}}})
    )
    built = build_image(layout, layers=[LayerSpec(size=1000, seed=95)])
    seed(tls_registry, layout, "latest", "cli/private:v1")

    docker(daemon, "pull", f"{tls_registry.host}/cli/private:v1", config=docker_config)

    inspected = json.loads(
        docker(
            daemon, "image", "inspect", f"{tls_registry.host}/cli/private:v1", config=docker_config
        ).stdout
    )
    assert inspected[0]["Id"] == built.config_digest


def test_docker_pull_all_tags(
    registry: Registry, daemon: Daemon, layout: Path, docker_config: Path
) -> None:
    build_image(layout / "one", layers=[LayerSpec(size=1000, seed=921)])
    build_image(layout / "two", layers=[LayerSpec(size=1000, seed=922)])
    seed(registry, layout / "one", "latest", "cli/every:a")
    seed(registry, layout / "two", "latest", "cli/every:b")
    repository = f"{registry.host}/cli/every"

    pulled = docker(daemon, "pull", "--all-tags", repository, config=docker_config)

    assert "a: Pulling from cli/every" in pulled.stdout
    assert "b: Pulling from cli/every" in pulled.stdout
    assert f"Status: Downloaded newer image for {repository}" in pulled.stdout
    listed = docker(daemon, "images", "--format", "{{.Tag}}", repository, config=docker_config)
    assert sorted(listed.stdout.split()) == ["a", "b"]
