"""SIGHUP reloads the registry settings without a restart and without dropping transfers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.daemon import Daemon, errors
from support.images import LayerSpec, build_image, seed
from support.registry import Registry
from support.throttle import throttled

MB = 1_000_000


def test_a_registry_made_insecure_by_a_reload_can_be_pulled_from(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    build_image(layout, layers=[LayerSpec(size=3000, seed=601)])
    seed(registry, layout, "latest", "reload/insecure:v1")
    daemon = start_daemon(insecure_registries=[])  # plain HTTP on loopback is refused
    reference = f"{registry.host}/reload/insecure:v1"
    assert errors(daemon.pull(reference)) != []

    event = daemon.reload(insecure_registries=[registry.host])

    assert event["event"] == "daemon.reloaded"
    assert event["changed"] == ["insecure_registries"]
    assert event["needs_restart"] == []
    assert errors(daemon.pull(reference)) == []
    info = daemon.client().get_json("/info")
    assert info["RegistryConfig"]["IndexConfigs"][registry.host]["Secure"] is False


def test_a_broken_file_on_reload_keeps_the_old_settings(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    build_image(layout, layers=[LayerSpec(size=3000, seed=602)])
    seed(registry, layout, "latest", "reload/broken:v1")
    daemon = start_daemon()

    event = daemon.reload(max_concurrent_downloads=0)

    assert event["event"] == "daemon.reload_failed"
    assert "max_concurrent_downloads" in event["error"]
    assert daemon.alive
    assert errors(daemon.pull(f"{registry.host}/reload/broken:v1")) == []


def test_keys_that_need_a_restart_are_named_and_left_alone(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = start_daemon()

    event = daemon.reload(root=str(tmp_path / "elsewhere"), max_concurrent_downloads=7)

    assert event["event"] == "daemon.reloaded"
    assert sorted(event["needs_restart"]) == ["max_concurrent_downloads", "root"]
    assert daemon.client().get_json("/info")["DockerRootDir"] == str(daemon.root)


def test_a_reload_does_not_disturb_a_running_pull(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=8 * MB, seed=603, compression="none")])
    seed(registry, layout, "latest", "reload/running:v1")
    daemon = start_daemon()
    with throttled(registry.host, rate=4 * MB) as proxy:
        reference = f"{proxy.host}/reload/running:v1"
        result: list[list[dict[str, Any]]] = []
        puller = threading.Thread(target=lambda: result.append(daemon.pull(reference)))
        puller.start()
        daemon.wait_for_download(built.layers[0].digest)

        event = daemon.reload(insecure_registries=["127.0.0.0/8", "10.0.0.0/8"])
        proxy.rate = 1000 * MB  # reloaded mid-pull: the rest may come at once
        puller.join(60)

    assert event["event"] == "daemon.reloaded"
    [messages] = result
    assert errors(messages) == []
    assert not daemon.log_events("transfer.retry")
    assert daemon.inspect(reference)["Id"] == built.config_digest


def test_a_reload_applies_a_new_log_level(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon()
    daemon.client().get_json("/images/json")
    daemon.logged_requests("/images/json")  # written once the answer has gone
    before = len(daemon.log_events("api.request"))

    event = daemon.reload(log_level="warning")
    daemon.client().get_json("/images/json")
    daemon.client().get_json("/info")

    assert event["changed"] == ["log_level"]
    assert len(daemon.log_events("api.request")) == before


def test_a_reload_that_makes_logs_verbose_again_is_logged(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(log_level="error")

    event = daemon.reload(log_level="info")
    daemon.client().get_json("/images/json")

    assert event["changed"] == ["log_level"]
    # The request's line is written once its answer has gone: wait for it.
    assert daemon.logged_requests("/images/json")


def test_a_mirror_url_that_cannot_be_parsed_fails_the_reload_not_the_daemon(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon()

    event = daemon.reload(registry_mirrors={"docker.io": ["http://[::1"]})

    assert event["event"] == "daemon.reload_failed"
    assert "registry_mirrors" in event["error"]
    assert daemon.alive
    assert daemon.client().get_json("/images/json") == []
