"""More of dockerd's answers, as the docker CLI and older clients read them: RFC 3339
creation times with offsets and fractions, an image without `created`, the fields
older API versions get, versions below the minimum, the empty prunes `docker system
prune` asks before the image prune, and the `prune` event every image prune logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferryd.daemon.api.shapes import _created
from support.daemon import Daemon, errors, now
from support.docker_cli import docker, needs_docker
from support.images import LayerSpec, build_image, seed, seeded
from support.registry import Registry

# 2023-05-05T08:00:00.12345Z, as Go writes it with its offset and nine fraction digits.
WITH_OFFSET = "2023-05-05T10:00:00.123450000+02:00"
WITH_OFFSET_UNIX = 1683273600


def _request(
    daemon: Daemon, method: str, path: str, params: dict[str, Any] | None = None
) -> httpx.Response:
    with daemon.http(timeout=60) as client:
        return client.request(method, path, params=params)


def _json(daemon: Daemon, method: str, path: str, **params: Any) -> Any:
    response = _request(daemon, method, path, params)
    assert response.status_code == 200, response.text
    return response.json()


def _listed_ids(daemon: Daemon, filters: dict[str, list[str]]) -> list[str]:
    rows = _json(daemon, "GET", "/images/json", filters=json.dumps(filters))
    return [row["Id"] for row in rows]


def _pulled(
    daemon: Daemon,
    registry: Registry,
    layout: Path,
    repository: str,
    seed_number: int,
    **config: Any,
) -> tuple[str, str]:
    """An image of its own with `config` over the built config, pulled by tag: its
    reference and ID."""
    build_image(layout, layers=[LayerSpec(size=500, seed=seed_number)], config_extra=config)
    seed(registry, layout, "latest", f"{repository}:1")
    reference = f"{registry.host}/{repository}:1"
    assert errors(daemon.pull(reference)) == []
    return reference, daemon.inspect(reference)["Id"]


# -- creation times ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (WITH_OFFSET, WITH_OFFSET_UNIX + 0.12345),
        ("2023-05-05T10:00:00.12345+02:00", WITH_OFFSET_UNIX + 0.12345),
        ("2023-05-05T10:00:00+02:00", WITH_OFFSET_UNIX),
        ("2023-05-05T08:00:00.999999999Z", WITH_OFFSET_UNIX + 0.999999),
        ("2023-05-05T08:00:00Z", WITH_OFFSET_UNIX),
        ("2023-05-05T06:30:00.5-01:30", WITH_OFFSET_UNIX + 0.5),
    ],
)
def test_rfc3339_creation_times_keep_their_offset_whatever_their_fraction(
    value: str, expected: float
) -> None:
    assert _created(value) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("value", [None, "", "yesterday", "2023-05-05T08:00:00"])
def test_a_creation_time_absent_or_without_a_zone_is_no_time(value: str | None) -> None:
    # Go cannot read a time without a zone either; the host's zone is no answer.
    assert _created(value) is None


def test_an_offset_and_fraction_created_time_is_listed_filtered_and_in_history_as_its_instant(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    history = [{"created": WITH_OFFSET, "created_by": "the only step"}]
    _reference, image_id = _pulled(
        daemon, registry, layout, "compat/frac", 9301, created=WITH_OFFSET, history=history
    )

    rows = _json(daemon, "GET", "/images/json")
    steps = _json(daemon, "GET", f"/images/{image_id}/history")

    assert [row["Created"] for row in rows if row["Id"] == image_id] == [WITH_OFFSET_UNIX]
    assert steps[0]["Created"] == WITH_OFFSET_UNIX
    assert _listed_ids(daemon, {"until": ["2023-05-05T09:30:00Z"]}) == [image_id]
    assert _listed_ids(daemon, {"until": ["2023-05-05T07:59:00Z"]}) == []


def test_an_until_prune_takes_an_offset_created_image_by_its_instant(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    _reference, image_id = _pulled(
        daemon, registry, layout, "compat/fracprune", 9302, created=WITH_OFFSET
    )

    kept = _json(
        daemon,
        "POST",
        "/images/prune",
        filters=json.dumps({"dangling": ["false"], "until": ["2023-05-05T07:59:00Z"]}),
    )
    pruned = _json(
        daemon,
        "POST",
        "/images/prune",
        filters=json.dumps({"dangling": ["false"], "until": ["2023-05-05T08:01:00Z"]}),
    )

    assert kept["ImagesDeleted"] is None
    assert {"Deleted": image_id} in pruned["ImagesDeleted"]


def test_an_image_without_created_is_listed_as_created_at_zero_and_no_time_filter_takes_it(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    # As dockerd's image store (moby v28 image_list.go, image_prune.go): Created 0, left
    # out by `before`, `until` and `since`, no bound when named by them, never pruned
    # by `until`.
    _reference, bare = _pulled(
        daemon, registry, layout, "compat/nocreated", 9303, created=None, history=None
    )
    _reference, dated = _pulled(
        daemon, registry, layout, "compat/dated", 9304, created="2020-01-01T00:00:00Z"
    )

    rows = {row["Id"]: row for row in _json(daemon, "GET", "/images/json")}
    until_now = _listed_ids(daemon, {"until": [now()]})
    since_bare = _listed_ids(daemon, {"since": [bare]})
    before_bare = _listed_ids(daemon, {"before": [bare]})
    pruned = _json(
        daemon,
        "POST",
        "/images/prune",
        filters=json.dumps({"dangling": ["false"], "until": [now()]}),
    )

    assert rows[bare]["Created"] == 0
    assert daemon.inspect(bare)["Created"] == "0001-01-01T00:00:00Z"
    assert until_now == [dated]
    assert set(since_bare) == set(before_bare) == {bare, dated}
    assert {"Deleted": dated} in pruned["ImagesDeleted"]
    assert [row["Id"] for row in daemon.images()] == [bare]


# -- older API versions ------------------------------------------------------------------


def test_inspect_for_older_api_versions_has_the_fields_dockerd_still_writes_for_them(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = seeded(registry, layout, "compat/old", 9305)
    assert errors(daemon.pull(reference)) == []

    by_version = {
        v: _json(daemon, "GET", f"/v{v}/images/{reference}/json")
        for v in ("1.41", "1.44", "1.45", "1.47")
    }
    unversioned = _json(daemon, "GET", f"/images/{reference}/json")

    old = by_version["1.41"]
    assert old["VirtualSize"] == old["Size"] > 0
    assert old["Container"] == ""
    assert old["ContainerConfig"]["Env"] is None
    assert old["ContainerConfig"]["Hostname"] == ""
    assert "VirtualSize" not in by_version["1.44"]
    assert by_version["1.44"]["ContainerConfig"] == old["ContainerConfig"]
    for newer in (by_version["1.45"], by_version["1.47"], unversioned):
        assert not {"VirtualSize", "Container", "ContainerConfig"} & newer.keys()


@pytest.mark.parametrize("version", ["1.23", "1.12", "0.99"])
def test_a_version_below_the_minimum_is_refused_with_dockerds_message(
    daemon: Daemon, version: str
) -> None:
    response = _request(daemon, "GET", f"/v{version}/images/json")

    assert response.status_code == 400
    assert response.json() == {
        "message": f"client version {version} is too old. Minimum supported API version is "
        "1.24, please upgrade your client to a newer version"
    }


def test_the_minimum_version_itself_is_served(daemon: Daemon) -> None:
    assert _json(daemon, "GET", "/v1.24/images/json") == []


# -- the prunes of what ferryd has none of ------------------------------------------------


@pytest.mark.parametrize(
    ("path", "filters", "report"),
    [
        (
            "/containers/prune",
            {"until": ["24h"], "label": ["a=b"]},
            {"ContainersDeleted": None, "SpaceReclaimed": 0},
        ),
        ("/networks/prune", {"until": ["24h"], "label!": ["a"]}, {"NetworksDeleted": None}),
        (
            "/volumes/prune",
            {"all": ["true"], "label": ["a"]},
            {"VolumesDeleted": [], "SpaceReclaimed": 0},
        ),
        ("/build/prune", {"until": ["24h"]}, {"CachesDeleted": None, "SpaceReclaimed": 0}),
    ],
)
def test_prunes_of_what_ferryd_has_none_of_answer_dockerds_empty_reports(
    daemon: Daemon, path: str, filters: dict[str, list[str]], report: dict[str, Any]
) -> None:
    assert _json(daemon, "POST", f"/v1.47{path}") == report
    assert _json(daemon, "POST", path, filters=json.dumps(filters)) == report


@pytest.mark.parametrize(
    ("path", "filters", "message"),
    [
        ("/containers/prune", {"dangling": ["true"]}, "invalid filter 'dangling'"),
        ("/networks/prune", {"until": ["1", "2"]}, "more than one until filter specified"),
        ("/volumes/prune", {"until": ["24h"]}, "invalid filter 'until'"),
        ("/build/prune", {"colour": ["red"]}, "invalid filter 'colour'"),
    ],
)
def test_empty_prunes_refuse_the_filters_dockerd_refuses(
    daemon: Daemon, path: str, filters: dict[str, list[str]], message: str
) -> None:
    response = _request(daemon, "POST", path, {"filters": json.dumps(filters)})

    assert response.status_code == 400
    assert response.json() == {"message": message}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/containers/prune"),
        ("POST", "/containers/create"),
        ("GET", "/networks"),
        ("DELETE", "/volumes/prune"),
    ],
)
def test_other_container_network_and_volume_routes_are_still_not_supported(
    daemon: Daemon, method: str, path: str
) -> None:
    assert _request(daemon, method, path).status_code == 501


# -- the prune event ---------------------------------------------------------------------


def test_every_image_prune_logs_a_prune_event_with_the_bytes_it_freed(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = seeded(registry, layout, "compat/pruned", 9306)
    assert errors(daemon.pull(reference)) == []

    freed = _json(daemon, "POST", "/images/prune", filters=json.dumps({"dangling": ["false"]}))
    nothing = _json(daemon, "POST", "/images/prune")
    events = list(
        daemon.client().stream(
            "GET",
            "/events",
            {"since": "0", "until": now(), "filters": json.dumps({"event": ["prune"]})},
        )
    )

    assert freed["SpaceReclaimed"] > 0
    assert [(e["Type"], e["Action"], e["Actor"]) for e in events] == [
        ("image", "prune", {"ID": "", "Attributes": {"reclaimed": str(freed["SpaceReclaimed"])}}),
        ("image", "prune", {"ID": "", "Attributes": {"reclaimed": str(nothing["SpaceReclaimed"])}}),
    ]
    assert all(e["status"] == "prune" and "id" not in e for e in events)
    assert [e["reclaimed"] for e in daemon.log_events("image.prune")] == [
        freed["SpaceReclaimed"],
        0,
    ]


# -- the docker CLI ----------------------------------------------------------------------


@pytest.mark.docker_cli
@needs_docker
def test_docker_system_prune_removes_dangling_images_and_with_all_every_image(
    registry: Registry, daemon: Daemon, layout: Path, docker_config: Path
) -> None:
    # Its first steps (containers, networks, with --volumes volumes) used to be 501s.
    tagged = seeded(registry, layout, "compat/sysprune", 9307)
    build_image(layout, layers=[LayerSpec(size=500, seed=9308)], tag="other")
    digest = seed(registry, layout, "other", "compat/sysdangling:v1")
    docker(daemon, "pull", tagged, config=docker_config)
    docker(daemon, "pull", f"{registry.host}/compat/sysdangling@{digest}", config=docker_config)
    tagged_id = daemon.inspect(tagged)["Id"]

    dangling = docker(daemon, "system", "prune", "-f", config=docker_config, check=False)
    left = docker(daemon, "images", "-q", "--no-trunc", config=docker_config).stdout.split()
    volumes = docker(
        daemon, "system", "prune", "-f", "--volumes", config=docker_config, check=False
    )
    everything = docker(daemon, "system", "prune", "-a", "-f", config=docker_config, check=False)
    left_at_last = docker(daemon, "images", "-q", config=docker_config).stdout.split()

    assert dangling.returncode == 0, dangling.stderr
    assert f"untagged: {registry.host}/compat/sysdangling@{digest}" in dangling.stdout
    assert "Total reclaimed space:" in dangling.stdout
    assert left == [tagged_id]
    assert volumes.returncode == 0, volumes.stderr
    assert everything.returncode == 0, everything.stderr
    assert f"untagged: {tagged}" in everything.stdout
    assert left_at_last == []


@pytest.mark.docker_cli
@needs_docker
def test_docker_events_sees_the_prune_event_of_an_image_prune(
    daemon: Daemon, docker_config: Path
) -> None:
    docker(daemon, "image", "prune", "-f", config=docker_config)

    done = docker(
        daemon,
        "events",
        "--since",
        "0",
        "--until",
        now(),
        "--filter",
        "event=prune",
        "--format",
        "{{.Type}} {{.Action}} {{.Actor.Attributes.reclaimed}}",
        config=docker_config,
    )

    assert done.stdout.splitlines() == ["image prune 0"]
