"""The client's docker `config.json`, read and written as the docker CLI does it (no
daemon): keys, legacy keys, the header `ferryd pull` sends, logout's keys."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from ferryd.cli import dockerconfig


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    return tmp_path / "config.json"


def header(domain: str) -> dict[str, Any]:
    encoded, warning = dockerconfig.registry_auth(domain)
    assert warning == ""
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(encoded))
    return decoded


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("server", "key"),
    [
        ("", dockerconfig.INDEX_SERVER),
        ("docker.io", dockerconfig.INDEX_SERVER),
        ("https://index.docker.io/v1/", dockerconfig.INDEX_SERVER),
        ("reg.example:5000", "reg.example:5000"),
        ("https://reg.example:5000/v2/", "reg.example:5000"),
        ("http://[::1]:5000", "[::1]:5000"),
    ],
)
def test_server_keys_as_docker_writes_them(server: str, key: str) -> None:
    assert dockerconfig.server_key(server) == key


def test_the_header_carries_the_kept_login_as_the_docker_cli_sends_it(config: Path) -> None:
    config.write_text(
        json.dumps(
            {
                "auths": {
                    "reg.example": {"auth": basic("me", "pw")},
                    "https://legacy.example/v1/": {"auth": basic("old", "pw2")},
                    "tok.example": {"auth": basic("me", ""), "identitytoken": "refresh-1"},
                }
            }
        )
    )

    assert header("reg.example") == {
        "username": "me",
        "password": "pw",
        "serveraddress": "reg.example",
    }
    assert header("legacy.example")["username"] == "old"
    assert header("tok.example") == {
        "username": "me",
        "identitytoken": "refresh-1",
        "serveraddress": "tok.example",
    }
    assert header("none.example") == {"serveraddress": "none.example"}


def test_no_config_file_is_no_login(config: Path) -> None:
    assert header("docker.io") == {"serveraddress": dockerconfig.INDEX_SERVER}


def test_a_broken_config_file_is_said_and_the_header_goes_without(config: Path) -> None:
    config.write_text("{not json")

    encoded, warning = dockerconfig.registry_auth("reg.example")

    assert "is not valid JSON" in warning
    assert json.loads(base64.urlsafe_b64decode(encoded)) == {"serveraddress": "reg.example"}


def test_store_and_erase_in_the_file_keep_everything_else(config: Path) -> None:
    config.write_text(json.dumps({"detachKeys": "ctrl-x", "auths": {"http://reg.example": {}}}))

    dockerconfig.store_login("reg.example", "me", "", "refresh-2")
    stored = json.loads(config.read_text())
    errors = dockerconfig.erase_login("reg.example")
    erased = json.loads(config.read_text())

    assert stored["auths"]["reg.example"] == {"auth": basic("me", ""), "identitytoken": "refresh-2"}
    assert stored["detachKeys"] == "ctrl-x"
    assert errors == []
    assert erased == {"detachKeys": "ctrl-x", "auths": {}}  # the legacy key went too


def test_a_helper_that_is_missing_is_an_error_naming_it(config: Path) -> None:
    config.write_text(json.dumps({"credsStore": "nowhere-to-be-found"}))

    with pytest.raises(dockerconfig.ConfigFileError, match="docker-credential-nowhere"):
        dockerconfig.store_login("reg.example", "me", "pw", "")
