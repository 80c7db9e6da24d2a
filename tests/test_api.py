"""The Docker-Engine-shaped API: paths, version prefix, errors.

What the API answers is asked in this process (the `api` fixture: the app over a store
in tmp_path); what the socket, the CLI client and a registry add, of the real daemon.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from support.daemon import Daemon
from support.images import LayerSpec, build_image, seed
from support.registry import Registry


def _post(daemon: Daemon, path: str, params: dict[str, str]) -> httpx.Response:
    """A request whose status the test reads itself (the CLI client raises on >= 400)."""
    with daemon.http(timeout=60) as client:
        return client.post(path, params=params)


def refusal(response: httpx.Response) -> str:
    """The message of an answer the CLI client refuses (a status of 400 or more)."""
    assert response.status_code >= 400, response
    message: str = response.json()["message"]
    return message


def test_ping_answers_ok_with_engine_headers(daemon: Daemon) -> None:
    response = daemon.client().request("GET", "/_ping")

    assert response.read() == b"OK"
    assert response.headers["API-Version"] == "1.47"
    assert response.headers["OSType"] == "linux"


async def test_head_ping_has_no_body(api: httpx.AsyncClient) -> None:
    response = await api.head("/_ping")

    assert response.status_code == 200
    assert response.content == b""


@pytest.mark.parametrize("prefix", ["", "/v1.41", "/v1.47"])
async def test_paths_work_with_or_without_a_version_prefix(
    api: httpx.AsyncClient, prefix: str
) -> None:
    images = await api.get(f"{prefix}/images/json")
    version = await api.get(f"{prefix}/version")

    assert (images.status_code, images.json()) == (200, [])
    assert (version.status_code, version.json()["ApiVersion"]) == (200, "1.47")


async def test_a_client_newer_than_the_api_is_told_so(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1.99/images/json")

    assert re.search(r"client version 1\.99 is too new", refusal(response))


async def test_version_has_docker_shape(api: httpx.AsyncClient) -> None:
    response = await api.get("/version")

    version = response.json()
    assert response.status_code == 200
    assert version["Os"] == "linux"
    assert version["Components"][0]["Name"] == "Engine"
    assert {"Version", "ApiVersion", "MinAPIVersion", "Arch", "KernelVersion"} <= set(version)


async def test_unknown_path_is_a_json_404(api: httpx.AsyncClient) -> None:
    response = await api.get("/nothing/here")

    assert "page not found" in refusal(response)


async def test_inspect_of_an_unknown_image_is_404_with_docker_message(
    api: httpx.AsyncClient,
) -> None:
    response = await api.get("/images/alpine:nope/json")

    assert "No such image: alpine:nope" in refusal(response)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "fromImage is required"),
        ({"fromImage": "library/UPPER"}, "must be lowercase"),
        ({"fromImage": "alpine", "tag": "sha256:abc"}, "invalid digest"),
        ({"fromImage": "alpine", "platform": "linux/arm64/v8/extra"}, "invalid platform"),
        ({"fromSrc": "http://example.com/rootfs.tar"}, "not supported"),  # "-" is an import
    ],
)
async def test_pull_with_bad_parameters_is_a_400_naming_the_problem(
    api: httpx.AsyncClient, params: dict[str, str], message: str
) -> None:
    response = await api.post("/images/create", params=params)

    assert re.search(message, refusal(response))


async def test_garbage_registry_auth_header_is_refused(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/images/create",
        params={"fromImage": "alpine"},
        headers={"X-Registry-Auth": "!!!not-base64"},
    )

    assert "X-Registry-Auth" in refusal(response)


def test_an_unreachable_registry_is_an_http_error_before_any_stream(daemon: Daemon) -> None:
    response = _post(daemon, "/images/create", {"fromImage": "127.0.0.1:9/x/y:z"})

    assert response.status_code == 500
    message = response.json()["message"]
    assert message.startswith("cannot reach https://127.0.0.1:9")
    assert daemon.alive


def test_a_missing_image_is_a_404_as_dockerd_answers(registry: Registry, daemon: Daemon) -> None:
    response = _post(daemon, "/images/create", {"fromImage": f"{registry.host}/no/such:image"})

    assert response.status_code == 404
    assert "not found" in response.json()["message"]


def test_a_failure_after_the_stream_began_ends_the_stream(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    build_image(layout, layers=[LayerSpec(size=1000, seed=901)], os="windows")
    seed(registry, layout, "latest", "api/windows:v1")

    messages = daemon.pull(f"{registry.host}/api/windows:v1")

    assert messages[0]["status"] == "Pulling from api/windows"
    assert "error" in messages[-1]
