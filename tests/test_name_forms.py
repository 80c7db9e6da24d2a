"""The name forms of an image that dockerd accepts beside plain tags and IDs, through the
API and the real docker CLI:

- `repo:tag@digest` (as Renovate and compose pin images) names the image by its digest,
  the tag ignored (dockerd's `favorDigest`), for every command that resolves a name;
- `sha256:<short ID>` resolves as the short ID alone does, ambiguity included;
- `rmi` of a full ID (64 hex, no `sha256:`) that is not stored is "No such image";
- `save REPO` takes every reference of the repository: digest references give their
  images untagged, as dockerd's tarexport does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from support.archives import docker25_archive, load, members, pulled, save
from support.daemon import Daemon, errors
from support.docker_cli import docker
from support.images import BuiltImage, LayerSpec, build_image, seed
from support.registry import Registry

pytestmark = pytest.mark.registry

needs_docker = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def _pull(daemon: Daemon, registry: Registry, layout: Path, dest: str, number: int) -> BuiltImage:
    """An image of its own (`number`) pushed as `dest` (`repo:tag`) and pulled by tag."""
    return pulled(daemon, registry, layout, dest, layers=[LayerSpec(size=500, seed=number)])


def _status(daemon: Daemon, method: str, path: str, **params: str) -> tuple[int, Any]:
    with daemon.http() as client:
        response = client.request(method, path, params=params)
    return response.status_code, response.json() if response.content else None


def _tag(daemon: Daemon, source: str, target: str) -> int:
    """`docker tag SOURCE TARGET` (`repo:tag`) through the API; its status."""
    repo, _, tag = target.rpartition(":")
    return _status(daemon, "POST", f"/images/{source}/tag", repo=repo, tag=tag)[0]


def _saved(archive: bytes) -> list[tuple[str, list[str] | None]]:
    """The images of an archive (config digest, RepoTags), as manifest.json lists them."""
    listed = json.loads(members(archive)["manifest.json"])
    return sorted(
        ("sha256:" + entry["Config"].rpartition("/")[2], entry["RepoTags"]) for entry in listed
    )


# -- repo:tag@digest -------------------------------------------------------------------


def test_a_name_with_a_tag_and_a_digest_names_the_image_by_the_digest_ignoring_the_tag(
    daemon: Daemon, registry: Registry, layout: Path
) -> None:
    repository = f"{registry.host}/nameforms/pinned"
    built = _pull(daemon, registry, layout, "nameforms/pinned:1.0", 101)
    pinned = f"{repository}:1.0@{built.manifest_digest}"
    other_tag = f"{repository}:nosuchtag@{built.manifest_digest}"
    client = daemon.client()

    assert daemon.inspect(pinned)["Id"] == built.config_digest
    assert daemon.inspect(other_tag)["Id"] == built.config_digest
    assert client.get_json(f"/images/{pinned}/history")[0]["Id"] == built.config_digest
    assert _tag(daemon, pinned, "nameforms/copy:1") == 201
    assert daemon.inspect("nameforms/copy:1")["Id"] == built.config_digest
    # Named by a digest, the image is saved untagged, as dockerd saves `repo@digest`.
    assert _saved(save(daemon, pinned)) == [(built.config_digest, None)]


def test_rmi_of_a_name_with_a_tag_and_a_digest_untags_the_digest_reference_only(
    daemon: Daemon, registry: Registry, layout: Path
) -> None:
    repository = f"{registry.host}/nameforms/untag"
    built = _pull(daemon, registry, layout, "nameforms/untag:1.0", 102)
    pinned = f"{repository}:1.0@{built.manifest_digest}"

    status, records = _status(daemon, "DELETE", f"/images/{pinned}")

    assert (status, records) == (200, [{"Untagged": pinned}])
    assert daemon.inspect(f"{repository}:1.0")["RepoDigests"] == []
    assert _status(daemon, "GET", f"/images/{repository}@{built.manifest_digest}/json")[0] == 404


def test_a_name_with_a_tag_and_a_digest_nothing_stores_is_no_such_image(
    daemon: Daemon, registry: Registry, layout: Path
) -> None:
    built = _pull(daemon, registry, layout, "nameforms/absent:1.0", 103)
    # The tag is stored, the digest is not (it names another repository's image).
    name = f"{registry.host}/nameforms/absent:1.0@sha256:{'0' * 64}"

    status, answer = _status(daemon, "GET", f"/images/{name}/json")

    assert (status, answer["message"]) == (404, f"No such image: {name}")
    assert daemon.inspect(f"{registry.host}/nameforms/absent:1.0")["Id"] == built.config_digest


# -- sha256:<short ID> -----------------------------------------------------------------


def test_sha256_with_a_short_id_names_the_image_as_the_short_id_alone_does(
    daemon: Daemon, registry: Registry, layout: Path
) -> None:
    built = _pull(daemon, registry, layout, "nameforms/short:1", 104)
    short = built.config_digest[:19]  # sha256: and 12 hex digits, as `docker images` shows
    client = daemon.client()

    assert daemon.inspect(short)["Id"] == built.config_digest
    assert daemon.inspect(built.config_digest[:11])["Id"] == built.config_digest
    assert client.get_json(f"/images/{short}/history")[0]["Id"] == built.config_digest
    assert _tag(daemon, short, "nameforms/bytag:2") == 201
    assert daemon.inspect("nameforms/bytag:2")["Id"] == built.config_digest
    assert _saved(save(daemon, short)) == [(built.config_digest, None)]

    status, records = _status(daemon, "DELETE", f"/images/{short}", force="1")

    assert status == 200
    assert {"Deleted": built.config_digest} in records
    assert daemon.images() == []


def test_sha256_with_a_prefix_two_images_share_is_ambiguous_as_the_bare_prefix(
    daemon: Daemon, tmp_path: Path
) -> None:
    first_digits: dict[str, str] = {}
    number = 0
    while True:  # at most 17 images before two IDs share their first hex digit
        built = build_image(
            tmp_path / f"layout{number}",
            layers=[LayerSpec(size=100, seed=1)],
            config_extra={"config": {"Labels": {"n": str(number)}}},
        )
        writer, _ = docker25_archive(tmp_path / f"layout{number}", built, f"nameforms/amb:{number}")
        assert load(daemon, writer.bytes()).error is None
        first = built.config_digest[7]
        if first in first_digits:
            break
        first_digits[first] = built.config_digest
        number += 1

    bare = _status(daemon, "GET", f"/images/{first}/json")
    prefixed = _status(daemon, "GET", f"/images/sha256:{first}/json")

    assert bare[0] == prefixed[0] == 404
    assert bare[1]["message"] == prefixed[1]["message"]
    assert "ambiguous" in prefixed[1]["message"]


# -- rmi of an absent full ID ----------------------------------------------------------


def test_rmi_of_a_full_id_without_sha256_that_is_not_stored_is_no_such_image(
    daemon: Daemon,
) -> None:
    hex_id = "9f22e42f6aec08a7dc842da4fa4bbb3bd63213f1c310fa8e1be3f854835537ec"

    status, answer = _status(daemon, "DELETE", f"/images/{hex_id}")
    inspected = _status(daemon, "GET", f"/images/{hex_id}/json")

    assert (status, answer["message"]) == (404, f"No such image: {hex_id}")
    assert inspected == (status, answer)
    # A name that is no ID and no valid reference is still refused as invalid.
    assert _status(daemon, "DELETE", "/images/Bad..Name")[0] == 400


# -- save REPO with digest references --------------------------------------------------


def test_save_of_a_repository_with_only_digest_references_saves_its_image_untagged(
    daemon: Daemon, registry: Registry, layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=500, seed=105)])
    digest = seed(registry, layout, "latest", "nameforms/bydigest:v1")
    repository = f"{registry.host}/nameforms/bydigest"
    assert errors(daemon.pull(f"{repository}@{digest}")) == []

    assert _saved(save(daemon, repository)) == [(built.config_digest, None)]


def test_save_of_a_repository_takes_the_images_of_its_digest_references_beside_its_tags(
    daemon: Daemon, registry: Registry, tmp_path: Path
) -> None:
    repository = f"{registry.host}/nameforms/mixed"
    tagged = _pull(daemon, registry, tmp_path / "a", "nameforms/mixed:v1", 106)
    untagged = build_image(tmp_path / "b", layers=[LayerSpec(size=500, seed=107)])
    digest = seed(registry, tmp_path / "b", "latest", "nameforms/mixed:v2")
    assert errors(daemon.pull(f"{repository}@{digest}")) == []

    assert _saved(save(daemon, repository)) == sorted(
        [(tagged.config_digest, [f"{repository}:v1"]), (untagged.config_digest, None)]
    )


# -- the docker CLI --------------------------------------------------------------------


@needs_docker
@pytest.mark.docker_cli
def test_docker_cli_inspects_tags_and_removes_an_image_pinned_by_tag_and_digest(
    daemon: Daemon, registry: Registry, layout: Path, docker_config: Path
) -> None:
    repository = f"{registry.host}/nameforms/cli"
    built = _pull(daemon, registry, layout, "nameforms/cli:1.0", 108)
    pinned = f"{repository}:1.0@{built.manifest_digest}"

    inspected = docker(daemon, "image", "inspect", "-f", "{{.Id}}", pinned, config=docker_config)
    docker(daemon, "tag", pinned, "nameforms/cli-copy:1", config=docker_config)
    removed = docker(daemon, "rmi", pinned, config=docker_config)

    assert inspected.stdout.strip() == built.config_digest
    assert daemon.inspect("nameforms/cli-copy:1")["Id"] == built.config_digest
    assert removed.stdout.splitlines() == [f"Untagged: {pinned}"]
    assert daemon.inspect(f"{repository}:1.0")["RepoDigests"] == []


@needs_docker
@pytest.mark.docker_cli
def test_docker_cli_takes_sha256_short_ids_and_says_no_such_image_for_an_absent_full_id(
    daemon: Daemon, registry: Registry, layout: Path, docker_config: Path
) -> None:
    built = _pull(daemon, registry, layout, "nameforms/cli-short:1", 109)
    absent = "9f22e42f6aec08a7dc842da4fa4bbb3bd63213f1c310fa8e1be3f854835537ec"

    inspected = docker(
        daemon, "image", "inspect", "-f", "{{.Id}}", built.config_digest[:19], config=docker_config
    )
    removed = docker(daemon, "rmi", absent, config=docker_config, check=False)

    assert inspected.stdout.strip() == built.config_digest
    assert removed.returncode == 1
    assert f"No such image: {absent}" in removed.stderr
