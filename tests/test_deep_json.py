"""JSON (and TOML) nested deeper than Python's recursion limit: a few KB of brackets
make json, msgspec and tomllib raise RecursionError, which is no ValueError. Each
reader of text from outside says what is wrong instead of crashing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferryd.cli import dockerconfig
from ferryd.daemon.api.archives import platform_param
from ferryd.daemon.api.filters import Filters
from ferryd.daemon.settings import load_settings
from ferryd.distribution.archives.layout import decode_manifest_json
from ferryd.distribution.changes import apply_changes
from ferryd.errors import (
    ArchiveError,
    BadRequestError,
    ConfigError,
    ImageConfigError,
    InvalidFilterError,
    ManifestError,
)
from ferryd.oci.image_config import decode_config
from ferryd.oci.manifest import decode_index, decode_manifest, media_type_of

DEPTH = 100_000
NESTED = "[" * DEPTH + "]" * DEPTH


def _in_a_field(field: str) -> bytes:
    return f'{{"schemaVersion": 2, "{field}": {NESTED}}}'.encode()


def test_a_manifest_nested_too_deeply_is_a_manifest_error() -> None:
    raw = _in_a_field("annotations")
    with pytest.raises(ManifestError, match="nested too deeply"):
        media_type_of("application/vnd.oci.image.manifest.v1+json", raw)
    with pytest.raises(ManifestError, match="nested too deeply"):
        decode_manifest(raw)
    with pytest.raises(ManifestError, match="nested too deeply"):
        decode_index(raw)


def test_an_image_config_nested_too_deeply_is_an_image_config_error() -> None:
    with pytest.raises(ImageConfigError, match="nested too deeply"):
        decode_config(_in_a_field("unknown"))


def test_a_manifest_json_nested_too_deeply_is_an_archive_error() -> None:
    with pytest.raises(ArchiveError, match="nested too deeply"):
        decode_manifest_json(f'[{{"Config": "c", "unknown": {NESTED}}}]'.encode())


def test_filters_nested_too_deeply_are_an_invalid_filter() -> None:
    with pytest.raises(InvalidFilterError, match="not JSON"):
        Filters.parse(NESTED, {"dangling"})


def test_a_platform_parameter_nested_too_deeply_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError, match="not JSON"):
        platform_param('{"os": ' + NESTED + "}")


def test_a_change_whose_json_array_is_nested_too_deeply_is_read_in_shell_form() -> None:
    text = "[" * 5_000 + "]" * 5_000  # not an array of strings: docker reads it as a shell line
    assert apply_changes([f"CMD {text}"])["Cmd"] == ["/bin/sh", "-c", text]


def test_a_config_file_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "ferryd.toml"
    path.write_text("root = " + NESTED + "\n")
    with pytest.raises(ConfigError, match="too deeply"):
        load_settings(path)


def test_a_docker_config_nested_too_deeply_is_a_config_file_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.json").write_text('{"auths": ' + NESTED + "}")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    with pytest.raises(dockerconfig.ConfigFileError, match="not valid JSON"):
        dockerconfig.load()
