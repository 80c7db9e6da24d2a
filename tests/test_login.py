"""`POST /auth`: a login checked against the registry as dockerd checks it (`docker
login`, docker-py's `client.login`), against a registry with htpasswd (Basic) and one
with token auth and identity tokens (what Docker Hub does)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from ferryd.daemon.api.access import permission_for
from support.daemon import Daemon, errors
from support.images import LayerSpec, build_image, seed
from support.registry import PASSWORD, USER, Registry
from support.token_server import TokenRegistry, token_registry

__all__ = ["token_registry"]  # the fixture, used by the tests below

pytestmark = [pytest.mark.registry, pytest.mark.daemon]


def trusting(start_daemon: Callable[..., Daemon], ca: trustme.CA, *registries: Registry) -> Daemon:
    """A daemon that verifies TLS and trusts the tests' CA for these registries."""
    daemon = start_daemon(insecure_registries=[])
    for registry in registries:
        daemon.trust(registry.host, ca)
    return daemon


def post_auth(daemon: Daemon, body: dict[str, Any]) -> httpx.Response:
    with daemon.http(timeout=60) as http:
        return http.post("/v1.47/auth", json=body)


def login(daemon: Daemon, **body: Any) -> dict[str, Any]:
    response = post_auth(daemon, body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def refused(daemon: Daemon, **body: Any) -> tuple[int, str]:
    """The status and message of a refused login."""
    response = post_auth(daemon, body)
    return response.status_code, response.json()["message"]


def test_basic_login_succeeds_without_an_identity_token(
    tls_registry: Registry, start_daemon: Callable[..., Daemon], ca: trustme.CA
) -> None:
    daemon = trusting(start_daemon, ca, tls_registry)

    answer = login(daemon, username=USER, password=PASSWORD, serveraddress=tls_registry.host)

    assert answer == {"Status": "Login Succeeded"}
    [line] = daemon.log_events("registry.login")
    assert line["registry"] == tls_registry.host
    assert line["identity_token"] is False
    assert PASSWORD not in daemon.log_path.read_text()


def test_basic_login_with_a_wrong_password_is_refused_as_dockerd_says_it(
    tls_registry: Registry, start_daemon: Callable[..., Daemon], ca: trustme.CA
) -> None:
    daemon = trusting(start_daemon, ca, tls_registry)

    status, message = refused(
        daemon, username=USER, password="not-it", serveraddress=f"https://{tls_registry.host}/"
    )

    assert status == 401
    assert message == (
        f"login attempt to https://{tls_registry.host}/v2/ failed with status: 401 Unauthorized"
    )
    assert "not-it" not in daemon.log_path.read_text()


def test_token_login_gives_the_refresh_token_as_identity_token(
    token_registry: TokenRegistry, start_daemon: Callable[..., Daemon], ca: trustme.CA
) -> None:
    daemon = trusting(start_daemon, ca, token_registry)
    tokens = token_registry.tokens
    assert tokens is not None
    before = len(tokens.requests)

    answer = login(daemon, username=USER, password=PASSWORD, serveraddress=token_registry.host)

    assert answer["Status"] == "Login Succeeded"
    assert answer["IdentityToken"].startswith("refresh-")
    [asked] = tokens.requests[before:]
    # As dockerd asks: Basic auth, offline_token=true, client_id=docker, no scope.
    assert (asked.method, asked.grant_type, asked.user) == ("GET", "basic", USER)
    assert asked.offline_token
    assert asked.client_id == "docker"
    assert asked.scopes == ()


def test_token_login_with_an_identity_token_uses_the_refresh_grant(
    token_registry: TokenRegistry, start_daemon: Callable[..., Daemon], ca: trustme.CA
) -> None:
    daemon = trusting(start_daemon, ca, token_registry)
    tokens = token_registry.tokens
    assert tokens is not None
    identity = login(daemon, username=USER, password=PASSWORD, serveraddress=token_registry.host)[
        "IdentityToken"
    ]
    before = len(tokens.requests)

    again = login(daemon, identitytoken=identity, serveraddress=token_registry.host)

    assert again == {"Status": "Login Succeeded", "IdentityToken": identity}
    [asked] = tokens.requests[before:]
    assert (asked.method, asked.grant_type, asked.user) == ("POST", "refresh_token", USER)
    assert asked.client_id == "docker"


def test_token_login_with_a_wrong_password_is_refused_with_the_token_services_words(
    token_registry: TokenRegistry, start_daemon: Callable[..., Daemon], ca: trustme.CA
) -> None:
    daemon = trusting(start_daemon, ca, token_registry)

    status, message = refused(
        daemon, username=USER, password="nope", serveraddress=token_registry.host
    )

    assert status == 401
    assert message == (
        f'Get "https://{token_registry.host}/v2/": unauthorized: incorrect username or password'
    )


def test_a_revoked_identity_token_is_refused(
    token_registry: TokenRegistry, start_daemon: Callable[..., Daemon], ca: trustme.CA
) -> None:
    daemon = trusting(start_daemon, ca, token_registry)

    status, message = refused(
        daemon, identitytoken="refresh-unknown", serveraddress=token_registry.host
    )

    assert status == 401
    assert message.startswith(f'Get "https://{token_registry.host}/v2/": ')


def test_a_login_to_nowhere_says_it_cannot_reach_the_registry(daemon: Daemon) -> None:
    status, message = refused(daemon, username="a", password="b", serveraddress="127.0.0.1:1")

    assert status == 500
    assert "127.0.0.1:1" in message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{", "invalid X-Registry-Auth header: invalid JSON"),
        (b"[1]", "expected a JSON object"),
        (b'{"username": 5}', "'username' must be a string"),
        (b'{"serveraddress": "https://bad host/"}', "unable to parse server address"),
    ],
)
def test_a_login_that_cannot_be_read_is_a_bad_request(
    daemon: Daemon, body: bytes, expected: str
) -> None:
    with daemon.http() as http:
        response = http.post("/auth", content=body)

    assert response.status_code == 400
    assert expected in response.json()["message"]


def test_auth_needs_pull_permission_as_every_route_that_reaches_a_registry() -> None:
    assert permission_for("POST", "/auth") == "pull"
    assert permission_for("GET", "/distribution/alpine:3/json") == "pull"
    assert permission_for("POST", "/images/create") == "pull"


def test_docker_py_login_then_pull_with_the_login(
    token_registry: TokenRegistry,
    start_daemon: Callable[..., Daemon],
    ca: trustme.CA,
    layout: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docker = pytest.importorskip("docker")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty-docker-config"))
    monkeypatch.setenv("HOME", str(tmp_path))
    daemon = trusting(start_daemon, ca, token_registry)
    built = build_image(layout, layers=[LayerSpec(size=3000, seed=7301)])
    seed(token_registry, layout, "latest", "private/pyapp:v1")
    client = docker.DockerClient(base_url=daemon.host, version="1.47")
    try:
        with pytest.raises(docker.errors.APIError) as anonymous:
            client.images.pull(f"{token_registry.host}/private/pyapp", tag="v1")
        answer = client.login(username=USER, password=PASSWORD, registry=token_registry.host)
        image = client.images.pull(f"{token_registry.host}/private/pyapp", tag="v1")
    finally:
        client.close()

    assert anonymous.value.status_code == 404
    assert "pull access denied" in str(anonymous.value)
    assert answer["Status"] == "Login Succeeded"
    assert image.id == built.config_digest


def test_a_new_daemon_pulls_from_a_token_registry_with_an_identity_token(
    token_registry: TokenRegistry, start_daemon: Callable[..., Daemon], ca: trustme.CA, layout: Path
) -> None:
    # No ping first: the manifest request's 401 names the realm, the identity token is
    # exchanged there for a token of the repository's scope, the request goes again.
    daemon = trusting(start_daemon, ca, token_registry)
    identity = login(daemon, username=USER, password=PASSWORD, serveraddress=token_registry.host)[
        "IdentityToken"
    ]
    built = build_image(layout, layers=[LayerSpec(size=1000, seed=7303)])
    seed(token_registry, layout, "latest", "private/refreshed:v1")
    tokens = token_registry.tokens
    assert tokens is not None
    asked_before, served_before = len(tokens.requests), len(token_registry.access_log())
    daemon.restart()
    header = base64.urlsafe_b64encode(json.dumps({"identitytoken": identity}).encode()).decode()

    assert errors(daemon.pull(f"{token_registry.host}/private/refreshed:v1", auth=header)) == []

    assert (
        daemon.inspect(f"{token_registry.host}/private/refreshed:v1")["Id"] == built.config_digest
    )
    asked = tokens.requests[asked_before:]
    assert [(r.method, r.grant_type, r.scopes) for r in asked] == [
        ("POST", "refresh_token", ("repository:private/refreshed:pull",))
    ]
    first, *rest = token_registry.access_log()[served_before:]
    assert (first.path, first.status) == ("/v2/private/refreshed/manifests/v1", 401)
    assert all(entry.status == 200 and entry.path != "/v2/" for entry in rest)


def test_a_pull_with_a_basic_login_from_docker_config_format(
    tls_registry: Registry, start_daemon: Callable[..., Daemon], ca: trustme.CA, layout: Path
) -> None:
    """What a stored login looks like on the wire (`auth` decoded by the daemon)."""
    daemon = trusting(start_daemon, ca, tls_registry)
    build_image(layout, layers=[LayerSpec(size=1000, seed=7302)])
    seed(tls_registry, layout, "latest", "private/stored:v1")
    entry = {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    header = base64.urlsafe_b64encode(json.dumps(entry).encode()).decode()

    assert errors(daemon.pull(f"{tls_registry.host}/private/stored:v1", auth=header)) == []
