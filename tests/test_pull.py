"""Pulls through the real daemon from a real registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.daemon import Daemon, errors, statuses
from support.images import LayerSpec, build_image, seed
from support.registry import Registry

pytestmark = pytest.mark.registry


def test_pull_oci_image_stores_it_and_lists_it(registry: Registry, daemon: Daemon, layout: Path) -> None:
    built = build_image(layout, layers=[LayerSpec(size=300_000, seed=1), LayerSpec(size=1000, seed=2)])
    seed(registry, layout, "latest", "pull/oci:v1")

    messages = daemon.pull(f"{registry.host}/pull/oci:v1")

    assert errors(messages) == []
    assert messages[-1]["status"] == f"Status: Downloaded newer image for {registry.host}/pull/oci:v1"
    image = daemon.inspect(f"{registry.host}/pull/oci:v1")
    assert image["Id"] == built.config_digest
    assert image["RootFS"]["Layers"] == built.diff_ids
