"""`GET /images/{name}/history`: the config's build steps, newest first, with the size of
the layer each made, in dockerd's JSON (through the API and docker-py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker
import pytest

from ferryd.cli.client import DaemonError
from support.daemon import Daemon, errors
from support.images import LayerSpec, build_image, seed
from support.registry import Registry

pytestmark = pytest.mark.registry

HISTORY = [
    {"created": "2023-01-01T00:00:00Z", "created_by": "ADD rootfs.tar /", "comment": "base"},
    {"created": "2023-01-02T00:00:00Z", "created_by": "ENV A=1", "empty_layer": True},
    {"created": "2023-01-03T00:00:00.123456789Z", "created_by": "RUN make"},
]


def _pull_built(
    registry: Registry, daemon: Daemon, layout: Path, repo: str, extra: dict[str, Any]
) -> tuple[str, Any]:
    built = build_image(
        layout,
        layers=[LayerSpec(size=30_000, seed=7101), LayerSpec(size=5_000, seed=7102)],
        config_extra=extra,
    )
    seed(registry, layout, "latest", f"{repo}:v1")
    reference = f"{registry.host}/{repo}:v1"
    assert not errors(daemon.pull(reference))
    return reference, built


def test_history_lists_steps_newest_first_with_layer_sizes(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference, built = _pull_built(registry, daemon, layout, "history/app", {"history": HISTORY})

    steps = daemon.client().get_json(f"/images/{reference}/history")

    assert steps == [
        {
            "Id": built.config_digest,
            "Created": 1672704000,
            "CreatedBy": "RUN make",
            "Tags": [reference],
            "Size": built.layers[1].uncompressed_size,
            "Comment": "",
        },
        {
            "Id": "<missing>",
            "Created": 1672617600,
            "CreatedBy": "ENV A=1",
            "Tags": None,
            "Size": 0,
            "Comment": "",
        },
        {
            "Id": "<missing>",
            "Created": 1672531200,
            "CreatedBy": "ADD rootfs.tar /",
            "Tags": None,
            "Size": built.layers[0].uncompressed_size,
            "Comment": "base",
        },
    ]


def test_history_by_id_and_an_image_without_history(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    _, built = _pull_built(registry, daemon, layout, "history/bare", {"history": None})

    assert daemon.client().get_json(f"/images/{built.config_digest[7:19]}/history") == []


def test_history_with_more_layer_steps_than_layers_is_an_error(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    too_many = [{"created_by": f"RUN {i}"} for i in range(3)]
    reference, _ = _pull_built(registry, daemon, layout, "history/lies", {"history": too_many})

    with pytest.raises(DaemonError, match="too many non-empty layers in History section"):
        daemon.client().get_json(f"/images/{reference}/history")


def test_history_of_an_unknown_image_is_a_404(daemon: Daemon) -> None:
    with pytest.raises(DaemonError, match="No such image: nothing:here"):
        daemon.client().get_json("/images/nothing:here/history")


def test_docker_py_history(registry: Registry, daemon: Daemon, layout: Path) -> None:
    reference, built = _pull_built(registry, daemon, layout, "history/py", {"history": HISTORY})
    client = docker.DockerClient(base_url=f"unix://{daemon.socket}", timeout=60)
    try:
        steps = client.images.get(reference).history()
    finally:
        client.close()

    assert [step["CreatedBy"] for step in steps] == ["RUN make", "ENV A=1", "ADD rootfs.tar /"]
    assert steps[0]["Id"] == built.config_digest
