"""`GET /distribution/{name}/json` (docker-py's `inspect_distribution`, buildx): the
registry's descriptor of a reference and the platforms it offers, without pulling."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from support.daemon import Daemon
from support.images import LayerSpec, PlatformSpec, build_image, build_index, seed
from support.registry import PASSWORD, USER, Registry, fixture_registry

pytestmark = [pytest.mark.registry, pytest.mark.daemon]

docker = pytest.importorskip("docker")


@pytest.fixture
def api(daemon: Daemon) -> Iterator[Any]:
    client = docker.APIClient(base_url=daemon.host, version="1.47")
    yield client
    client.close()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[Registry]:
    """A second real registry, standing in for a pull-through cache."""
    with fixture_registry(tmp_path_factory, "inspect-mirror") as mirror:
        yield mirror


def inspect(daemon: Daemon, name: str) -> dict[str, Any]:
    answer: dict[str, Any] = daemon.client().get_json(f"/distribution/{name}/json")
    return answer


def test_an_index_gives_its_descriptor_and_every_platform(
    registry: Registry, daemon: Daemon, api: Any, layout: Path
) -> None:
    index = build_index(
        layout,
        [
            PlatformSpec([LayerSpec(size=100, seed=7601)], architecture="amd64"),
            PlatformSpec([LayerSpec(size=100, seed=7602)], architecture="arm64", variant="v8"),
        ],
    )
    seed(registry, layout, "latest", "dist/multi:v1")

    answer = api.inspect_distribution(f"{registry.host}/dist/multi:v1")

    assert answer == {
        "Descriptor": {"mediaType": index.media_type, "digest": index.digest, "size": index.size},
        "Platforms": [
            {"architecture": "amd64", "os": "linux"},
            {"architecture": "arm64", "os": "linux", "variant": "v8"},
        ],
    }
    assert daemon.images() == []  # nothing was pulled


@pytest.mark.parametrize("media", ["docker", "oci"])
def test_one_image_gives_the_platform_of_its_config(
    registry: Registry, api: Any, layout: Path, media: str
) -> None:
    built = build_image(
        layout,
        layers=[LayerSpec(size=100, seed=7603)],
        media=media,  # type: ignore[arg-type]
        architecture="arm",
        variant="v7",
    )
    seed(registry, layout, "latest", f"dist/single-{media}:v1")

    answer = api.inspect_distribution(f"{registry.host}/dist/single-{media}:v1")

    assert answer["Descriptor"] == built.descriptor()
    assert answer["Platforms"] == [{"architecture": "arm", "os": "linux", "variant": "v7"}]


def test_by_digest(registry: Registry, api: Any, layout: Path) -> None:
    built = build_image(layout, layers=[LayerSpec(size=100, seed=7604)])
    seed(registry, layout, "latest", "dist/bydigest:v1")

    answer = api.inspect_distribution(f"{registry.host}/dist/bydigest@{built.manifest_digest}")

    assert answer == {
        "Descriptor": built.descriptor(),
        "Platforms": [{"architecture": "amd64", "os": "linux"}],
    }


def test_an_unknown_tag_is_not_found(registry: Registry, api: Any) -> None:
    with pytest.raises(docker.errors.NotFound):
        api.inspect_distribution(f"{registry.host}/dist/none:v9")


def test_a_full_image_id_is_refused_as_dockerd_refuses_it(api: Any) -> None:
    with pytest.raises(docker.errors.APIError, match="no manifest found for full image ID"):
        api.inspect_distribution("a" * 64)


def test_a_private_repository_with_the_clients_login(
    tls_registry: Registry,
    start_daemon: Callable[..., Daemon],
    ca: trustme.CA,
    layout: Path,
) -> None:
    daemon = start_daemon(insecure_registries=[])
    daemon.trust(tls_registry.host, ca)
    built = build_image(layout, layers=[LayerSpec(size=100, seed=7605)])
    seed(tls_registry, layout, "latest", "private/dist:v1")
    ref = f"{tls_registry.host}/private/dist:v1"
    client = docker.APIClient(base_url=daemon.host, version="1.47")
    try:
        with pytest.raises(docker.errors.APIError) as anonymous:
            client.inspect_distribution(ref)
        answer = client.inspect_distribution(
            ref, auth_config={"username": USER, "password": PASSWORD}
        )
    finally:
        client.close()

    assert anonymous.value.status_code == 401
    assert answer["Descriptor"]["digest"] == built.manifest_digest


def test_an_unreadable_registry_auth_header_is_ignored_as_dockerd_ignores_it(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=100, seed=7606)])
    seed(registry, layout, "latest", "dist/badauth:v1")
    header = base64.urlsafe_b64encode(b"not json").decode()

    with daemon.client().request(
        "GET",
        f"/distribution/{registry.host}/dist/badauth:v1/json",
        headers={"X-Registry-Auth": header},
    ) as response:
        answer = json.loads(response.read())

    assert answer["Descriptor"]["digest"] == built.manifest_digest


# -- mirrors -----------------------------------------------------------------------------


def test_a_mirror_that_has_the_reference_answers_and_the_registry_is_not_asked(
    registry: Registry, mirror: Registry, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    # The same tag, different images: the descriptor and platform tell who answered.
    at_mirror = build_image(
        tmp_path / "mirror", layers=[LayerSpec(size=100, seed=7607)], architecture="arm64"
    )
    seed(mirror, tmp_path / "mirror", "latest", "dist/mirrored:v1")
    build_image(tmp_path / "origin", layers=[LayerSpec(size=100, seed=7608)])
    seed(registry, tmp_path / "origin", "latest", "dist/mirrored:v1")
    daemon = start_daemon(registry_mirrors={registry.host: [mirror.url]})
    asked = registry.requests("GET", "/v2/dist/mirrored/")  # seeding reads the manifest back

    answer = inspect(daemon, f"{registry.host}/dist/mirrored:v1")

    assert answer == {
        "Descriptor": at_mirror.descriptor(),
        "Platforms": [{"architecture": "arm64", "os": "linux"}],
    }
    assert registry.requests("GET", "/v2/dist/mirrored/") == asked
    assert daemon.log_events("registry.mirror_failed") == []


def test_a_mirror_that_fails_is_skipped_for_the_registry_with_one_warning(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path, refused_port: int
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=100, seed=7609)])
    seed(registry, layout, "latest", "dist/fallback:v1")
    down = f"http://127.0.0.1:{refused_port}"
    daemon = start_daemon(registry_mirrors={registry.host: [down]})
    reference = f"{registry.host}/dist/fallback:v1"

    answer = inspect(daemon, reference)

    assert answer == {
        "Descriptor": built.descriptor(),
        "Platforms": [{"architecture": "amd64", "os": "linux"}],
    }
    [skipped] = daemon.log_events("registry.mirror_failed")
    assert skipped["level"] == "warning"
    assert skipped["mirror"] == down
    assert skipped["reference"] == reference
