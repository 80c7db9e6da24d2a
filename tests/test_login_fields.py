"""A login ferryd could not send to a registry (a lone surrogate from a JSON escape, a
registry token that is no header value) is refused where it is read, naming the field:
from the client's X-Registry-Auth, /auth, docker's config.json or a credential helper."""

from __future__ import annotations

import json
import subprocess

import pytest

from ferryd.errors import CredentialHelperError, InvalidRegistryAuthError
from ferryd.registry.auth import credentials_from_entry
from ferryd.registry.credentials import _answer

LONE = json.loads('"\\ud800"')


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"username": LONE, "password": "x"}, "username"),
        ({"username": "ann", "password": LONE}, "password"),
        ({"identitytoken": LONE}, "identitytoken"),
        ({"registrytoken": "t\r\nX-Injected: 1"}, "registrytoken"),
        ({"registrytoken": "tökén"}, "registrytoken"),
    ],
)
def test_a_config_json_login_that_cannot_be_sent_is_refused_naming_its_field(
    entry: dict[str, str], field: str
) -> None:
    with pytest.raises(InvalidRegistryAuthError, match=f"config.json.*{field!r}"):
        credentials_from_entry(entry, "config.json entry for registry.test")


def test_a_credential_helper_login_that_cannot_be_sent_is_the_helpers_error() -> None:
    answer = json.dumps({"Username": "ann", "Secret": LONE}).encode()  # an escaped \ud800
    done = subprocess.CompletedProcess(["docker-credential-x", "get"], 0, answer, b"")
    with pytest.raises(CredentialHelperError, match=r"docker-credential-x.*'password'"):
        _answer(done, "x", "registry.test")


def test_a_login_of_text_is_taken() -> None:
    credentials = credentials_from_entry({"username": "änn", "password": "pässword"}, "login")
    assert (credentials.username, credentials.password) == ("änn", "pässword")
