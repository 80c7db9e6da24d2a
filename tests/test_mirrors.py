"""Registry mirrors: pulls try each mirror of a registry in order, then the registry."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support.daemon import Daemon, errors
from support.images import LayerSpec, build_image, seed
from support.registry import Registry, free_port, start_registry


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[Registry]:
    """A second real registry, standing in for a pull-through cache."""
    with start_registry(tmp_path_factory.mktemp("mirror")) as reg:
        yield reg


def _manifest_gets(registry: Registry, repository: str) -> int:
    return registry.requests("GET", f"/v2/{repository}/manifests/")


def test_an_image_the_mirror_has_is_pulled_from_the_mirror(
    registry: Registry, mirror: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=4000, seed=401)])
    seed(mirror, layout, "latest", "mirrored/app:v1")  # only the mirror has it
    daemon = start_daemon(registry_mirrors={registry.host: [mirror.url]})

    messages = daemon.pull(f"{registry.host}/mirrored/app:v1")

    assert errors(messages) == []
    assert daemon.inspect(f"{registry.host}/mirrored/app:v1")["Id"] == built.config_digest
    assert mirror.blob_gets(built.layers[0].digest) == 1
    assert _manifest_gets(registry, "mirrored/app") == 0


def test_an_image_the_mirror_lacks_comes_from_the_registry(
    registry: Registry, mirror: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=4000, seed=402)])
    seed(registry, layout, "latest", "origin-only/app:v1")
    daemon = start_daemon(registry_mirrors={registry.host: [mirror.url]})

    assert errors(daemon.pull(f"{registry.host}/origin-only/app:v1")) == []

    assert daemon.inspect(f"{registry.host}/origin-only/app:v1")["Id"] == built.config_digest
    assert _manifest_gets(mirror, "origin-only/app") == 1  # asked, said 404
    assert registry.blob_gets(built.layers[0].digest) == 1
    [skipped] = daemon.log_events("registry.mirror_failed")
    assert skipped["mirror"] == mirror.url
    assert "not found" in skipped["error"]


def test_mirrors_are_tried_in_order(
    registry: Registry, mirror: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=4000, seed=403)])
    seed(mirror, layout, "latest", "ordered/app:v1")
    down = f"http://127.0.0.1:{free_port()}"
    daemon = start_daemon(registry_mirrors={registry.host: [down, mirror.url]})

    assert errors(daemon.pull(f"{registry.host}/ordered/app:v1")) == []

    assert mirror.blob_gets(built.layers[0].digest) == 1
    [skipped] = daemon.log_events("registry.mirror_failed")
    assert skipped["mirror"] == down


def test_an_unreachable_mirror_falls_back_to_the_registry(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=4000, seed=404)])
    seed(registry, layout, "latest", "fallback/app:v1")
    daemon = start_daemon(registry_mirrors={registry.host: [f"http://127.0.0.1:{free_port()}"]})

    assert errors(daemon.pull(f"{registry.host}/fallback/app:v1")) == []
    assert daemon.inspect(f"{registry.host}/fallback/app:v1")["Id"] == built.config_digest


def test_mirrors_of_another_registry_are_not_used(
    registry: Registry, mirror: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    build_image(layout, layers=[LayerSpec(size=4000, seed=405)])
    seed(registry, layout, "latest", "unmirrored/app:v1")
    daemon = start_daemon(registry_mirrors={"other.example:5000": [mirror.url]})

    assert errors(daemon.pull(f"{registry.host}/unmirrored/app:v1")) == []
    assert _manifest_gets(mirror, "unmirrored/app") == 0


def test_a_push_goes_to_the_registry_not_its_mirror(
    registry: Registry, mirror: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    build_image(layout, layers=[LayerSpec(size=4000, seed=406)])
    seed(mirror, layout, "latest", "pushed-origin/app:v1")
    daemon = start_daemon(registry_mirrors={registry.host: [mirror.url]})
    assert errors(daemon.pull(f"{registry.host}/pushed-origin/app:v1")) == []
    mirror_puts = mirror.requests("PUT", "/v2/pushed-origin/app/")

    pushed = list(
        daemon.client().stream(
            "POST", f"/images/{registry.host}/pushed-origin/app/push", {"tag": "v1"}
        )
    )

    assert errors(pushed) == []
    assert registry.requests("PUT", "/v2/pushed-origin/app/manifests/v1") == 1
    assert mirror.requests("PUT", "/v2/pushed-origin/app/") == mirror_puts


class _LyingMirror(BaseHTTPRequestHandler):
    """Answers every manifest with bytes that are not the manifest asked for."""

    def do_GET(self) -> None:
        if self.path == "/v2/":
            body, kind = b"{}", "application/json"
        else:
            body, kind = (
                b'{"schemaVersion": 2, "lies": true}',
                ("application/vnd.oci.image.manifest.v1+json"),
            )
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def lying_mirror() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LyingMirror)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_mirror_serving_wrong_bytes_is_skipped_for_the_registry(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path, lying_mirror: str
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=4000, seed=407)])
    digest = seed(registry, layout, "latest", "lied-to/app:v1")
    daemon = start_daemon(registry_mirrors={registry.host: [lying_mirror]})
    reference = f"{registry.host}/lied-to/app@{digest}"

    assert errors(daemon.pull(reference)) == []

    assert daemon.inspect(reference)["Id"] == built.config_digest
    [skipped] = daemon.log_events("registry.mirror_failed")
    assert skipped["mirror"] == lying_mirror
    assert "digest" in skipped["error"]


def test_mirrors_added_by_a_reload_are_used_by_the_next_pull(
    registry: Registry, mirror: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=4000, seed=408)])
    seed(mirror, layout, "latest", "reloaded-mirror/app:v1")
    daemon = start_daemon()
    reference = f"{registry.host}/reloaded-mirror/app:v1"
    assert errors(daemon.pull(reference)) != []  # the registry itself does not have it

    event = daemon.reload(registry_mirrors={registry.host: [mirror.url]})

    assert event["changed"] == ["registry_mirrors"]
    assert errors(daemon.pull(reference)) == []
    assert daemon.inspect(reference)["Id"] == built.config_digest
