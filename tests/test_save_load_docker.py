"""docker save / docker load and docker-py's `Image.save()` / `images.load()` against the
daemon's socket (the docker CLI tests skip where `docker` is not installed)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors
import pytest

from support.archives import docker24_archive, pulled
from support.daemon import Daemon
from support.docker_cli import docker as docker_cli
from support.images import LayerSpec, build_image
from support.registry import Registry

needs_docker = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


@pytest.mark.docker_cli
@needs_docker
def test_docker_save_then_docker_load_into_another_daemon(
    registry: Registry,
    start_daemon: Callable[..., Daemon],
    tmp_path: Path,
    docker_config: Path,
) -> None:
    first, second = start_daemon(), start_daemon()
    built = pulled(
        first,
        registry,
        tmp_path / "layout",
        "dockersave/app:v1",
        layers=[LayerSpec(size=40_000, seed=7401), LayerSpec(size=900, seed=7402)],
        media="docker",
    )
    name = f"{registry.host}/dockersave/app:v1"
    archive = tmp_path / "app.tar"

    docker_cli(first, "save", "-o", str(archive), name, config=docker_config)
    loaded = docker_cli(second, "load", "-i", str(archive), config=docker_config)

    assert f"Loaded image: {name}" in loaded.stdout.splitlines()
    listed = docker_cli(
        second,
        "images",
        "--no-trunc",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.ID}}",
        config=docker_config,
    )
    assert f"{name} {built.config_digest}" in listed.stdout.splitlines()


@pytest.mark.docker_cli
@needs_docker
def test_docker_load_reads_an_archive_from_stdin_and_old_docker_archives(
    daemon: Daemon, tmp_path: Path, docker_config: Path
) -> None:
    layout = tmp_path / "layout"
    built = build_image(layout, layers=[LayerSpec(size=20_000, seed=7411)], media="docker")
    archive = docker24_archive(layout, built, ["team/older:v1"]).bytes()

    result = subprocess.run(
        ["docker", "-H", daemon.host, "load"],
        input=archive,
        capture_output=True,
        timeout=120,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "DOCKER_CONFIG": str(docker_config)},
    )

    assert result.returncode == 0, result.stderr
    assert b"Loaded image: team/older:v1" in result.stdout
    assert daemon.inspect("team/older:v1")["Id"] == built.config_digest


@pytest.mark.docker_cli
@needs_docker
def test_docker_load_of_a_broken_archive_fails_with_the_daemons_reason(
    daemon: Daemon, tmp_path: Path, docker_config: Path
) -> None:
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"this is no archive" * 100)

    result = docker_cli(daemon, "load", "-i", str(broken), config=docker_config, check=False)

    assert result.returncode != 0
    assert "not a tar archive" in result.stderr


def test_docker_py_saves_an_image_and_loads_it_into_another_daemon(
    registry: Registry, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    first, second = start_daemon(), start_daemon()
    built = pulled(
        first,
        registry,
        tmp_path / "layout",
        "dockerpy/app:v1",
        layers=[LayerSpec(size=40_000, seed=7421), LayerSpec(size=900, seed=7422)],
        media="docker",
    )
    name = f"{registry.host}/dockerpy/app:v1"

    client = docker.DockerClient(base_url=first.host, timeout=60)
    try:
        image = client.images.get(name)
        by_id = b"".join(image.save())
        by_name = b"".join(image.save(named=True))
    finally:
        client.close()
    client = docker.DockerClient(base_url=second.host, timeout=60)
    try:
        [untagged] = client.images.load(by_id)
        [tagged] = client.images.load(by_name)
    finally:
        client.close()

    assert untagged.id == tagged.id == built.config_digest
    assert tagged.tags == [name]


def test_docker_py_load_raises_the_daemons_reason_for_a_broken_archive(daemon: Daemon) -> None:
    client = docker.DockerClient(base_url=daemon.host, timeout=60)
    try:
        with pytest.raises(docker.errors.APIError, match="not a tar archive"):
            client.images.load(b"garbage" * 1000)
    finally:
        client.close()
