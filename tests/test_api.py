"""The Docker-Engine-shaped API on the socket: paths, version prefix, errors."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ferryd.cli.client import DaemonError
from support.daemon import Daemon
from support.images import LayerSpec, build_image, seed
from support.registry import Registry


def _post(daemon: Daemon, path: str, params: dict[str, str]) -> httpx.Response:
    """A request whose status the test reads itself (the CLI client raises on >= 400)."""
    transport = httpx.HTTPTransport(uds=str(daemon.socket))
    with httpx.Client(transport=transport, base_url="http://ferryd", timeout=60) as client:
        return client.post(path, params=params)


def test_ping_answers_ok_with_engine_headers(daemon: Daemon) -> None:
    response = daemon.client().request("GET", "/_ping")

    assert response.read() == b"OK"
    assert response.headers["API-Version"] == "1.47"
    assert response.headers["OSType"] == "linux"


def test_head_ping_has_no_body(daemon: Daemon) -> None:
    response = daemon.client().request("HEAD", "/_ping")

    assert response.status == 200
    assert response.read() == b""


@pytest.mark.parametrize("prefix", ["", "/v1.41", "/v1.47"])
def test_paths_work_with_or_without_a_version_prefix(daemon: Daemon, prefix: str) -> None:
    assert daemon.client().get_json(f"{prefix}/images/json") == []
    assert daemon.client().get_json(f"{prefix}/version")["ApiVersion"] == "1.47"


def test_a_client_newer_than_the_api_is_told_so(daemon: Daemon) -> None:
    with pytest.raises(DaemonError, match=r"client version 1\.99 is too new"):
        daemon.client().get_json("/v1.99/images/json")


def test_version_has_docker_shape(daemon: Daemon) -> None:
    version = daemon.client().get_json("/version")

    assert version["Os"] == "linux"
    assert version["Components"][0]["Name"] == "Engine"
    assert {"Version", "ApiVersion", "MinAPIVersion", "Arch", "KernelVersion"} <= set(version)


def test_unknown_path_is_a_json_404(daemon: Daemon) -> None:
    with pytest.raises(DaemonError, match="page not found"):
        daemon.client().get_json("/containers/json")


def test_inspect_of_an_unknown_image_is_404_with_docker_message(daemon: Daemon) -> None:
    with pytest.raises(DaemonError, match="No such image: alpine:nope"):
        daemon.inspect("alpine:nope")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "fromImage is required"),
        ({"fromImage": "library/UPPER"}, "must be lowercase"),
        ({"fromImage": "alpine", "tag": "sha256:abc"}, "invalid digest"),
        ({"fromImage": "alpine", "platform": "linux/arm64/v8/extra"}, "invalid platform"),
        ({"fromSrc": "-"}, "not supported"),
    ],
)
def test_pull_with_bad_parameters_is_a_400_naming_the_problem(
    daemon: Daemon, params: dict[str, str], message: str
) -> None:
    with pytest.raises(DaemonError, match=message):
        list(daemon.client().stream("POST", "/images/create", params))


def test_garbage_registry_auth_header_is_refused(daemon: Daemon) -> None:
    with pytest.raises(DaemonError, match="X-Registry-Auth"):
        list(
            daemon.client().stream(
                "POST",
                "/images/create",
                {"fromImage": "alpine"},
                {"X-Registry-Auth": "!!!not-base64"},
            )
        )


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
