"""Odd input refused instead of taken silently: credentials of the wrong type, ports
that cannot be, a platform the image is not, credentials a token realm must not get."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from ferryd.errors import (
    AuthenticationError,
    InvalidReferenceError,
    InvalidRegistryAuthError,
)
from ferryd.oci.mediatypes import OCI_MANIFEST
from ferryd.oci.reference import parse_reference
from ferryd.registry.auth import Credentials, decode_registry_auth
from ferryd.registry.connector import Connector
from ferryd.registry.endpoints import RegistryService
from support.daemon import Daemon, errors
from support.fakes import FakeRegistry, Reply, registry_error, serve, serve_registry
from support.images import LayerSpec, build_image, seed
from support.registry import Registry


def registry_auth(entry: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(entry).encode()).decode()


@pytest.mark.parametrize(
    "entry",
    [
        {"username": 5, "password": "x"},
        {"username": "ann", "password": ["x"]},
        {"auth": {"user": "ann"}},
        {"identitytoken": True},
        {"serveraddress": 5000},
    ],
)
def test_registry_auth_with_a_field_of_the_wrong_type_is_refused_naming_it(
    entry: dict[str, object],
) -> None:
    [key] = [k for k, v in entry.items() if not isinstance(v, str)]
    with pytest.raises(InvalidRegistryAuthError, match=f"'{key}' must be a string"):
        decode_registry_auth(registry_auth(entry))


def test_the_api_answers_400_to_registry_auth_of_the_wrong_type(daemon: Daemon) -> None:
    with daemon.http(timeout=30) as client:
        response = client.post(
            "/images/create",
            params={"fromImage": "127.0.0.1:1/x", "tag": "v1"},
            headers={"X-Registry-Auth": registry_auth({"username": 5})},
        )

    assert response.status_code == 400
    assert "'username' must be a string" in response.json()["message"]


@pytest.mark.parametrize("domain", ["host:65536", "host:0", "127.0.0.1:99999", "[::1]:70000"])
def test_a_reference_with_a_port_that_cannot_be_is_refused(domain: str) -> None:
    with pytest.raises(InvalidReferenceError, match="is not between 1 and 65535"):
        parse_reference(f"{domain}/team/app:v1")


@pytest.mark.parametrize("domain", ["host:1", "host:65535", "[::1]:5000", "[::1]"])
def test_a_reference_with_a_real_port_or_none_is_taken(domain: str) -> None:
    assert parse_reference(f"{domain}/team/app:v1").domain == domain


@pytest.mark.registry
def test_a_single_platform_image_of_another_platform_is_pulled_with_dockerds_warning(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    # dockerd since 20.10.7: single-platform images whose config names another platform
    # than the one asked for are common; the pull stores it and warns, naming both.
    build_image(layout, layers=[LayerSpec(size=2000, seed=901)], architecture="amd64")
    seed(registry, layout, "latest", "one-platform/app:v1")
    reference = f"{registry.host}/one-platform/app:v1"

    for platform in ("windows/amd64", "linux/arm64"):
        messages = daemon.pull(reference, platform=platform)
        assert errors(messages) == []
        [warning] = [m["status"] for m in messages if m.get("status", "").startswith("WARNING")]
        assert "was found but does not match the specified platform" in warning
        assert f"wanted {platform}, actual: linux/amd64" in warning
        assert [image["RepoTags"] for image in daemon.images()] == [[reference]]

    # Matching: no warning.
    messages = daemon.pull(reference, platform="linux/amd64")
    assert errors(messages) == []
    assert not [m for m in messages if m.get("status", "").startswith("WARNING")]


async def test_credentials_go_over_plain_http_only_to_the_registry_or_an_insecure_host() -> None:
    token_requests: list[dict[str, str]] = []

    async def tokens(request: object) -> Reply:
        token_requests.append(getattr(request, "headers", {}))
        return Reply(200, {"Content-Type": "application/json"}, b'{"token": "t"}')

    registry = FakeRegistry(auth="bearer")
    async with serve(tokens) as elsewhere, serve_registry(registry) as server:
        # The registry names a realm on another host (another port of loopback here).
        challenge = f'Bearer realm="http://localhost:{elsewhere.port}/token",service="x"'
        refusal = registry_error(401, "UNAUTHORIZED", "authentication required")
        refusal.headers["WWW-Authenticate"] = challenge
        registry.on("GET", "/v2/.*", refusal)
        raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []})
        registry.add_manifest(raw.encode(), OCI_MANIFEST, "v1")
        login = Credentials(username="ann", password="secret")

        strict = Connector(RegistryService(insecure_registries=[server.host]))
        try:
            client = await strict.open(server.host, "team/app", login)
            with pytest.raises(AuthenticationError, match="does not send credentials there"):
                await client.get_manifest("v1")
        finally:
            await strict.aclose()
        assert token_requests == []

        trusting = Connector(RegistryService(insecure_registries=[server.host, "localhost"]))
        try:
            client = await trusting.open(server.host, "team/app", login)
            with pytest.raises(AuthenticationError):  # the fake registry refuses "t"
                await client.get_manifest("v1")
        finally:
            await trusting.aclose()
        assert token_requests
        assert all(sent["authorization"].startswith("Basic ") for sent in token_requests)
