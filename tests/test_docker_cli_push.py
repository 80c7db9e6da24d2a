"""docker tag, push and rmi against our socket (skipped where `docker` is not installed)."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from support.daemon import Daemon, errors
from support.digests import short
from support.docker_cli import docker
from support.images import BuiltImage, LayerSpec, build_image, registry_manifest, seed
from support.registry import PASSWORD, USER, Registry

pytestmark = [
    pytest.mark.registry,
    pytest.mark.docker_cli,
    pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed"),
]


def pulled(daemon: Daemon, registry: Registry, layout: Path, dest: str, seed_: int) -> BuiltImage:
    """A small two-layer image, seeded into `registry` as `dest` and pulled by the daemon."""
    built = build_image(
        layout, layers=[LayerSpec(size=30_000, seed=seed_), LayerSpec(size=500, seed=seed_ + 1)]
    )
    seed(registry, layout, "latest", dest)
    assert errors(daemon.pull(f"{registry.host}/{dest}")) == []
    return built


def test_docker_tag_push_and_rmi(
    registry: Registry,
    other_registry: Registry,
    daemon: Daemon,
    layout: Path,
    docker_config: Path,
) -> None:
    built = pulled(daemon, registry, layout, "clipush/src:v1", 500)
    source, target = f"{registry.host}/clipush/src:v1", f"{other_registry.host}/clipush/app:v1"

    docker(daemon, "tag", source, target, config=docker_config)
    pushed = docker(daemon, "push", target, config=docker_config)
    again = docker(daemon, "push", target, config=docker_config)
    untagged = docker(daemon, "rmi", target, config=docker_config)
    deleted = docker(daemon, "rmi", source, config=docker_config)

    lines = pushed.stdout.splitlines()
    assert f"The push refers to repository [{other_registry.host}/clipush/app]" in lines
    for diff_id in built.diff_ids:
        assert f"{short(diff_id)}: Pushed" in lines
        assert f"{short(diff_id)}: Layer already exists" in again.stdout.splitlines()
    assert f"v1: digest: {built.manifest_digest} size: {built.manifest_size}" in lines
    assert registry_manifest(other_registry, "clipush/app:v1")[0] == built.manifest
    assert f"Untagged: {target}" in untagged.stdout.splitlines()
    assert "Deleted:" not in untagged.stdout
    assert f"Untagged: {source}" in deleted.stdout.splitlines()
    assert f"Deleted: {built.config_digest}" in deleted.stdout.splitlines()
    assert daemon.images() == []
    assert daemon.blob_files() == []


def test_docker_tag_then_images_lists_the_new_tag(
    registry: Registry, daemon: Daemon, layout: Path, docker_config: Path
) -> None:
    built = pulled(daemon, registry, layout, "clipush/listed:v1", 502)

    docker(
        daemon,
        "tag",
        short(built.config_digest),
        "example.com/team/listed:v9",
        config=docker_config,
    )

    listed = docker(
        daemon, "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", config=docker_config
    )
    assert f"example.com/team/listed:v9 {short(built.config_digest)}" in listed.stdout.splitlines()


def test_docker_push_to_another_repository_of_the_registry_mounts(
    registry: Registry, daemon: Daemon, layout: Path, docker_config: Path
) -> None:
    built = pulled(daemon, registry, layout, "clipush/mountsrc:v1", 504)
    target = f"{registry.host}/clipush/mounted:v1"
    docker(daemon, "tag", f"{registry.host}/clipush/mountsrc:v1", target, config=docker_config)

    pushed = docker(daemon, "push", target, config=docker_config)

    for diff_id in built.diff_ids:
        assert f"{short(diff_id)}: Mounted from clipush/mountsrc" in pushed.stdout.splitlines()
    assert f"v1: digest: {built.manifest_digest}" in pushed.stdout


def test_docker_push_all_tags(
    registry: Registry,
    other_registry: Registry,
    daemon: Daemon,
    layout: Path,
    docker_config: Path,
) -> None:
    built = pulled(daemon, registry, layout, "clipush/alltags:v1", 506)
    repository = f"{other_registry.host}/clipush/alltags"
    for tag in ("one", "two"):
        docker(
            daemon,
            "tag",
            f"{registry.host}/clipush/alltags:v1",
            f"{repository}:{tag}",
            config=docker_config,
        )

    pushed = docker(daemon, "push", "--all-tags", repository, config=docker_config)

    for tag in ("one", "two"):
        assert f"{tag}: digest: {built.manifest_digest} size: {built.manifest_size}" in (
            pushed.stdout.splitlines()
        )
        assert registry_manifest(other_registry, f"clipush/alltags:{tag}")[0] == built.manifest


def test_docker_push_of_a_tag_that_does_not_exist_fails_with_the_reason(
    other_registry: Registry, daemon: Daemon, docker_config: Path
) -> None:
    result = docker(
        daemon, "push", f"{other_registry.host}/clipush/none:v1", config=docker_config, check=False
    )

    assert result.returncode != 0
    assert "does not exist locally" in result.stderr
    assert daemon.alive


def test_docker_rmi_by_id_of_an_image_in_two_repositories_needs_force(
    registry: Registry, daemon: Daemon, layout: Path, docker_config: Path
) -> None:
    built = pulled(daemon, registry, layout, "clipush/twice:v1", 508)
    docker(
        daemon, "tag", f"{registry.host}/clipush/twice:v1", "example.com/x:v1", config=docker_config
    )
    image_id = short(built.config_digest)

    refused = docker(daemon, "rmi", image_id, config=docker_config, check=False)
    forced = docker(daemon, "rmi", "-f", image_id, config=docker_config)

    assert refused.returncode != 0
    assert "must be forced" in refused.stderr
    assert "Untagged: example.com/x:v1" in forced.stdout.splitlines()
    assert f"Deleted: {built.config_digest}" in forced.stdout.splitlines()
    assert daemon.images() == []


def test_docker_rmi_of_an_unknown_image_fails(daemon: Daemon, docker_config: Path) -> None:
    result = docker(daemon, "rmi", "nothing/here:v1", config=docker_config, check=False)

    assert result.returncode != 0
    assert "No such image" in result.stderr


def test_docker_push_sends_the_login_from_its_config_to_a_tls_registry(
    registry: Registry,
    tls_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    docker_config: Path,
    ca: trustme.CA,
) -> None:
    daemon = start_daemon(insecure_registries=[registry.host])
    daemon.trust(tls_registry.host, ca)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (docker_config / "config.json").write_text(
        json.dumps({"auths": {tls_registry.host: {"auth": token}}})
    )
    built = pulled(daemon, registry, layout, "clipush/private:v1", 510)
    target = f"{tls_registry.host}/clipush/private:v1"
    docker(daemon, "tag", f"{registry.host}/clipush/private:v1", target, config=docker_config)

    pushed = docker(daemon, "push", target, config=docker_config)

    assert f"v1: digest: {built.manifest_digest} size: {built.manifest_size}" in pushed.stdout
    assert registry_manifest(tls_registry, "clipush/private:v1")[0] == built.manifest
