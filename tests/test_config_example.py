"""config.example.toml documents every key with its default."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec

from ferryd.daemon.settings import Settings, load_settings

EXAMPLE = Path(__file__).parent.parent / "config.example.toml"


def test_example_config_names_every_setting_with_its_default() -> None:
    documented = tomllib.loads(EXAMPLE.read_text())

    assert set(documented) == set(Settings.__struct_fields__)
    assert documented == msgspec.to_builtins(Settings())


def test_example_config_loads() -> None:
    assert load_settings(EXAMPLE) == Settings()
