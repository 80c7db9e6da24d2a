"""`POST /images/prune` removes unused images as dockerd's ImagePrune (dangling only by
default; every image with dangling=false, as ferryd has no containers; `until`, `label`,
`label!`), with rmi's rules, events and garbage collection; `GET /system/df` reports
images, shared sizes and layer bytes. Through the API and docker-py."""

from __future__ import annotations

import json
from typing import Any

import docker
import httpx
import pytest

from support.daemon import Daemon
from support.inventory import Inventory
from support.inventory_fixtures import inventory_fixtures
from support.waiting import wait_until

pytestmark = pytest.mark.registry


inventory, stocked = inventory_fixtures("pruning")


def _request(
    daemon: Daemon, method: str, path: str, params: dict[str, Any] | None = None
) -> httpx.Response:
    with daemon.http(timeout=60) as client:
        return client.request(method, path, params=params)


def _prune(daemon: Daemon, filters: dict[str, Any] | None = None) -> dict[str, Any]:
    params = {"filters": json.dumps(filters)} if filters is not None else {}
    response = _request(daemon, "POST", "/images/prune", params)
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def _left(daemon: Daemon, inventory: Inventory) -> set[str]:
    by_id = {inventory.id(name): name for name in inventory.images}
    return {by_id[row["Id"]] for row in daemon.images()}


def test_prune_removes_only_untagged_images_by_default(
    stocked: Daemon, inventory: Inventory
) -> None:
    old = inventory.images["old"]

    report = _prune(stocked)

    assert report["ImagesDeleted"][0] == {
        "Untagged": f"{inventory.repository('old')}@{old.manifest_digest}"
    }
    assert {"Deleted": old.config_digest} in report["ImagesDeleted"]
    assert {"Deleted": old.diff_ids[0]} in report["ImagesDeleted"]  # its only layer
    assert report["SpaceReclaimed"] == old.layers[0].uncompressed_size
    assert _left(stocked, inventory) == {"red", "blue", "new"}
    assert not (stocked.root / "blobs" / "sha256" / old.layers[0].digest[7:]).exists()
    wait_until(
        lambda: (
            [e["event"] for e in stocked.log_events() if e["event"].startswith("image.")][-3:]
            == ["image.untag", "image.delete", "image.prune"]
        ),
        10,
        what="the untag and delete events of the pruned image, then the prune's",
    )


def test_a_second_prune_has_nothing_to_do(stocked: Daemon) -> None:
    _prune(stocked)

    assert _prune(stocked) == {"ImagesDeleted": None, "SpaceReclaimed": 0}


def test_prune_of_every_unused_image_keeps_nothing(stocked: Daemon, inventory: Inventory) -> None:
    report = _prune(stocked, {"dangling": ["false"]})

    assert _left(stocked, inventory) == set()
    untagged = {record["Untagged"] for record in report["ImagesDeleted"] if "Untagged" in record}
    assert f"{inventory.repository('new')}:latest" in untagged
    assert f"{inventory.repository('new')}:v1" in untagged
    every_layer = {
        layer.uncompressed_size for image in inventory.images.values() for layer in image.layers
    }
    assert report["SpaceReclaimed"] == sum(every_layer)
    assert not list((stocked.root / "blobs" / "sha256").iterdir())


@pytest.mark.parametrize(
    ("filters", "left"),
    [
        ({"dangling": ["false"], "label": ["team"]}, {"old", "new"}),
        ({"dangling": ["false"], "label": ["team=red"]}, {"old", "blue", "new"}),
        ({"dangling": ["false"], "label!": ["team"]}, {"red", "blue"}),
        ({"dangling": ["false"], "label!": ["team=red"]}, {"red"}),
        ({"dangling": ["false"], "until": ["2023-03-01T00:00:00Z"]}, {"blue", "new"}),
        ({"dangling": ["false"], "until": ["1h"]}, set()),
        ({"until": ["2021-01-01"]}, {"old", "red", "blue", "new"}),
    ],
)
def test_prune_filters_choose_what_goes(
    stocked: Daemon, inventory: Inventory, filters: dict[str, Any], left: set[str]
) -> None:
    _prune(stocked, filters)

    assert _left(stocked, inventory) == left


def test_layers_another_image_uses_stay(stocked: Daemon, inventory: Inventory) -> None:
    red = inventory.images["red"]

    report = _prune(stocked, {"dangling": ["false"], "label": ["team=red"]})

    assert report["SpaceReclaimed"] == red.layers[1].uncompressed_size  # not the shared base
    assert (stocked.root / "blobs" / "sha256" / red.layers[0].digest[7:]).exists()


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"reference": ["x"]}, "invalid filter 'reference'"),
        ({"dangling": ["perhaps"]}, "invalid filter 'dangling=[perhaps]'"),
        ({"until": ["1h", "2h"]}, "more than one until filter specified"),
        ({"until": ["soon"]}, "invalid value for 'until' filter"),
    ],
)
def test_bad_prune_filters_are_a_400(daemon: Daemon, filters: dict[str, Any], message: str) -> None:
    response = _request(daemon, "POST", "/images/prune", {"filters": json.dumps(filters)})

    assert response.status_code == 400
    assert message in response.json()["message"]


def test_disk_usage_reports_images_and_their_layers(stocked: Daemon, inventory: Inventory) -> None:
    usage = stocked.client().get_json("/system/df")

    assert usage["Containers"] == []
    assert usage["Volumes"] == []
    assert usage["BuildCache"] == []
    images = {row["Id"]: row for row in usage["Images"]}
    assert set(images) == {inventory.id(name) for name in inventory.images}
    base = inventory.images["red"].layers[0].uncompressed_size
    red = images[inventory.id("red")]
    assert red["SharedSize"] == base
    assert red["Size"] == sum(layer.uncompressed_size for layer in inventory.images["red"].layers)
    assert red["Containers"] == 0
    assert red["Labels"] == {"team": "red", "tier": "web"}
    assert red["RepoTags"] == [f"{inventory.repository('red')}:v1"]
    assert images[inventory.id("new")]["SharedSize"] == 0
    every_layer = {
        layer.diff_id: layer.uncompressed_size
        for image in inventory.images.values()
        for layer in image.layers
    }
    assert usage["LayersSize"] == sum(every_layer.values())


def test_disk_usage_by_type(stocked: Daemon) -> None:
    response = _request(stocked, "GET", "/system/df", {"type": ["volume", "build-cache"]})

    assert response.json() == {
        "LayersSize": 0,
        "Images": None,
        "Containers": None,
        "Volumes": [],
        "BuildCache": [],
    }
    assert len(stocked.client().get_json("/system/df", {"type": "image"})["Images"]) == 4


def test_disk_usage_of_an_unknown_type_is_a_400(daemon: Daemon) -> None:
    response = _request(daemon, "GET", "/system/df", {"type": "pets"})

    assert response.status_code == 400
    assert response.json()["message"] == "unknown object type: pets"


# -- docker-py ------------------------------------------------------------------------


def test_docker_py_prune_and_df(stocked: Daemon, inventory: Inventory) -> None:
    client = docker.DockerClient(base_url=f"unix://{stocked.socket}", timeout=60)
    try:
        dangling = client.images.prune()
        labelled = client.images.prune(filters={"dangling": False, "label": "team=blue"})
        usage = client.df()
    finally:
        client.close()

    assert {"Deleted": inventory.id("old")} in dangling["ImagesDeleted"]
    assert {"Deleted": inventory.id("blue")} in labelled["ImagesDeleted"]
    assert {image["Id"] for image in usage["Images"]} == {inventory.id("red"), inventory.id("new")}
    assert _left(stocked, inventory) == {"red", "new"}
