"""A small store to list, filter and prune: four images in a registry, pulled as a
user would have them.

- `old`: created 2022, pulled by digest only, so it has no tag (dangling);
- `red`: created 2023-01, labels team=red tier=web, tagged `…/red:v1`;
- `blue`: created 2023-06, label team=blue, tagged `…/blue:v1`, and shares its base
  layer with `red`;
- `new`: created 2024-01, no labels, tagged `…/new:v1` and `…/new:latest`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .daemon import Daemon, errors
from .images import BuiltImage, LayerSpec, build_image, seed
from .registry import Registry

BASE = LayerSpec(size=40_000, seed=7001)


@dataclass(frozen=True)
class Inventory:
    registry: Registry
    prefix: str  # repository path prefix, one per test module (the registry is shared)
    images: dict[str, BuiltImage]

    def repository(self, name: str) -> str:
        return f"{self.registry.host}/{self.prefix}/{name}"

    def id(self, name: str) -> str:
        return self.images[name].config_digest

    def pull_all(self, daemon: Daemon) -> None:
        """Pull the four images into `daemon`'s store."""
        references = [
            f"{self.repository('old')}@{self.images['old'].manifest_digest}",
            f"{self.repository('red')}:v1",
            f"{self.repository('blue')}:v1",
            f"{self.repository('new')}:v1",
            f"{self.repository('new')}:latest",
        ]
        for reference in references:
            failed = errors(daemon.pull(reference))
            assert not failed, (reference, failed)


def _config(created: str, labels: dict[str, str] | None) -> dict[str, Any]:
    config: dict[str, Any] = {"Cmd": ["/bin/sh"]}
    if labels is not None:
        config["Labels"] = labels
    return {"created": created, "config": config}


def seed_inventory(registry: Registry, workdir: Path, prefix: str) -> Inventory:
    """Build the four images and push them to `registry` under `prefix/`."""
    specs: dict[str, tuple[list[LayerSpec], dict[str, Any], list[str]]] = {
        "old": ([LayerSpec(size=10_000, seed=7002)], _config("2022-03-01T00:00:00Z", None), ["v0"]),
        "red": (
            [BASE, LayerSpec(size=20_000, seed=7003)],
            _config("2023-01-10T00:00:00Z", {"team": "red", "tier": "web"}),
            ["v1"],
        ),
        "blue": (
            [BASE, LayerSpec(size=30_000, seed=7004)],
            _config("2023-06-10T00:00:00Z", {"team": "blue"}),
            ["v1"],
        ),
        "new": (
            [LayerSpec(size=50_000, seed=7005)],
            _config("2024-01-10T00:00:00Z", {}),
            ["v1", "latest"],
        ),
    }
    images = {}
    for name, (layers, config, tags) in specs.items():
        layout = workdir / name
        images[name] = build_image(layout, layers=layers, config_extra=config)
        for tag in tags:
            seed(registry, layout, "latest", f"{prefix}/{name}:{tag}")
    return Inventory(registry, prefix, images)
