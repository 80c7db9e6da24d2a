"""The daemon's credentials file: `auths`, `credHelpers`, `credsStore`, as docker reads them."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from ferryd.errors import ConfigError
from ferryd.registry.auth import Credentials, registry_domain
from ferryd.registry.credentials import CredentialStore

# -- the file ---------------------------------------------------------------


def write_config(path: Path, auths: dict[str, object]) -> Path:
    path.write_text(json.dumps({"auths": auths, "credsStore": "desktop"}))
    return path


def test_docker_config_keys_become_domains(tmp_path: Path) -> None:
    def auth(user: str) -> dict[str, str]:
        return {"auth": base64.b64encode(f"{user}:pw-{user}".encode()).decode()}

    path = write_config(
        tmp_path / "config.json",
        {
            "https://index.docker.io/v1/": auth("hub"),
            "reg.example:5000": auth("plain"),
            "https://Other.Example:5443/": auth("url"),
            "http://10.0.0.1:5000/v2/": {"username": "ip", "password": "pw-ip"},
            "quay.io": {"identitytoken": "tok"},
        },
    )
    assert CredentialStore.from_file(path).auths == {
        "docker.io": Credentials("hub", "pw-hub"),
        "reg.example:5000": Credentials("plain", "pw-plain"),
        "other.example:5443": Credentials("url", "pw-url"),
        "10.0.0.1:5000": Credentials("ip", "pw-ip"),
        "quay.io": Credentials(identity_token="tok"),
    }


@pytest.mark.parametrize(
    ("server", "domain"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("https://registry-1.docker.io/v2/", "docker.io"),
        ("docker.io", "docker.io"),
        ("host:5000", "host:5000"),
        ("https://host:5000/", "host:5000"),
        ("  HOST.example  ", "host.example"),
    ],
)
def test_registry_domain(server: str, domain: str) -> None:
    assert registry_domain(server) == domain


def test_docker_config_missing_file_is_empty(tmp_path: Path) -> None:
    assert CredentialStore.from_file(tmp_path / "nope.json").auths == {}


def test_docker_config_without_auths_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"credsStore": "pass"}')
    assert CredentialStore.from_file(path).auths == {}


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "",
        "[]",
        '{"auths": []}',
        '{"auths": {"reg:5000": "user:pw"}}',
        '{"auths": {"reg:5000": {"auth": "bm8tY29sb24="}}}',  # "no-colon"
    ],
)
def test_docker_config_malformed_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)):
        CredentialStore.from_file(path)


def test_docker_config_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        CredentialStore.from_file(tmp_path)
