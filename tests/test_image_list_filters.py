"""`GET /images/json` honours its filters as dockerd does, through the API and docker-py
(`docker images -f …` and `docker images REPO` send these; ignoring them once made
`docker rmi $(docker images -qf dangling=true)` delete tagged images)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest

from support.daemon import Daemon
from support.inventory import Inventory
from support.inventory_fixtures import inventory_fixtures

pytestmark = pytest.mark.registry


inventory, stocked = inventory_fixtures("listing")


def _get(daemon: Daemon, path: str, params: dict[str, str] | None = None) -> httpx.Response:
    with daemon.http(timeout=60) as client:
        return client.get(path, params=params)


def _listed(daemon: Daemon, filters: dict[str, Any] | None = None, **params: str) -> list[Any]:
    if filters is not None:
        params["filters"] = json.dumps(filters)
    response = _get(daemon, "/images/json", params)
    assert response.status_code == 200, response.text
    rows: list[Any] = response.json()
    return rows


def _names(inventory: Inventory, rows: list[dict[str, Any]]) -> list[str]:
    by_id = {inventory.id(name): name for name in inventory.images}
    return [by_id[row["Id"]] for row in rows]


def test_without_filters_every_image_is_listed_newest_first(
    stocked: Daemon, inventory: Inventory
) -> None:
    rows = _listed(stocked)

    assert _names(inventory, rows) == ["new", "blue", "red", "old"]
    new = rows[0]
    assert sorted(new["RepoTags"]) == [
        f"{inventory.repository('new')}:latest",
        f"{inventory.repository('new')}:v1",
    ]


def test_an_image_pulled_by_digest_lists_digests_and_no_tags(
    stocked: Daemon, inventory: Inventory
) -> None:
    old = next(row for row in _listed(stocked) if row["Id"] == inventory.id("old"))

    assert old["RepoTags"] == []
    assert old["RepoDigests"] == [
        f"{inventory.repository('old')}@{inventory.images['old'].manifest_digest}"
    ]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"dangling": ["true"]}, ["old"]),
        ({"dangling": {"true": True}}, ["old"]),  # the older JSON form
        ({"dangling": ["1"]}, ["old"]),
        # As dockerd: false leaves out only images nothing names; one pulled by digest
        # stays.
        ({"dangling": ["false"]}, ["new", "blue", "red", "old"]),
    ],
    ids=["true", "legacy-form", "one", "false"],
)
def test_dangling_true_lists_only_images_without_a_tag(
    stocked: Daemon, inventory: Inventory, filters: dict[str, Any], expected: list[str]
) -> None:
    assert _names(inventory, _listed(stocked, filters)) == expected


def test_a_reference_filter_lists_only_the_names_that_match(
    stocked: Daemon, inventory: Inventory
) -> None:
    repository = inventory.repository("new")
    tag = stocked.client().request(
        "POST", f"/images/{repository}:v1/tag", {"repo": inventory.repository("copy"), "tag": "x"}
    )
    tag.read()

    rows = _listed(stocked, {"reference": [f"{repository}:v1"]})

    assert _names(inventory, rows) == ["new"]
    assert rows[0]["RepoTags"] == [f"{repository}:v1"]  # not :latest, not copy:x
    assert rows[0]["RepoDigests"] == []


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("{host}/listing/red", ["red"]),  # the repository: every tag of it
        ("{host}/listing/red:v1", ["red"]),
        ("{host}/listing/*", ["new", "blue", "red", "old"]),  # digests match by repository
        ("{host}/listing/[br]*:v1", ["blue", "red"]),
        ("{host}/listing/n?w:latest", ["new"]),
        ("*/listing/red", ["red"]),  # * takes the host (no /)
        ("listing/*", []),  # a glob must match the whole name
        ("{host}/*", []),  # * does not cross a /
        ("{host}/listing/red:v9", []),
    ],
)
def test_reference_filters_are_globs_on_the_familiar_name_and_tag(
    stocked: Daemon, inventory: Inventory, pattern: str, expected: list[str]
) -> None:
    rows = _listed(stocked, {"reference": [pattern.format(host=inventory.registry.host)]})

    assert _names(inventory, rows) == expected


def test_several_reference_patterns_list_what_any_matches(
    stocked: Daemon, inventory: Inventory
) -> None:
    patterns = [inventory.repository("red"), inventory.repository("old")]

    assert _names(inventory, _listed(stocked, {"reference": patterns})) == ["red", "old"]


def test_before_and_since_compare_with_the_images_they_name(
    stocked: Daemon, inventory: Inventory
) -> None:
    blue = f"{inventory.repository('blue')}:v1"

    assert _names(inventory, _listed(stocked, {"before": [blue]})) == ["red", "old"]
    assert _names(inventory, _listed(stocked, {"since": [blue]})) == ["new"]
    assert _names(inventory, _listed(stocked, {"since": [inventory.id("old")[7:19]]})) == [
        "new",
        "blue",
        "red",
    ]
    both = {"since": [inventory.id("old")], "before": [blue]}
    assert _names(inventory, _listed(stocked, both)) == ["red"]


@pytest.mark.parametrize(
    ("until", "expected"),
    [
        ("2023-03-01", ["red", "old"]),
        ("2023-03-01T00:00:00Z", ["red", "old"]),
        ("1672531200", ["old"]),  # 2023-01-01
        ("1h", ["new", "blue", "red", "old"]),  # an hour ago
        ("-1h", ["new", "blue", "red", "old"]),
    ],
)
def test_until_takes_times_and_durations(
    stocked: Daemon, inventory: Inventory, until: str, expected: list[str]
) -> None:
    assert _names(inventory, _listed(stocked, {"until": [until]})) == expected


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["team"], ["blue", "red"]),
        (["team=red"], ["red"]),
        (["team", "tier=web"], ["red"]),
        (["team=green"], []),
    ],
)
def test_label_filters_need_every_key_or_key_value(
    stocked: Daemon, inventory: Inventory, labels: list[str], expected: list[str]
) -> None:
    assert _names(inventory, _listed(stocked, {"label": labels})) == expected


def test_filters_combine(stocked: Daemon, inventory: Inventory) -> None:
    filters = {"label": ["team"], "reference": [f"{inventory.registry.host}/listing/*"]}

    assert _names(inventory, _listed(stocked, {**filters, "since": [inventory.id("red")]})) == [
        "blue"
    ]


def test_all_and_shared_size_are_taken(stocked: Daemon, inventory: Inventory) -> None:
    rows = {row["Id"]: row for row in _listed(stocked, **{"all": "1", "shared-size": "1"})}

    base = inventory.images["red"].layers[0].uncompressed_size
    assert rows[inventory.id("red")]["SharedSize"] == base
    assert rows[inventory.id("blue")]["SharedSize"] == base
    assert rows[inventory.id("new")]["SharedSize"] == 0
    assert len(rows) == 4


@pytest.mark.parametrize(
    ("filters", "status", "message"),
    [
        ({"colour": ["red"]}, 400, "invalid filter 'colour'"),
        ({"label!": ["team"]}, 400, "invalid filter 'label!'"),
        ({"dangling": ["maybe"]}, 400, "invalid filter 'dangling=[maybe]'"),
        ({"until": ["yesterday"]}, 400, "invalid value for 'until' filter"),
        ({"reference": ["team/[a"]}, 400, "syntax error in pattern"),
        ({"before": ["nothing:here"]}, 404, "No such image: nothing:here"),
    ],
)
def test_unknown_filters_and_bad_values_are_refused_as_dockerd_refuses_them(
    daemon: Daemon, filters: dict[str, Any], status: int, message: str
) -> None:
    response = _get(daemon, "/images/json", {"filters": json.dumps(filters)})

    assert response.status_code == status
    assert message in response.json()["message"]


def test_filters_that_are_not_json_are_refused(daemon: Daemon) -> None:
    response = _get(daemon, "/images/json", {"filters": "dangling=true"})

    assert response.status_code == 400
    assert "invalid filter" in response.json()["message"]


# -- docker-py ------------------------------------------------------------------------


@pytest.fixture
def client(stocked: Daemon) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=f"unix://{stocked.socket}", timeout=60)
    yield client
    client.close()


def test_docker_py_lists_by_name_and_filters(
    client: docker.DockerClient, inventory: Inventory
) -> None:
    by_name = client.images.list(name=inventory.repository("red"))
    dangling = client.images.list(filters={"dangling": True})
    labelled = client.images.list(
        name=f"{inventory.registry.host}/listing/*", filters={"label": "team"}
    )

    assert [image.id for image in by_name] == [inventory.id("red")]
    assert [image.id for image in dangling] == [inventory.id("old")]
    assert sorted(image.id for image in labelled) == sorted(
        [inventory.id("red"), inventory.id("blue")]
    )


def test_docker_py_quiet_dangling_list_is_only_untagged_ids(
    client: docker.DockerClient, inventory: Inventory
) -> None:
    ids = client.api.images(quiet=True, filters={"dangling": True})

    assert ids == [inventory.id("old")]
