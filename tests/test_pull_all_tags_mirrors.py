"""`pull -a` lists the repository's tags at its mirrors first, as dockerd asks its
endpoints in turn, and falls back to the registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.daemon import Daemon, errors
from support.images import LayerSpec, build_image, seed
from support.registry import Registry, start_registry

pytestmark = [pytest.mark.registry, pytest.mark.daemon]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[Registry]:
    with start_registry(tmp_path_factory.mktemp("tags-mirror")) as reg:
        yield reg


def two_tags(target: Registry, tmp_path: Path, repository: str, seed_: int) -> list[str]:
    """Tags a and b of `repository` in `target`; their image IDs."""
    ids = []
    for offset, tag in enumerate(("a", "b")):
        layout = tmp_path / tag
        built = build_image(layout, layers=[LayerSpec(size=1500, seed=seed_ + offset)])
        seed(target, layout, "latest", f"{repository}:{tag}")
        ids.append(built.config_digest)
    return ids


def test_pull_all_tags_from_a_mirror_when_the_registry_is_unreachable(
    mirror: Registry, start_daemon: Callable[..., Daemon], tmp_path: Path, refused_port: int
) -> None:
    dead = f"127.0.0.1:{refused_port}"  # nothing listens there
    ids = two_tags(mirror, tmp_path, "every/app", 7701)
    daemon = start_daemon(registry_mirrors={dead: [mirror.url]})

    messages = daemon.pull(f"{dead}/every/app")

    assert errors(messages) == []
    assert [daemon.inspect(f"{dead}/every/app:{tag}")["Id"] for tag in ("a", "b")] == ids
    assert {"status": f"Status: Downloaded newer image for {dead}/every/app"} in messages
    assert mirror.requests("GET", "/v2/every/app/tags/list") == 1
    assert daemon.log_events("registry.mirror_failed") == []


def test_pull_all_tags_falls_back_to_the_registry_when_the_mirror_cannot_list_them(
    registry: Registry, start_daemon: Callable[..., Daemon], tmp_path: Path, refused_port: int
) -> None:
    down = f"http://127.0.0.1:{refused_port}"  # a mirror that is not there
    ids = two_tags(registry, tmp_path, "every/origin", 7711)
    daemon = start_daemon(registry_mirrors={registry.host: [down]})

    messages = daemon.pull(f"{registry.host}/every/origin")

    assert errors(messages) == []
    assert [daemon.inspect(f"{registry.host}/every/origin:{t}")["Id"] for t in "ab"] == ids
    failed = daemon.log_events("registry.mirror_failed")
    assert {event["reference"] for event in failed} >= {f"{registry.host}/every/origin"}
    assert all(event["mirror"] == down for event in failed)


def test_pull_all_tags_asks_the_registry_when_the_mirror_lacks_the_repository(
    registry: Registry, mirror: Registry, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    ids = two_tags(registry, tmp_path, "every/notmirrored", 7721)
    daemon = start_daemon(registry_mirrors={registry.host: [mirror.url]})

    messages = daemon.pull(f"{registry.host}/every/notmirrored")

    assert errors(messages) == []
    assert [daemon.inspect(f"{registry.host}/every/notmirrored:{t}")["Id"] for t in "ab"] == ids
    assert mirror.requests("GET", "/v2/every/notmirrored/tags/list") == 1
    assert registry.requests("GET", "/v2/every/notmirrored/tags/list") == 1
