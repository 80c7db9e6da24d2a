"""The docker CLI's everyday image commands against ferryd: `docker images` with filters
and a repository, `docker rmi $(docker images -qf dangling=true)` (which once deleted
tagged images: the filter was ignored), `docker image prune`, `docker system df`,
`docker image history`, and `docker run` told plainly that ferryd runs no containers.
Skipped where `docker` is not installed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from support.daemon import Daemon
from support.docker_cli import docker
from support.inventory import Inventory
from support.inventory_fixtures import inventory_fixtures

pytestmark = [
    pytest.mark.registry,
    pytest.mark.docker_cli,
    pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed"),
]

ROW = "{{.Repository}} {{.Tag}} {{.ID}}"


inventory, stocked = inventory_fixtures("dockercli")


def short(image_id: str) -> str:
    return image_id[7:19]


def test_docker_images_dangling_lists_only_the_untagged_image(
    stocked: Daemon, inventory: Inventory, docker_config: Path
) -> None:
    listed = docker(stocked, "images", "-f", "dangling=true", "--format", ROW, config=docker_config)

    assert listed.stdout.splitlines() == [
        f"{inventory.repository('old')} <none> {short(inventory.id('old'))}"
    ]


def test_docker_images_of_a_repository_lists_only_it(
    stocked: Daemon, inventory: Inventory, docker_config: Path
) -> None:
    repository = inventory.repository("new")

    listed = docker(stocked, "images", repository, "--format", ROW, config=docker_config)
    tagged = docker(stocked, "images", f"{repository}:v1", "--format", ROW, config=docker_config)

    assert sorted(listed.stdout.splitlines()) == [
        f"{repository} latest {short(inventory.id('new'))}",
        f"{repository} v1 {short(inventory.id('new'))}",
    ]
    assert tagged.stdout.splitlines() == [f"{repository} v1 {short(inventory.id('new'))}"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["label=team"], ["blue", "red"]),
        (["label=team=red"], ["red"]),
        (["until=2023-03-01T00:00:00Z"], ["red", "old"]),
        (["reference=*/dockercli/[nr]*"], ["new", "red"]),
    ],
)
def test_docker_images_filters(
    stocked: Daemon,
    inventory: Inventory,
    docker_config: Path,
    filters: list[str],
    expected: list[str],
) -> None:
    args = [arg for value in filters for arg in ("-f", value)]

    listed = docker(stocked, "images", "-q", "--no-trunc", *args, config=docker_config)

    assert list(dict.fromkeys(listed.stdout.split())) == [inventory.id(n) for n in expected]


def test_docker_images_before_and_since(
    stocked: Daemon, inventory: Inventory, docker_config: Path
) -> None:
    blue = f"{inventory.repository('blue')}:v1"

    before = docker(
        stocked, "images", "-q", "--no-trunc", "-f", f"before={blue}", config=docker_config
    )
    since = docker(
        stocked, "images", "-q", "--no-trunc", "-f", f"since={blue}", config=docker_config
    )

    assert before.stdout.split() == [inventory.id("red"), inventory.id("old")]
    assert list(dict.fromkeys(since.stdout.split())) == [inventory.id("new")]


def test_docker_images_with_an_unknown_filter_fails(daemon: Daemon, docker_config: Path) -> None:
    listed = docker(daemon, "images", "-f", "colour=red", config=docker_config, check=False)

    assert listed.returncode != 0
    assert "invalid filter 'colour'" in listed.stderr


def test_docker_rmi_of_the_dangling_images_keeps_every_tagged_image(
    stocked: Daemon, inventory: Inventory, docker_config: Path
) -> None:
    dangling = docker(
        stocked, "images", "-qf", "dangling=true", config=docker_config
    ).stdout.split()

    docker(stocked, "rmi", *dangling, config=docker_config)

    assert dangling == [short(inventory.id("old"))]
    left = docker(stocked, "images", "-q", "--no-trunc", config=docker_config).stdout.split()
    assert set(left) == {inventory.id("new"), inventory.id("blue"), inventory.id("red")}


def test_docker_image_prune(stocked: Daemon, inventory: Inventory, docker_config: Path) -> None:
    pruned = docker(stocked, "image", "prune", "-f", config=docker_config)

    lines = pruned.stdout.splitlines()
    assert lines[0] == "Deleted Images:"
    assert f"deleted: {inventory.id('old')}" in lines
    assert lines[-1].startswith("Total reclaimed space: ")
    assert lines[-1] != "Total reclaimed space: 0B"
    left = docker(stocked, "images", "-q", "--no-trunc", config=docker_config).stdout.split()
    assert set(left) == {inventory.id("new"), inventory.id("blue"), inventory.id("red")}


def test_docker_image_prune_all_with_a_label_filter(
    stocked: Daemon, inventory: Inventory, docker_config: Path
) -> None:
    docker(
        stocked, "image", "prune", "-a", "-f", "--filter", "label=team=blue", config=docker_config
    )

    left = docker(stocked, "images", "-q", "--no-trunc", config=docker_config).stdout.split()
    assert inventory.id("blue") not in left
    assert len(set(left)) == 3


def test_docker_system_df(stocked: Daemon, docker_config: Path) -> None:
    shown = docker(stocked, "system", "df", config=docker_config)

    rows = {
        cells[0]: cells[1:]
        for cells in (re.split(r" {2,}", line.strip()) for line in shown.stdout.splitlines()[1:])
    }
    assert rows["Images"][:2] == ["4", "0"]
    assert rows["Images"][-1].endswith("(100%)")
    assert rows["Containers"][:2] == ["0", "0"]
    assert rows["Local Volumes"][:2] == ["0", "0"]
    assert rows["Build Cache"][:2] == ["0", "0"]


def test_docker_system_df_verbose_lists_the_images(
    stocked: Daemon, inventory: Inventory, docker_config: Path
) -> None:
    shown = docker(stocked, "system", "df", "-v", config=docker_config)

    assert "Images space usage:" in shown.stdout
    assert short(inventory.id("red")) in shown.stdout


def test_docker_image_history(stocked: Daemon, inventory: Inventory, docker_config: Path) -> None:
    shown = docker(
        stocked,
        "image",
        "history",
        "--format",
        "{{.ID}} {{.CreatedBy}}",
        f"{inventory.repository('red')}:v1",
        config=docker_config,
    )

    assert shown.stdout.splitlines() == [
        f"{short(inventory.id('red'))} layer 1",
        "<missing> layer 0",
    ]


def test_docker_run_fails_saying_ferryd_runs_no_containers(
    daemon: Daemon, docker_config: Path
) -> None:
    ran = docker(daemon, "run", "--rm", "alpine", "true", config=docker_config, check=False)

    assert ran.returncode != 0
    assert "ferryd manages images only: running containers is not supported" in ran.stderr
