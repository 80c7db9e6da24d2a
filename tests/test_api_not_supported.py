"""What ferryd does not do is said plainly: containers, exec, volumes, networks, builds,
swarm, plugins and registry search answer 501 with one sentence; an unknown path under
/images/ is a 404 (a path served with another method stays a 405)."""

from __future__ import annotations

import docker
import docker.errors
import httpx
import pytest

from support.daemon import Daemon


def _request(daemon: Daemon, method: str, path: str) -> httpx.Response:
    with daemon.http(timeout=60) as client:
        return client.request(method, path)


@pytest.mark.parametrize(
    ("method", "path", "what"),
    [
        ("POST", "/containers/create", "running containers"),
        ("GET", "/containers/json", "running containers"),
        ("POST", "/v1.47/containers/abc/start", "running containers"),
        ("DELETE", "/containers/abc", "running containers"),
        # POST answers an empty prune (`docker system prune`); other methods do not.
        ("GET", "/containers/prune", "running containers"),
        ("POST", "/exec/abc/start", "running commands in containers"),
        ("POST", "/commit", "committing containers"),
        ("GET", "/volumes", "managing volumes"),
        ("POST", "/volumes/create", "managing volumes"),
        ("GET", "/networks", "managing networks"),
        ("POST", "/build", "building images"),
        ("GET", "/build/prune", "building images"),
        ("POST", "/session", "building images"),
        ("GET", "/swarm", "swarm mode"),
        ("POST", "/services/create", "swarm mode"),
        ("GET", "/nodes", "swarm mode"),
        ("GET", "/plugins", "managing plugins"),
        ("GET", "/images/search", "searching registries"),
    ],
)
def test_what_ferryd_does_not_do_is_a_501_saying_so(
    daemon: Daemon, method: str, path: str, what: str
) -> None:
    response = _request(daemon, method, path)

    assert response.status_code == 501
    assert response.json() == {"message": f"ferryd manages images only: {what} is not supported"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/images/alpine/nothing"),
        ("GET", "/images/127.0.0.1:5000/team/app:v1/whatever"),
        ("PUT", "/images/alpine"),
        ("GET", "/images/alpine"),
        ("GET", "/nothing/here"),
        ("GET", "/containersx"),
    ],
)
def test_unknown_paths_are_a_404(daemon: Daemon, method: str, path: str) -> None:
    response = _request(daemon, method, path)

    assert response.status_code == 404
    assert response.json() == {"message": "page not found"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/images/json"), ("GET", "/images/create"), ("GET", "/images/alpine/tag")],
)
def test_a_path_served_with_another_method_is_a_405(daemon: Daemon, method: str, path: str) -> None:
    response = _request(daemon, method, path)

    assert response.status_code == 405
    assert response.json() == {"message": f"method {method} not allowed on {path}"}


@pytest.mark.parametrize("name", ["search", "team/history", "x/get"])
def test_delete_takes_any_name_under_images(daemon: Daemon, name: str) -> None:
    response = _request(daemon, "DELETE", f"/images/{name}")

    assert response.status_code == 404
    assert response.json() == {"message": f"No such image: {name}"}


def test_docker_py_running_a_container_fails_with_the_sentence(daemon: Daemon) -> None:
    client = docker.DockerClient(base_url=f"unix://{daemon.socket}", timeout=60)
    try:
        with pytest.raises(docker.errors.APIError) as failed:
            client.containers.create("alpine")
    finally:
        client.close()

    assert failed.value.status_code == 501
    assert "ferryd manages images only: running containers is not supported" in str(failed.value)
