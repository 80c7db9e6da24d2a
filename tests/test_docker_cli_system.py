"""The docker CLI's system commands against ferryd: version, info, events."""

from __future__ import annotations

import json
import select
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ferryd import __version__
from support.daemon import Daemon, errors, now
from support.docker_cli import docker, needs_docker
from support.images import seeded
from support.registry import Registry
from support.waiting import wait_until

pytestmark = [pytest.mark.docker_cli, needs_docker]


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_docker_version_shows_ferryd_as_the_server_engine(
    daemon: Daemon, docker_config: Path
) -> None:
    done = docker(daemon, "version", config=docker_config)
    server = json.loads(
        docker(daemon, "version", "--format", "{{json .Server}}", config=docker_config).stdout
    )

    assert "Server: ferryd" in done.stdout
    engine = done.stdout.split("Server: ferryd", 1)[1]
    assert f"  Version:          {__version__}\n" in engine
    assert "API version:      1.47 (minimum version 1.24)" in engine
    assert server["Version"] == __version__
    assert [c["Name"] for c in server["Components"]] == ["Engine"]
    assert server["Components"][0]["Version"] == __version__


def test_docker_info_shows_the_image_count_and_the_store(
    registry: Registry, daemon: Daemon, layout: Path, docker_config: Path
) -> None:
    assert errors(daemon.pull(seeded(registry, layout, "dinfo/app", 901))) == []

    done = docker(daemon, "info", config=docker_config)

    assert done.returncode == 0
    assert " Images: 1\n" in done.stdout
    assert f" Docker Root Dir: {daemon.root}\n" in done.stdout
    assert f" Server Version: {__version__}\n" in done.stdout
    assert " Storage Driver: ferryd\n" in done.stdout
    assert " Containers: 0\n" in done.stdout


def test_docker_info_lists_insecure_registries_given_as_hosts_and_networks(
    start_daemon: Callable[..., Daemon], docker_config: Path
) -> None:
    daemon = start_daemon(insecure_registries=["10.0.0.0/8", "registry.lan:5000"])

    done = docker(daemon, "info", config=docker_config)

    insecure = done.stdout.split(" Insecure Registries:\n", 1)[1].splitlines()
    assert {"  registry.lan:5000", "  10.0.0.0/8"} <= set(insecure)


def test_docker_events_replays_a_pull_and_a_tag_in_order(
    registry: Registry, daemon: Daemon, layout: Path, docker_config: Path
) -> None:
    reference = seeded(registry, layout, "devents/app", 902)
    docker(daemon, "pull", reference, config=docker_config)
    docker(daemon, "tag", reference, f"{registry.host}/devents/app:v2", config=docker_config)
    image_id = daemon.inspect(reference)["Id"]

    done = docker(
        daemon,
        "events",
        "--since",
        "0",
        "--until",
        now(),
        "--format",
        "{{json .}}",
        config=docker_config,
    )

    events = _json_lines(done.stdout)
    assert [(e["Type"], e["Action"], e["Actor"]["ID"]) for e in events] == [
        ("image", "pull", reference),
        ("image", "tag", image_id),
    ]
    assert events[0]["Actor"]["Attributes"]["name"] == f"{registry.host}/devents/app"
    assert events[1]["Actor"]["Attributes"]["name"] == f"{registry.host}/devents/app:v2"


def test_docker_events_with_a_filter_shows_only_what_it_matches(
    registry: Registry, daemon: Daemon, layout: Path, docker_config: Path
) -> None:
    reference = seeded(registry, layout, "dfilter/app", 903)
    docker(daemon, "pull", reference, config=docker_config)
    docker(daemon, "tag", reference, f"{registry.host}/dfilter/app:v2", config=docker_config)

    done = docker(
        daemon,
        "events",
        "--since",
        "0",
        "--until",
        now(),
        "--filter",
        "event=tag",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}}",
        config=docker_config,
    )

    assert done.stdout.splitlines() == [f"tag {registry.host}/dfilter/app:v2"]


def test_docker_events_with_an_unknown_filter_fails_naming_it(
    daemon: Daemon, docker_config: Path
) -> None:
    done = docker(
        daemon,
        "events",
        "--since",
        "0",
        "--until",
        now(),
        "--filter",
        "colour=red",
        config=docker_config,
        check=False,
    )

    assert done.returncode != 0
    assert "Error response from daemon: invalid filter 'colour'" in done.stderr


def test_a_live_docker_events_sees_a_pull_as_it_happens(
    registry: Registry, daemon: Daemon, layout: Path, docker_config: Path
) -> None:
    reference = seeded(registry, layout, "dlive/app", 904)
    watcher = subprocess.Popen(
        ["docker", "-H", daemon.host, "events", "--format", "{{.Action}} {{.Actor.ID}}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "DOCKER_CONFIG": str(docker_config),
            "HOME": str(docker_config),
        },
    )

    def watching() -> bool:
        assert watcher.poll() is None, watcher.communicate()
        return bool(daemon.client().get_json("/info")["NEventsListener"] == 1)

    try:
        wait_until(watching, 20, what="docker events to start watching")
        assert errors(daemon.pull(reference)) == []
        assert watcher.stdout is not None
        ready, _, _ = select.select([watcher.stdout], [], [], 30)
        assert ready, "docker events printed nothing for the pull"
        line = watcher.stdout.readline()
    finally:
        watcher.kill()
        watcher.communicate()

    assert line == f"pull {reference}\n"
