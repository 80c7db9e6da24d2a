"""The fixtures of a test module that lists, filters or prunes the inventory: its
images seeded once per module under a prefix of its own (the registry is shared), and
a daemon that has pulled them."""

from __future__ import annotations

from typing import Any

import pytest

from .daemon import Daemon
from .inventory import Inventory, seed_inventory
from .registry import Registry


def inventory_fixtures(prefix: str) -> tuple[Any, Any]:
    """`inventory, stocked = inventory_fixtures("mine")` at a test module's top."""

    @pytest.fixture(scope="module")
    def inventory(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Inventory:
        return seed_inventory(registry, tmp_path_factory.mktemp("inventory"), prefix)

    @pytest.fixture
    def stocked(daemon: Daemon, inventory: Inventory) -> Daemon:
        inventory.pull_all(daemon)
        return daemon

    return inventory, stocked
